"""Batch pipelines (``process_batch=``, docs/batching.md) against the real broker, in-process."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
import pytest

from faust_backpressure.agents import headers as h
from faust_backpressure.app import Backpressure
from faust_backpressure.app.ops import cluster_status
from faust_backpressure.app.views import render_prometheus, snapshot
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import committed_offsets, consume, create_topics, produce
from faust_backpressure.testing.settings import fast_faust_settings

from .helpers import committed_to_the_end, hdr, read_committed

pytestmark = pytest.mark.kafka

GUARANTEES = ["at_least_once", "exactly_once"]


class Order(faust.Record, serializer="json"):
    id: str
    amount: int


class BatchSends(faust.Sensor):
    """Counts what the batch hooks report."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = self.acked = 0

    def on_batch_sent(self, counts: dict[str, int]) -> None:
        self.sent += sum(counts.values())

    def on_batch_acked(self, metadata: list[Any]) -> None:
        self.acked += len(metadata)


def _app(name: str, bootstrap: str, tmp_path: Path, **conf: Any) -> tuple[faust.App, Backpressure]:
    app = faust.App(name, datadir=str(tmp_path),
                    **fast_faust_settings(broker=f"kafka://{bootstrap}", **conf))
    return app, Backpressure(app, settings=BackpressureSettings())


def _order(i: int, amount: int = 10) -> tuple[bytes, bytes]:
    return b"k%d" % (i % 7), json.dumps({"id": f"o{i}", "amount": amount}).encode()


