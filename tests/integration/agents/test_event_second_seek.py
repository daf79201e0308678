"""A second seek in one generation while a per-event pipeline's events wait in its stream.

Faust seeks a generation's partitions to their committed offsets a second time at times (its
getmany finding the flow stopped while its recovery's seek ran: docs/reliability.md). The
events delivered since the first seek are in the streams' queues and run; read again from the
committed offset, they ran twice, and under exactly_once both copies were committed (the
downstream SIGKILL test's rare copies). Here event 20 waits in ``process`` with the rest of
the partition delivered behind it when the second seek comes.
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
TOTAL, BLOCKED = 100, 20


class Order(faust.Record, serializer="json"):
    id: int


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_second_seek_runs_no_event_twice(
        guarantee: str, kafka_bootstrap: str, unique_name: Callable[[str], str],
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

    async def process(order: Order) -> Any:
        calls[order.id] += 1
        if order.id == BLOCKED and not release.is_set():
            blocked.set()
            await release.wait()
        return order

    bp.pipeline("orders", source=app.topic(source, value_type=Order), sink=sink,
                dlq=dlq, process=process)
    async with running_app(app):
        await asyncio.wait_for(blocked.wait(), 60)
        consumer: Any = app.consumer
        for _ in range(600):  # the rest of the partition delivered behind it
            if consumer.offset_guard.expected.get(consumer_tp(consumer, source)) == TOTAL:
                break
            await asyncio.sleep(0.05)
        assert consumer.offset_guard.expected.get(consumer_tp(consumer, source)) == TOTAL
        await consumer.perform_seek()  # Faust's second seek in this generation
        release.set()
        if guarantee == "exactly_once":
            out = await read_committed(kafka_bootstrap, sink, until=lambda rs: len(rs) >= TOTAL,
                                       timeout=60, settle=3.0)
        else:
            out = await consume(kafka_bootstrap, sink, until=TOTAL, timeout=60, settle=3.0)
    ids = Counter(json.loads(r.value)["id"] for r in out)
    assert ids == Counter(range(TOTAL)), f"copies: {sorted(i for i, n in ids.items() if n > 1)}"
    assert calls == Counter(range(TOTAL)), sorted(i for i, n in calls.items() if n > 1)


def consumer_tp(consumer: Any, topic: str) -> Any:
    return next(tp for tp in consumer.assignment() if tp.topic == topic)
