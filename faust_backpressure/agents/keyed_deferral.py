"""A keyed limit's deferral agent: holds deferred records (un-acked) until due, then hands
each back to the limited stream (:func:`~faust_backpressure.faust_seam.redeliver`).

A heap by (not-before, arrival): a key's not-before times never decrease (each is a
reservation after the previous), so each key leaves in order, and a key due later does not
hold back one due sooner. When Faust stops the flow (rebalance, stop) the held records are let
go un-acked (:func:`~faust_backpressure.faust_seam.let_go`: Faust no longer waits for them), and
after the rebalance it re-reads from the committed offset, which never passes them. So are
records handed back that the limited stream has not acked yet: Faust clears the streams' queues
when it stops the flow, and one dropped there held Faust's stop (or rebalance) for ever.

A record handed back that is not due yet (its key's earlier deferred events came back late, so
the key's later ones are shifted by as much) is not slept on in the limited stream, which would
hold every key of the partition: the gate gives it back (:meth:`Deferrals.hold`) and it waits
in the heap again, until its shifted time. The gate keeps a reference to its message, so its
offset is not committed while it waits. While a key has records held so, its later ones (by
deferral offset) back from the deferral topic are held behind them (:meth:`Deferrals.due`):
each key still passes in order, whatever order the heap released them in.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import weakref
from collections.abc import Callable, Hashable
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
        self.held_back = 0  # records the gate gave back, not due yet (since start)
        #: records handed back to the limited stream, until it acks them
        self._handed_back: weakref.WeakSet[Any] = weakref.WeakSet()
        # the heap by (due, arrival) and the releaser's wake-up, while the agent runs
        self._heap: list[tuple[float, int, Any]] | None = None
        self._wake = asyncio.Event()
        self._seq = 0
        #: records the gate gave back (by message) with their key; per key, their deferral
        #: offsets (the key's order) and the times they are held until
        self._held: dict[Any, Hashable] = {}
        self._held_keys: dict[Hashable, dict[Any, tuple[int, float]]] = {}

    def _open(self) -> list[tuple[float, int, Any]]:
        self._heap = []
        self._wake = asyncio.Event()
        return self._heap

    def _push(self, due: float, event: Any) -> None:
        assert self._heap is not None
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, event))
        self.backlog = len(self._heap)
        self._wake.set()

    async def run(self, stream: StreamT[Any]) -> None:
        """The agent: read the deferral topic without acking, keep the records in the heap."""
        heap = self._open()
        releaser = asyncio.ensure_future(self._release(heap, self._wake))
        try:
            async for event in stream.noack().events():  # type: ignore[attr-defined]
                raw = header(event.message.headers, NOT_BEFORE)
                self._push(float(raw) if raw else 0.0, event)
        finally:
            releaser.cancel()
            self._heap = None

    # -- records back in the limited stream before they are due ----------------------------

    def due(self, key: Hashable, message: Any, due: float) -> float | None:
        """A record of ``key`` back in the limited stream, whose key allows it at ``due``:
        None if it may pass now, else the time to hold it until (:meth:`hold`). While records
        of ``key`` before it (lower deferral offsets) are held, it is held behind them, so the
        key keeps its order even when the heap released them in another."""
        held_key = self._held.pop(message, None)
        if held_key is not None:  # one we held, back: no longer ahead of the key's others
            was = self._held_keys[held_key]
            del was[message]
            if not was:
                del self._held_keys[held_key]
        of_key = self._held_keys.get(key)
        if of_key:
            offset = message.offset
            ahead = max((until for before, until in of_key.values() if before < offset),
                        default=None)
            if ahead is not None:
                return due if due > ahead else ahead
        return due if due > self.clock() else None

    def hold(self, key: Hashable, event: Any, due: float) -> bool:
        """Take back ``event`` (handed to the limited stream, not due yet) into the heap until
        ``due``; False if the agent is not running here (then the stream must wait). A
        reference is kept on its message: the stream's ack (a ``Skip``) is then not the last,
        so its offset is not committed while it is held."""
        if self._heap is None:
            return False
        message = event.message
        message.incref()
        self._held[message] = key
        self._held_keys.setdefault(key, {})[message] = (message.offset, due)
        self.held_back += 1
        self._push(due, event)
        return True

    def _let_all_go(self, heap: list[tuple[float, int, Any]]) -> None:
        for _, _, held in heap:  # see the module's doc: re-read after the rebalance
            let_go(self.app, held.message)
        heap.clear()
        for message in list(self._handed_back):
            if not message.acked:  # maybe dropped with the stream's queue
                let_go(self.app, message)
        self._handed_back.clear()
        self._held.clear()
        self._held_keys.clear()
        self.backlog = 0

    async def _release(self, heap: list[tuple[float, int, Any]], wake: asyncio.Event) -> None:
        consumer = self.app.consumer
        while True:
            stopped = flow_stopped_event(self.app)
            if stopped is not None and stopped.is_set():
                self._let_all_go(heap)
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