async def _read(bootstrap: str, topic: str, guarantee: str, n: int) -> list[Any]:
    if guarantee == "exactly_once":
        return await read_committed(bootstrap, topic, until=lambda rs: len(rs) >= n,
                                    timeout=60, settle=1.0)
    return await consume(bootstrap, topic, until=n, timeout=60)


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_every_record_reaches_the_sink_in_order_and_failures_the_dlq(
        guarantee: str, kafka_bootstrap: str, unique_name: Callable[[str], str],
        tmp_path: Path) -> None:
    source, sink, dlq = unique_name("src"), unique_name("sink"), unique_name("dlq")
    await create_topics(kafka_bootstrap, {source: 3, sink: 3, dlq: 1})
    app, bp = _app(unique_name("app"), kafka_bootstrap, tmp_path,
                   processing_guarantee=guarantee)
    sizes: list[int] = []
    calls: Counter[str] = Counter()

    def price(orders: list[Order]) -> list[Any]:
        sizes.append(len(orders))
        out: list[Any] = []
        for order in orders:
            calls[order.id] += 1
            number = int(order.id[1:])
            if order.amount < 0:
                out.append(ValueError(f"negative amount {order.amount}"))
            elif number % 100 == 3 and calls[order.id] < 2:
                out.append(ConnectionError("flaky"))  # succeeds on its retry
            elif number % 50 == 1:
                out.append(None)  # filtered
            elif number % 50 == 2:
                out.append([order, order])  # two outputs
            else:
                out.append(order)
        return out

    total = 2000
    bad = [(b"bad-json", b"{not json"), _order(99_999, amount=-5)]
    records = [_order(i) for i in range(total)]
    await produce(kafka_bootstrap, source, records[:1000] + bad + records[1000:],
                  headers=[("trace", b"abc")])
    pipe = bp.pipeline("orders", source=app.topic(source, value_type=Order), sink=sink,
                       dlq=dlq, process_batch=price, batch_size=200, batch_timeout=0.05,
                       max_retries=2, retry_backoff=0.01,
                       limiter=TokenBucketRateLimiter(100_000, 1000))
    filtered = {i for i in range(total) if i % 50 == 1}
    doubled = {i for i in range(total) if i % 50 == 2}
    expected = total - len(filtered) + len(doubled)
    async with running_app(app):
        out = await _read(kafka_bootstrap, sink, guarantee, expected)
        dead = await _read(kafka_bootstrap, dlq, guarantee, 2)
        status = await _status_once_published(bp, kafka_bootstrap)  # `status`'s report
    ids = Counter(json.loads(r.value)["id"] for r in out)
    assert ids == Counter({f"o{i}": 2 if i in doubled else 1
                           for i in range(total) if i not in filtered})
    # per source key (one source partition each), outputs keep their input order, except
    # the retried ones (they come after the batch's others)
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for r in out:
        number = int(json.loads(r.value)["id"][1:])
        if number % 100 != 3:
            by_key[r.key].append(number)
    assert all(numbers == sorted(numbers) for numbers in by_key.values())
    assert max(sizes) > 1  # batched, not one by one
    by_dlq_key = {r.key: hdr(r) for r in dead}
    assert set(by_dlq_key) == {b"bad-json", b"k%d" % (99_999 % 7)}
    assert by_dlq_key[b"bad-json"][h.STAGE] == b"decode"
    assert by_dlq_key[b"bad-json"][h.ATTEMPTS] == b"0"
    assert by_dlq_key[b"bad-json"]["trace"] == b"abc"
    failed = by_dlq_key[b"k%d" % (99_999 % 7)]
    assert failed[h.STAGE] == b"process" and failed[h.ERROR_TYPE] == b"ValueError"
    assert failed[h.ATTEMPTS] == b"3" and b"negative amount -5" in failed[h.ERROR_MESSAGE]
    stats = pipe.stats
    assert stats.consumed >= total + 2 and stats.dead_lettered >= 2
    assert stats.filtered >= len(filtered) and stats.retries >= 20 + 2
    assert pipe.batch is not None and pipe.batch.batches > 0
    # the mode's own path ran (exactly_once: one transaction per batch)
    assert pipe.batch.exactly_once == (guarantee == "exactly_once")
    # operators see the batches: the JSON view, the dashboard's data and Prometheus
    view = snapshot(bp)["pipelines"]["orders"]["batch"]
    assert {k: view[k] for k in ("size", "batches", "abandoned")} == {
        "size": pipe.batch.queues.batch_size, "batches": pipe.batch.batches,
        "abandoned": pipe.batch.abandoned}
    metrics = render_prometheus(snapshot(bp))
    (line,) = [m for m in metrics.splitlines()
               if m.startswith("faust_backpressure_pipeline_batches_total{")]
    assert 'pipeline="orders"' in line and line.endswith(f" {float(pipe.batch.batches)!r}")
    _assert_batch_latencies(view, metrics, pipe.batch.batches)
    assert status["name"] == "orders" and status["batch_size"] == pipe.batch.queues.batch_size
    # the p99 the worker published in its summary (the worst worker's: there is one)
    assert status["batch_p99"] is not None and 0 < status["batch_p99"] < 30.0


async def _status_once_published(bp: Backpressure, bootstrap: str) -> dict[str, Any]:
    """The pipeline's row of ``backpressure status`` once the worker has published a summary
    with a batch done (every ``STATUS_INTERVAL`` = 5 s)."""
    deadline = asyncio.get_running_loop().time() + 30.0
    while True:
        (status,) = (await cluster_status(bp, bootstrap))["pipelines"]
        if status["batch_p99"] is not None or asyncio.get_running_loop().time() > deadline:
            return dict(status)
        await asyncio.sleep(1.0)


