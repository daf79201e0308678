"""Pipelines with a DLQ against the real broker (in-process Faust app)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
import pytest

from faust_backpressure.agents import headers as h
from faust_backpressure.agents import replay_dlq
from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import consume, create_topics, produce
from faust_backpressure.testing.settings import fast_faust_settings

from .helpers import hdr, read_committed

pytestmark = pytest.mark.kafka


class Order(faust.Record, serializer="json"):
    id: str
    amount: int


def _app(name: str, bootstrap: str, tmp_path: Path, **conf: Any) -> tuple[faust.App, Backpressure]:
    app = faust.App(name, datadir=str(tmp_path),
                    **fast_faust_settings(broker=f"kafka://{bootstrap}", **conf))
    return app, Backpressure(app, settings=BackpressureSettings())


def _order(i: int, amount: int = 10) -> tuple[bytes, bytes]:
    return b"k%d" % i, json.dumps({"id": f"o{i}", "amount": amount}).encode()


async def test_transient_failure_succeeds_after_retry(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    source, sink = unique_name("src"), unique_name("sink")
    await create_topics(kafka_bootstrap, {source: 2, sink: 2})
    app, bp = _app(unique_name("app"), kafka_bootstrap, tmp_path)
    calls: Counter[str] = Counter()

    async def process(order: Order) -> Order:
        calls[order.id] += 1
        if int(order.id[1:]) % 5 == 0 and calls[order.id] < 3:
            raise ConnectionError("flaky downstream")
        return order

    pipe = bp.pipeline("orders", source=app.topic(source, value_type=Order), sink=sink,
                       process=process, max_retries=3, retry_backoff=0.01,
                       limiter=TokenBucketRateLimiter(10_000, 1000))
    await produce(kafka_bootstrap, source, (_order(i) for i in range(100)))
    async with running_app(app):
        out = await consume(kafka_bootstrap, sink, until=100, timeout=30)
    assert sorted(json.loads(r.value)["id"] for r in out) == sorted(f"o{i}" for i in range(100))
    assert pipe.stats.retries == 40 and pipe.stats.dead_lettered == 0
    assert {r.key for r in out} == {b"k%d" % i for i in range(100)}


async def test_permanent_failures_and_undecodable_records_go_to_the_dlq_with_reasons(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    source, sink, dlq = unique_name("src"), unique_name("sink"), unique_name("dlq")
    await create_topics(kafka_bootstrap, {source: 1, sink: 1, dlq: 1})
    app, bp = _app(unique_name("app"), kafka_bootstrap, tmp_path)

    def process(order: Order) -> Order:
        if order.amount < 0:
            raise ValueError(f"negative amount {order.amount}")
        return order

    pipe = bp.pipeline("orders", source=app.topic(source, value_type=Order), sink=sink,
                       dlq=dlq, process=process, max_retries=2, retry_backoff=0.01)
    bad = [(b"bad-json", b"{not json"), (b"bad-schema", b'{"id": "x"}'),
           (b"bad-type", b"[1, 2]"), _order(99, amount=-5)]
    good = [_order(i) for i in range(20)]
    await produce(kafka_bootstrap, source, good[:10] + bad + good[10:],
                  headers=[("trace", b"abc")])
    async with running_app(app):
        dead = await consume(kafka_bootstrap, dlq, until=4, timeout=30)
        out = await consume(kafka_bootstrap, sink, until=20, timeout=30)
    assert len(out) == 20  # the partition kept flowing past the bad records
    by_key = {r.key: r for r in dead}
    assert set(by_key) == {b"bad-json", b"bad-schema", b"bad-type", b"k99"}
    for key, value in bad:
        record = by_key[key]
        assert record.value == value  # original bytes
        meta = hdr(record)
        assert meta["trace"] == b"abc"  # original headers kept
        assert meta[h.PIPELINE] == b"orders"
        assert meta[h.SOURCE_TOPIC] == source.encode()
        assert meta[h.SOURCE_PARTITION] == b"0"
        assert int(meta[h.SOURCE_OFFSET]) == 10 + bad.index((key, value))
        assert meta[h.ERROR_MESSAGE] and meta[h.TRACEBACK].startswith(b"Traceback")
        assert meta[h.FIRST_FAILURE] <= meta[h.LAST_FAILURE]
        assert meta[h.REPLAY_COUNT] == b"0"
    assert hdr(by_key[b"bad-json"])[h.ERROR_TYPE] == b"ValueDecodeError"
    assert hdr(by_key[b"bad-json"])[h.STAGE] == b"decode"
    assert hdr(by_key[b"bad-json"])[h.ATTEMPTS] == b"0"
    assert b"missing 1 required" in hdr(by_key[b"bad-schema"])[h.ERROR_MESSAGE]
    failed = hdr(by_key[b"k99"])
    assert failed[h.ERROR_TYPE] == b"ValueError" and failed[h.STAGE] == b"process"
    assert failed[h.ATTEMPTS] == b"3"  # first try + 2 retries
    assert b"negative amount -5" in failed[h.ERROR_MESSAGE]
    assert pipe.stats.dead_lettered == 4


async def test_filtering_and_fan_out_to_several_sinks(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    source, a, b = unique_name("src"), unique_name("a"), unique_name("b")
    await create_topics(kafka_bootstrap, {source: 2, a: 1, b: 1})
    app, bp = _app(unique_name("app"), kafka_bootstrap, tmp_path)

    def process(value: bytes) -> list[bytes] | None:
        number = int(value)
        if number % 2:
            return None  # odd numbers are filtered out
        return [value, value + b"-copy"]

    pipe = bp.pipeline("fan", source=source, sink=[a, b], process=process)
    await produce(kafka_bootstrap, source, ((b"%d" % i, b"%d" % i) for i in range(50)))
    async with running_app(app):
        got_a = await consume(kafka_bootstrap, a, until=50, timeout=30)
        got_b = await consume(kafka_bootstrap, b, until=50, timeout=30)
    evens = range(0, 50, 2)
    expected = sorted([b"%d" % i for i in evens] + [b"%d-copy" % i for i in evens])
    assert sorted(r.value for r in got_a) == expected
    assert sorted(r.value for r in got_b) == expected
    assert pipe.stats.filtered == 25 and pipe.stats.produced == 100


async def test_exactly_once_pipeline(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    source, sink, dlq = unique_name("src"), unique_name("sink"), unique_name("dlq")
    await create_topics(kafka_bootstrap, {source: 2, sink: 2, dlq: 1})
    app, bp = _app(unique_name("app"), kafka_bootstrap, tmp_path,
                   processing_guarantee="exactly_once")

    def process(value: bytes) -> bytes:
        if value.endswith(b"7"):
            raise ValueError("sevens are refused")
        return value.upper()

    bp.pipeline("eos", source=source, sink=sink, dlq=dlq, process=process, max_retries=0)
    ids = [b"id-%03d" % i for i in range(300)]
    await produce(kafka_bootstrap, source, ((i, i) for i in ids))
    async with running_app(app):
        out = await read_committed(kafka_bootstrap, sink, until=lambda rs: len(rs) >= 270,
                                   timeout=40, settle=1.0)
        dead = await read_committed(kafka_bootstrap, dlq, until=lambda rs: len(rs) >= 30)
    assert Counter(r.value for r in out) == Counter(i.upper() for i in ids if not i.endswith(b"7"))
    assert sorted(r.value for r in dead) == [i for i in ids if i.endswith(b"7")]


async def test_dlq_replay_moves_records_back_and_they_get_processed(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    source, sink, dlq = unique_name("src"), unique_name("sink"), unique_name("dlq")
    await create_topics(kafka_bootstrap, {source: 2, sink: 1, dlq: 1})
    app, bp = _app(unique_name("app"), kafka_bootstrap, tmp_path)
    broken = {"on": True}

    def process(value: bytes) -> bytes:
        if broken["on"] and int(value.split(b"-")[1]) % 10 == 0:
            raise TimeoutError("downstream timed out")
        if value == b"id-050":
            raise KeyError("always fails")
        return value

    bp.pipeline("ids", source=source, sink=sink, dlq=dlq, process=process, max_retries=0)
    ids = [b"id-%03d" % i for i in range(100)]
    await produce(kafka_bootstrap, source, ((i, i) for i in ids))
    group = unique_name("replay")
    async with running_app(app):
        await consume(kafka_bootstrap, dlq, until=10)
        await consume(kafka_bootstrap, sink, until=90)
        broken["on"] = False  # the downstream is fixed
        report = await replay_dlq(kafka_bootstrap, pipeline="ids", dlq_topic=dlq,
                                  target_topic=source, group_id=group, rate=500)
        assert report.replayed == 10 and report.by_error_type == {"TimeoutError": 10}
        out = await consume(kafka_bootstrap, sink, until=99)
        dead = await consume(kafka_bootstrap, dlq, until=11)
        # A second replay only sees what was dead-lettered since: id-050, failing again.
        again = await replay_dlq(kafka_bootstrap, pipeline="ids", dlq_topic=dlq,
                                 target_topic=source, group_id=group, error_type="KeyError")
        assert again.replayed == 1
        dead = await consume(kafka_bootstrap, dlq, until=12)
    assert Counter(r.value for r in out) == Counter(i for i in ids if i != b"id-050")
    counts = [int(hdr(r)[h.REPLAY_COUNT]) for r in dead if r.value == b"id-050"]
    assert counts == [0, 1, 2]
    replayed = [r for r in dead if r.value == b"id-050"][-1]
    assert hdr(replayed)[h.ERROR_TYPE] == b"KeyError"
