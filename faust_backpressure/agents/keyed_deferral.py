"""A keyed limit's deferral agent: holds deferred records (un-acked) until due, then hands
each back to the limited stream (:func:`~faust_backpressure.faust_seam.redeliver`).

A heap by (not-before, arrival): a key's not-before times never decrease (each is a
reservation after the previous), so each key leaves in order, and a key due later does not
hold back one due sooner. When Faust stops the flow (rebalance, stop) the held records are let
go un-acked (:func:`~faust_backpressure.faust_seam.let_go`: Faust no longer waits for them), and
after the rebalance it re-reads from the committed offset, which never passes them. So are
records handed back that the limited stream has not acked yet: Faust clears the streams' queues
when it stops the flow, and one dropped there held Faust's stop (or rebalance) for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import weakref
from collections.abc import Callable
from typing import Any

from faust.types import TP, AppT, StreamT

from faust_backpressure.agents.headers import header
from faust_backpressure.faust_seam import flow_stopped_event, let_go, redeliver

__all__ = ["NOT_BEFORE", "Deferrals"]

log = logging.getLogger(__name__)

#: The header of a deferred record: when its reserved tokens are due (``repr`` of a float).
NOT_BEFORE = "bp.keyed.not_before"


class Deferrals:
    """The deferral agent's body (:meth:`run`) and what it holds (``backlog``)."""

    def __init__(self, app: AppT, name: str, clock: Callable[[], float],
                 target: Callable[[], StreamT[Any] | None]) -> None:
        """``target``: the limited stream to hand records back to (None: not started yet)."""
        self.app = app
        self.name = name
        self.clock = clock
        self.target = target
        self.backlog = 0  # deferred records this worker holds until due
        #: records handed back to the limited stream, until it acks them
        self._handed_back: weakref.WeakSet[Any] = weakref.WeakSet()

    async def run(self, stream: StreamT[Any]) -> None:
        """The agent: read the deferral topic without acking, keep the records in the heap."""
        heap: list[tuple[float, int, Any]] = []
        wake = asyncio.Event()
        seq = 0
        releaser = asyncio.ensure_future(self._release(heap, wake))
        try:
            async for event in stream.noack().events():  # type: ignore[attr-defined]
                raw = header(event.message.headers, NOT_BEFORE)
                not_before = float(raw) if raw else 0.0
                seq += 1
                heapq.heappush(heap, (not_before, seq, event))
                self.backlog = len(heap)
                wake.set()
        finally:
            releaser.cancel()

    async def _release(self, heap: list[tuple[float, int, Any]], wake: asyncio.Event) -> None:
        consumer = self.app.consumer
        while True:
            stopped = flow_stopped_event(self.app)
            if stopped is not None and stopped.is_set():
                for _, _, held in heap:  # see the module's doc: re-read after the rebalance
                    let_go(self.app, held.message)
                heap.clear()
                for message in list(self._handed_back):
                    if not message.acked:  # maybe dropped with the stream's queue
                        let_go(self.app, message)
                self._handed_back.clear()
                self.backlog = 0
                await asyncio.sleep(0.05)
                continue
            target = self.target()
            now = self.clock()
            if heap and heap[0][0] <= now and target is not None:
                _, _, event = heapq.heappop(heap)
                self.backlog = len(heap)
                message = event.message
                if TP(message.topic, message.partition) in consumer.assignment():
                    try:
                        await redeliver(target, message)
                    except Exception:  # broad: any failure must not kill the releaser;
                        # the record stays un-acked, so it is read again later
                        log.exception("keyed limit %s: cannot hand back %s[%d]@%d", self.name,
                                      message.topic, message.partition, message.offset)
                        continue
                    event.ack()  # the stream's ack is the last one: then the offset is done
                    if not message.acked:
                        self._handed_back.add(message)
                continue
            wake.clear()
            timeout = 0.25 if not heap else 0.05 if target is None else min(heap[0][0] - now, 0.25)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=max(timeout, 0.001))