def _assert_batch_latencies(view: dict[str, Any], metrics: str, batches: int) -> None:
    """Every batch done is timed, in the view (percentiles) and in Prometheus (histograms)."""
    latency, processing = view["latency"], view["processing"]
    for figures in (latency, processing):
        assert figures["count"] == sum(figures["buckets"]) == batches  # < the window's 1,024
        assert 0 < figures["p50"] <= figures["p95"] <= figures["p99"]
    # a batch's process_batch calls are part of its way from first record to done
    assert processing["p99"] <= latency["p99"] < 30.0
    assert latency["sum"] > processing["sum"]
    lines = metrics.splitlines()
    for name, figures in (("latency", latency), ("processing", processing)):
        metric = f"faust_backpressure_pipeline_batch_{name}_seconds"
        assert f"# TYPE {metric} histogram" in lines
        counts = {line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                  for line in lines if line.startswith(f"{metric}_bucket{{")
                  and 'pipeline="orders"' in line}
        assert counts["+Inf"] == batches  # cumulative, as the view's buckets add up
        assert list(counts.values()) == list(itertools.accumulate(figures["buckets"]))
        (count,) = [line for line in lines if line.startswith(f"{metric}_count{{")]
        assert count.endswith(f" {float(batches)!r}")


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_ordered_by_key_keeps_each_keys_order_in_the_sink_retries_included(
        guarantee: str, kafka_bootstrap: str, unique_name: Callable[[str], str],
        tmp_path: Path) -> None:
    """``ordered_by_key=True``: an event after a failed one of its key waits until that one
    succeeded on its retry or was dead-lettered (docs/batching.md, "Order per key")."""
    source, sink, dlq = unique_name("src"), unique_name("sink"), unique_name("dlq")
    await create_topics(kafka_bootstrap, {source: 3, sink: 3, dlq: 1})
    app, bp = _app(unique_name("app"), kafka_bootstrap, tmp_path,
                   processing_guarantee=guarantee)
    calls: Counter[str] = Counter()
    flaky = {i for i in range(1500) if i % 37 == 5}  # fail once, succeed on the retry
    poison = {i for i in range(1500) if i % 101 == 7}  # fail every time: the DLQ

    def price(orders: list[Order]) -> list[Any]:
        out: list[Any] = []
        for order in orders:
            calls[order.id] += 1
            number = int(order.id[1:])
            if number in poison:
                out.append(ValueError(f"poison {number}"))
            elif number in flaky and calls[order.id] == 1:
                out.append(ConnectionError("flaky"))
            else:
                out.append(order)
        return out

    seen = BatchSends()
    app.sensors.add(seen)
    total = 1500
    await produce(kafka_bootstrap, source, [_order(i) for i in range(total)])
    # a backoff long enough for later batches of the partition to run meanwhile
    # (at_least_once): the failing keys stay held from one batch to the next
    pipe = bp.pipeline("ordered", source=app.topic(source, value_type=Order), sink=sink,
                       dlq=dlq, process_batch=price, batch_size=100, batch_timeout=0.05,
                       max_retries=2, retry_backoff=0.05, ordered_by_key=True)
    good = [i for i in range(total) if i not in poison]
    async with running_app(app):
        out = await _read(kafka_bootstrap, sink, guarantee, len(good))
        dead = await _read(kafka_bootstrap, dlq, guarantee, len(poison))
        offsets = await committed_to_the_end(kafka_bootstrap, app.conf.id, source, total)
        for _ in range(100):  # the last batch's acks reach the sensors after its commit
            if seen.acked >= len(good) + len(poison):
                break
            await asyncio.sleep(0.1)
    assert sum(offsets.values()) == total, offsets
    numbers = [int(json.loads(r.value)["id"][1:]) for r in out]
    assert Counter(numbers) == Counter(good)  # nothing lost, nothing twice
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for r, number in zip(out, numbers, strict=True):
        by_key[r.key].append(number)
    # per key, in input order, the retried events included
    assert by_key == {key: sorted(ns) for key, ns in by_key.items()}
    assert sum(1 for n in numbers if n in flaky) == len(flaky - poison)
    assert {int(json.loads(r.value)["id"][1:]) for r in dead} == poison and len(dead) == len(poison)
    assert all(hdr(r)[h.STAGE] == b"process" and hdr(r)[h.ATTEMPTS] == b"3" for r in dead)
    stats = pipe.stats
    assert (stats.consumed, stats.produced, stats.dead_lettered) == (total, len(good),
                                                                     len(poison))
    assert stats.retries == len(flaky - poison) + 2 * len(poison)
    assert pipe.batch is not None and pipe.batch.exactly_once == (guarantee == "exactly_once")
    assert pipe.batch.chains is not None and len(pipe.batch.chains) == 0
    # every send was reported sent (sinks) and acked (sinks and DLQ), retried ones included
    assert (seen.sent, seen.acked) == (len(good), len(good) + len(poison))



