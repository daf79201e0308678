"""Keyed limits against the real broker (in-process Faust apps, both processing modes)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
import pytest

from faust_backpressure.agents.keyed import KEYED_LIMIT, NOT_BEFORE
from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import consume, create_topics, produce
from faust_backpressure.testing.settings import fast_faust_settings

from .helpers import hdr, read_committed

pytestmark = pytest.mark.kafka

GUARANTEES = ["at_least_once", "exactly_once"]


def _app(name: str, bootstrap: str, tmp_path: Path, guarantee: str = "at_least_once"
         ) -> tuple[faust.App, Backpressure]:
    app = faust.App(name, datadir=str(tmp_path), processing_guarantee=guarantee,
                    **fast_faust_settings(broker=f"kafka://{bootstrap}"))
    return app, Backpressure(app, settings=BackpressureSettings())


def _raw(app: faust.App, name: str) -> Any:
    return app.topic(name, key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw")


def _worst_excess(times: list[float], rate: float) -> float:
    """max over spans of admitted - rate * span (the bound: <= burst)."""
    times = sorted(times)
    return max(j - i + 1 - rate * (times[j] - times[i])
               for i in range(len(times)) for j in range(i, len(times)))


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_a_hot_key_is_deferred_in_order_while_quiet_keys_pass(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path,
        guarantee: str) -> None:
    source, sink = unique_name("src"), unique_name("sink")
    await create_topics(kafka_bootstrap, {source: 1, sink: 1})  # every key in one partition
    app, bp = _app(unique_name("app"), kafka_bootstrap, tmp_path, guarantee)
    src, dst = _raw(app, source), _raw(app, sink)
    rate, burst = 20.0, 5.0
    limit = bp.rate_limit_per_key("per-customer", key=lambda e: e.value.split(b":")[0],
                                  tokens_per_second=rate, burst_capacity=burst, partitions=1)
    seen: list[tuple[bytes, int, float, str]] = []

    @app.agent(src)
    @limit
    async def forward(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            key, seq = event.value.split(b":")
            seen.append((key, int(seq), time.time(), event.message.topic))
            await dst.send(key=key, value=event.value)

    quiet = [b"q%02d" % i for i in range(99)]
    quiet_records = [(k, k + b":%d" % r) for r in range(3) for k in quiet]
    records: list[tuple[bytes, bytes]] = []
    for seq in range(60):  # the hot key interleaved with the quiet ones
        records.append((b"hot", b"hot:%d" % seq))
        records.extend(quiet_records[seq * 5:seq * 5 + 5])
    quiet_events = 3 * 99
    assert len(records) == 60 + quiet_events
    await produce(kafka_bootstrap, source, records)
    await create_topics(kafka_bootstrap, {limit.deferral_topic_name: 1})
    async with running_app(app):
        out = await read_committed(kafka_bootstrap, sink, until=len(records), timeout=40)
        stats = limit.stats()
    assert sorted(r.value for r in out) == sorted(v for _, v in records)  # nothing lost
    by_key: dict[bytes, list[tuple[int, float, str]]] = defaultdict(list)
    for key, seq, at, topic in seen:
        by_key[key].append((seq, at, topic))
    for key, events in by_key.items():  # every key in its input order
        assert [s for s, _, _ in events] == sorted(s for s, _, _ in events), key
    # quiet keys: never deferred, all through before the hot key's deferred tail
    assert all(t == source for k in quiet for _, _, t in by_key[k])
    last_hot = by_key[b"hot"][-1][1]
    assert max(at for k in quiet for _, at, _ in by_key[k]) < last_hot
    hot_topics = [t for _, _, t in by_key[b"hot"]]
    first = hot_topics.index(limit.deferral_topic_name)  # once deferred, deferred until drained
    # at least the burst passes first; how many more depends on how fast the hot key's events
    # come (its bucket refills at 20/s meanwhile: a loaded CI run deferred from the 18th)
    assert first >= 5 and set(hot_topics[first:]) == {limit.deferral_topic_name}
    # the per-key bound, from admission timestamps (+1: gate to body)
    assert _worst_excess([at for _, at, _ in by_key[b"hot"]], rate) <= burst + 1
    assert stats.deferred == stats.readmitted == 60 - first
    assert stats.admitted == first + quiet_events
    deferred = await consume(kafka_bootstrap, limit.deferral_topic_name, until=60 - first)
    assert all(hdr(r)[KEYED_LIMIT] == b"per-customer" and NOT_BEFORE in hdr(r)
               for r in deferred)


async def test_many_keys_each_within_rate_t_plus_burst_and_idle_keys_get_a_full_burst(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    source = unique_name("src")
    await create_topics(kafka_bootstrap, {source: 2})
    app, bp = _app(unique_name("app"), kafka_bootstrap, tmp_path)
    src = _raw(app, source)
    rate, burst = 10.0, 4.0
    limit = bp.rate_limit_per_key("per-device", tokens_per_second=rate, burst_capacity=burst,
                                  partitions=2)
    admitted: dict[bytes, list[float]] = defaultdict(list)
    done = asyncio.Event()
    total = 20 * 30 + 5

    @app.agent(src)
    @limit
    async def count(stream: faust.StreamT[bytes]) -> None:
        async for key, _ in stream.items():
            admitted[key].append(time.time())
            if sum(map(len, admitted.values())) >= total:
                done.set()

    await create_topics(kafka_bootstrap, {limit.deferral_topic_name: 2})
    keys = [b"dev-%02d" % i for i in range(20)]
    await produce(kafka_bootstrap, source,
                  [(k, b"x") for _ in range(30) for k in keys] + [(b"idle", b"x")] * 5)
    async with running_app(app):
        await asyncio.wait_for(done.wait(), timeout=40)
    for key in keys:
        assert len(admitted[key]) == 30
        assert _worst_excess(admitted[key], rate) <= burst + 1, key
    idle = sorted(admitted[b"idle"])  # an idle key gets its burst at once (4), then the pace
    assert len(idle) == 5 and idle[3] - idle[0] < idle[4] - idle[3] + 1.0


async def test_shed_and_wait_modes(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    source, other = unique_name("src"), unique_name("src2")
    await create_topics(kafka_bootstrap, {source: 1, other: 1, source + "-shed": 1})
    app, bp = _app(unique_name("app"), kafka_bootstrap, tmp_path)
    shed_limit = bp.rate_limit_per_key("shed", tokens_per_second=1, burst_capacity=3,
                                       on_limit="shed", partitions=1)
    wait_limit = bp.rate_limit_per_key("wait", tokens_per_second=50, burst_capacity=2,
                                       on_limit="wait", partitions=1)
    shed_seen: list[bytes] = []
    wait_seen: list[tuple[bytes, float]] = []

    @app.agent(_raw(app, source))
    @shed_limit
    async def shedding(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            shed_seen.append(value)

    @app.agent(_raw(app, other))
    @wait_limit
    async def waiting(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            wait_seen.append((value, time.time()))

    await produce(kafka_bootstrap, source, [(b"a", b"a%d" % i) for i in range(10)]
                  + [(b"b", b"b0")])
    await produce(kafka_bootstrap, other, [(b"w", b"w%02d" % i) for i in range(30)])
    async with running_app(app):
        shed = await consume(kafka_bootstrap, source + "-shed", until=7, timeout=30)
        deadline = time.monotonic() + 30
        while len(wait_seen) < 30 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    assert [r.value for r in shed] == [b"a%d" % i for i in range(3, 10)]
    assert hdr(shed[0])["bp.shed.limiter"] == b"shed"
    assert shed_seen == [b"a0", b"a1", b"a2", b"b0"]
    assert [v for v, _ in wait_seen] == [b"w%02d" % i for i in range(30)]
    assert _worst_excess([t for _, t in wait_seen], 50) <= 2 + 1
    # 28 when the 30 arrive faster than the 50/s refill (2 pass on the burst); fewer when the
    # stream hands them over slower (a loaded CI run: 26); the rate bound above holds anyway
    assert 0 < wait_limit.stats().waits <= 28


async def test_a_keyed_limit_as_a_pipelines_limiter(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    source, sink = unique_name("src"), unique_name("sink")
    await create_topics(kafka_bootstrap, {source: 1, sink: 1})
    app, bp = _app(unique_name("app"), kafka_bootstrap, tmp_path)
    limit = bp.rate_limit_per_key("per-key", tokens_per_second=20, burst_capacity=2,
                                  partitions=1)
    await create_topics(kafka_bootstrap, {limit.deferral_topic_name: 1})
    bp.pipeline("upper", source=source, sink=sink, process=lambda v: v.upper(), limiter=limit)
    records = [(b"hot", b"hot%02d" % i) for i in range(20)] + [(b"cold", b"cold0"),
                                                                (b"cold", b"cold1")]
    await produce(kafka_bootstrap, source, records)
    async with running_app(app):
        out = await consume(kafka_bootstrap, sink, until=22, timeout=30)
    assert [r.value for r in out if r.key == b"hot"] == [b"HOT%02d" % i for i in range(20)]
    assert [r.value for r in out if r.key == b"cold"] == [b"COLD0", b"COLD1"]
    assert limit.stats().deferred >= 15 and limit.agent_name == "pipeline:upper"


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_an_app_holding_deferred_records_stops_and_they_are_read_again(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path,
        guarantee: str) -> None:
    # Faust's stop waits for every record it handed out: held deferred ones (the last one read
    # is still referenced) made it wait for ever; let go un-acked, they are read again
    source, app_id = unique_name("src"), unique_name("app")
    await create_topics(kafka_bootstrap, {source: 1})
    values = [b"hot:%d" % i for i in range(20)]
    await produce(kafka_bootstrap, source, [(b"hot", v) for v in values])
    seen: list[bytes] = []
    backlogs = []
    passed_first = 0
    for run in range(2):
        app, bp = _app(app_id, kafka_bootstrap, tmp_path / f"run{run}", guarantee)
        limit = bp.rate_limit_per_key("per-customer", tokens_per_second=5, burst_capacity=1,
                                      partitions=1)

        @app.agent(_raw(app, source))
        @limit
        async def take(stream: faust.StreamT[bytes]) -> None:
            async for value in stream:
                seen.append(value)

        if run == 0:
            await create_topics(kafka_bootstrap, {limit.deferral_topic_name: 1})
        async with running_app(app):  # a start or stop that hangs fails with the stacks
            for _ in range(600):  # 60 s: under a loaded machine's rebalances too
                if (run == 0 and limit.stats().deferred_backlog >= 5) or (
                        run == 1 and set(seen) == set(values)):
                    break
                await asyncio.sleep(0.1)
            backlogs.append(limit.stats().deferred_backlog)
            passed_first = passed_first if run else len(seen)
    # the first run stopped while holding deferred records, the second passed them
    assert backlogs[0] >= 5 and passed_first < len(values)
    assert set(seen) == set(values)  # nothing lost
