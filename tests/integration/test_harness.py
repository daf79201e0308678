"""Smoke tests proving the harness is real: a real broker, real tables, real worker processes."""

from __future__ import annotations

import json
from collections.abc import Callable

import faust
import pytest

from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import consume, create_topics, produce
from faust_backpressure.testing.settings import fast_faust_settings
from faust_backpressure.testing.workers import FaustWorker, wait_until_settled

pytestmark = pytest.mark.kafka


async def test_produce_and_consume_through_the_broker(
        kafka_bootstrap: str, unique_name: Callable[[str], str]) -> None:
    topic = unique_name("topic")
    await create_topics(kafka_bootstrap, {topic: 3})
    sent = {f"id-{i}".encode() for i in range(500)}
    await produce(kafka_bootstrap, topic, ((v, v) for v in sorted(sent)))
    records = await consume(kafka_bootstrap, topic, until=len(sent))
    assert {r.value for r in records} == sent
    # Keyed records are spread over all partitions: the broker really partitions.
    assert {r.partition for r in records} == {0, 1, 2}


async def test_in_process_app_forwards_a_topic(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: object) -> None:
    source, sink = unique_name("src"), unique_name("sink")
    await create_topics(kafka_bootstrap, {source: 2, sink: 2})
    app = faust.App(unique_name("app"), datadir=str(tmp_path),
                    **fast_faust_settings(broker=f"kafka://{kafka_bootstrap}"))
    src = app.topic(source, key_type=bytes, value_type=bytes,
                   key_serializer="raw", value_serializer="raw")
    dst = app.topic(sink, key_type=bytes, value_type=bytes,
                   key_serializer="raw", value_serializer="raw")

    @app.agent(src)
    async def forward(stream: faust.StreamT[bytes]) -> None:
        async for key, value in stream.items():
            await dst.send(key=key, value=value.upper())

    async with running_app(app):
        await produce(kafka_bootstrap, source, ((b"k%d" % i, b"v%d" % i) for i in range(200)))
        records = await consume(kafka_bootstrap, sink, until=200)
    assert sorted(r.value for r in records) == sorted(b"V%d" % i for i in range(200))


def _totals(records: list) -> dict[str, int]:  # type: ignore[type-arg]
    """The last total emitted per key (records of one key are in order within its partition)."""
    latest: dict[str, int] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        latest[record.key.decode()] = json.loads(record.value)
    return latest


async def test_rocksdb_table_recovers_from_changelog_after_restart_with_fresh_data_dir(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker]) -> None:
    source, sink = unique_name("src"), unique_name("sink")
    env = {"FBP_APP_ID": unique_name("app"), "FBP_SOURCE": source, "FBP_SINK": sink}
    await create_topics(kafka_bootstrap, {source: 4, sink: 4})
    keys = [f"k{i}" for i in range(20)]
    # 2000 increments sent with linger, so producer batches (and Faust's changelog batches)
    # hold many records each: the case look-alike brokers get wrong in recovery.
    await produce(kafka_bootstrap, source,
                  ((keys[i % 20].encode(), b"1") for i in range(2000)), linger_ms=20)

    first = faust_workers("tests.integration.apps.counter", name="first", env=env)
    first.wait_ready()
    records = await consume(kafka_bootstrap, sink,
                            until=lambda rs: _totals(rs) == dict.fromkeys(keys, 100))
    assert "rocksdict:" in first.logs()
    assert any(first.data_dir.rglob("*.sst")) or any(first.data_dir.rglob("CURRENT"))
    assert first.stop() == 0

    # A new worker with an empty data dir must rebuild the table from the changelog topic.
    second = faust_workers("tests.integration.apps.counter", name="second", env=env)
    assert second.data_dir != first.data_dir
    second.wait_ready()
    await produce(kafka_bootstrap, source, ((k.encode(), b"1") for k in keys))
    records = await consume(kafka_bootstrap, sink, until=len(records) + len(keys))
    assert _totals(records) == dict.fromkeys(keys, 101)


async def test_two_workers_split_partitions_and_one_takes_over_after_sigkill(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker]) -> None:
    source, sink = unique_name("src"), unique_name("sink")
    env = {"FBP_APP_ID": unique_name("app"), "FBP_SOURCE": source, "FBP_SINK": sink}
    await create_topics(kafka_bootstrap, {source: 4, sink: 4})
    alpha = faust_workers("tests.integration.apps.forward", name="alpha", env=env)
    beta = faust_workers("tests.integration.apps.forward", name="beta", env=env)
    alpha.wait_ready()  # started together: they join in parallel
    beta.wait_ready()
    wait_until_settled([alpha, beta])  # the partitions split between the two

    def ids(start: int, stop: int) -> list[bytes]:
        return [b"id-%05d" % i for i in range(start, stop)]

    await produce(kafka_bootstrap, source, ((v, v) for v in ids(0, 400)))
    first = await consume(kafka_bootstrap, sink, until=400)
    owner = {int(dict(r.headers)["partition"]): dict(r.headers)["worker"] for r in first}
    assert set(owner.values()) == {b"alpha", b"beta"}, owner
    assert {r.value for r in first} == set(ids(0, 400))

    alpha.kill()
    await produce(kafka_bootstrap, source, ((v, v) for v in ids(400, 800)))
    everything = await consume(kafka_bootstrap, sink,
                               until=lambda rs: set(ids(400, 800)) <= {r.value for r in rs},
                               timeout=90)
    second = [r for r in everything if r.value in set(ids(400, 800))]
    # Every record, including those on alpha's former partitions, was processed by beta.
    assert {dict(r.headers)["worker"] for r in second} == {b"beta"}
    assert {int(dict(r.headers)["partition"]) for r in second} == {0, 1, 2, 3}
    assert beta.alive