async def test_a_downstream_guard_sees_each_batch_as_one_call(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    source, sink, dlq = unique_name("src"), unique_name("sink"), unique_name("dlq")
    await create_topics(kafka_bootstrap, {source: 2, sink: 2, dlq: 1})
    app, bp = _app(unique_name("app"), kafka_bootstrap, tmp_path)
    guard = bp.downstream("bulk-api", max_concurrency=4)
    calls: list[int] = []

    def bulk(values: list[bytes]) -> list[bytes]:
        calls.append(len(values))
        if len(calls) == 2:  # the service says 429: the whole batch waits and goes again
            raise guard.slow_down_from_http(429, "0.3")
        return values

    seen = BatchSends()
    app.sensors.add(seen)
    pipe = bp.pipeline("bulk", source=source, sink=sink, dlq=dlq, process_batch=bulk,
                       batch_size=100, downstream=guard)
    ids = [b"id-%04d" % i for i in range(1000)]
    await produce(kafka_bootstrap, source, ((i, i) for i in ids))
    async with running_app(app):
        out = await consume(kafka_bootstrap, sink, until=1000, timeout=60)
    assert sorted(r.value for r in out) == ids
    assert pipe.stats.dead_lettered == 0 and pipe.stats.retries == 0
    assert pipe.concurrency == 1  # one task takes the batches, one call at a time
    # one call per batch (plus the one refused): not one per event
    assert pipe.batch is not None and len(calls) == pipe.batch.batches + 1
    # sensors with batch hooks (credit flow's SinkSends) see every send and its ack
    assert seen.sent == 1000 and seen.acked == 1000


async def test_a_batch_commits_the_offsets_of_the_per_event_records_in_its_transaction(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    """exactly_once: a batch source and a per-event source with as many partitions share
    Faust's transaction per partition number, so a batch's commit commits the per-event
    outputs too, and must commit their offsets with them (else they repeat after a crash)."""
    events, batches = unique_name("events"), unique_name("batches")
    events_out, batches_out = unique_name("events-out"), unique_name("batches-out")
    await create_topics(kafka_bootstrap, {events: 2, batches: 2, events_out: 2,
                                          batches_out: 2, unique_name("dlq"): 1})
    # no periodic commit while the test runs: only the batches commit
    app, bp = _app(unique_name("app"), kafka_bootstrap, tmp_path,
                   processing_guarantee="exactly_once", broker_commit_interval=600.0)
    sink = app.topic(events_out, key_serializer="raw", value_serializer="raw")

    @app.agent(app.topic(events, key_serializer="raw", value_serializer="raw"))
    async def forward(stream: Any) -> None:
        async for key, value in stream.items():
            await sink.send(key=key, value=value)

    bp.pipeline("bulk", source=batches, sink=batches_out, dlq=unique_name("dlq"),
                process_batch=lambda values: values, batch_size=50)
    keys = [b"k%d" % i for i in range(20)]  # both partitions of each source
    async with running_app(app):
        await produce(kafka_bootstrap, events, ((k, k) for k in keys))
        # processed: sent into the open transactions, not committed yet
        await consume(kafka_bootstrap, events_out, until=len(keys), timeout=60)
        await produce(kafka_bootstrap, batches, ((k, k) for k in keys))
        await read_committed(kafka_bootstrap, batches_out, until=lambda rs: len(rs) >= 20,
                             timeout=60)
        committed_outputs = await read_committed(
            kafka_bootstrap, events_out, until=lambda rs: len(rs) >= len(keys),
            timeout=30, settle=1.0)
        offsets = await committed_offsets(kafka_bootstrap, app.conf.id, events)
    # the batches' transactions committed the per-event outputs: their offsets went with them
    assert len(committed_outputs) == len(keys)
    assert sum(offsets.values()) == len(keys), offsets
