"""A second seek in one generation while a batch pipeline holds records (issue 25).

Faust seeks a generation's partitions to their committed offsets a second time at times (its
fetcher finding the flow stopped, right after its recovery's seek: docs/reliability.md). The
partition is then delivered again from its first unacked offset. Records a batch tap still
held at that moment (queued, or in a batch that had not started sending) ran twice: under
exactly_once both copies were committed (the rare copies of the keyed batch SIGKILL test).
Here the second seek comes while one batch waits (in ``process_batch``, or after its sends
under exactly_once) and the rest of the partition waits in the queue behind it.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
import pytest

from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import consume, create_topics, produce
from faust_backpressure.testing.settings import fast_faust_settings

from .helpers import read_committed

pytestmark = pytest.mark.kafka

TOTAL, BATCH, BLOCKED = 100, 10, 20  # the batch of offsets 20..29 waits for the seek


class Order(faust.Record, serializer="json"):
    id: int


@pytest.mark.parametrize(("guarantee", "waits"), [
    ("at_least_once", "in process_batch"), ("exactly_once", "in process_batch"),
    # sent, its acks and its commit not yet in (the copies here are exactly_once's concern)
    ("exactly_once", "after its sends")])
async def test_a_second_seek_runs_nothing_twice(
        guarantee: str, waits: str, kafka_bootstrap: str, unique_name: Callable[[str], str],
        tmp_path: Path) -> None:
    source, sink, dlq = unique_name("src"), unique_name("sink"), unique_name("dlq")
    await create_topics(kafka_bootstrap, {source: 1, sink: 1, dlq: 1})
    await produce(kafka_bootstrap, source,
                  [(None, json.dumps({"id": i}).encode()) for i in range(TOTAL)])
    app = faust.App(unique_name("app"), datadir=str(tmp_path),
                    **fast_faust_settings(broker=f"kafka://{kafka_bootstrap}",
                                          processing_guarantee=guarantee))
    bp = Backpressure(app, settings=BackpressureSettings())
    calls: Counter[int] = Counter()
    blocked, release = asyncio.Event(), asyncio.Event()

    async def wait_for_the_seek(batch_ids: list[int], where: str) -> None:
        if where == waits and BLOCKED in batch_ids and not release.is_set():
            blocked.set()
            await release.wait()

    async def process(orders: list[Order]) -> list[Any]:
        calls.update(order.id for order in orders)
        await wait_for_the_seek([order.id for order in orders], "in process_batch")
        return list(orders)

    pipe = bp.pipeline("orders", source=app.topic(source, value_type=Order), sink=sink,
                       dlq=dlq, process_batch=process, batch_size=BATCH, batch_timeout=0.05)
    runner: Any = pipe.batch
    send_batch = runner._send_batch

    async def send_then_wait(batch: Any, producer: Any) -> Any:
        completion = await send_batch(batch, producer)
        await wait_for_the_seek([r.offset for r in batch.records], "after its sends")
        return completion

    runner._send_batch = send_then_wait
    async with running_app(app):
        await asyncio.wait_for(blocked.wait(), 60)
        # the batches before it done (acked, or committed), the rest of the partition
        # fetched and queued behind it
        for _ in range(600):
            if runner.batches == BLOCKED // BATCH and len(runner.queues) == TOTAL - BLOCKED - BATCH:
                break
            await asyncio.sleep(0.05)
        assert (runner.batches, len(runner.queues)) == (BLOCKED // BATCH, TOTAL - BLOCKED - BATCH)
        await app.consumer.perform_seek()  # Faust's second seek in this generation
        release.set()
        if guarantee == "exactly_once":
            out = await read_committed(kafka_bootstrap, sink, until=lambda rs: len(rs) >= TOTAL,
                                       timeout=60, settle=2.0)
        else:
            out = await consume(kafka_bootstrap, sink, until=TOTAL, timeout=60, settle=2.0)
        abandoned, skipped = runner.abandoned, runner.seeks.skipped
    ids = Counter(json.loads(r.value)["id"] for r in out)
    assert ids == Counter(range(TOTAL)), f"copies: {sorted(i for i, n in ids.items() if n > 1)}"
    waited = range(BLOCKED, BLOCKED + BATCH)
    if waits == "in process_batch":  # it gave up and ran again once re-read
        assert (abandoned, skipped) == (1, 0)
        assert [calls[i] for i in waited] == [2] * BATCH
    else:  # it finished; its records, delivered again, were skipped
        assert (abandoned, skipped) == (0, BATCH)
        assert [calls[i] for i in waited] == [1] * BATCH
    assert all(calls[i] == 1 for i in range(TOTAL) if i not in waited)  # the queued ones
