"""A keyed limit's deferral agent: holds deferred records (un-acked) until due, then hands
each back to the limited stream (:func:`~faust_backpressure.faust_seam.redeliver`).

A heap by (not-before, arrival): a key's not-before times never decrease (each is a
reservation after the previous), so each key leaves in order, and a key due later does not
hold back one due sooner. When Faust stops the flow (rebalance, stop) the held records are let
go un-acked (:func:`~faust_backpressure.faust_seam.let_go`: Faust no longer waits for them), and
after the rebalance it re-reads from the committed offset, which never passes them. So are
records handed back and not acked yet: Faust clears the streams' queues when it stops the
flow, and one dropped there would hold the stop for ever.

A record handed back that is not due yet (its key's earlier deferred events came back late) is
not slept on in the limited stream, which would hold every key of the partition: the gate
gives it back (:meth:`Deferrals.hold`) into the heap until its shifted time, and the key's
later records are held behind it (:meth:`Deferrals.due`). See docs/keyed.md, "A deferred event
that comes back late".

Under exactly_once a partition's records go back in offset order (:class:`_OffsetOrder`),
and none is held in the heap again (the gate waits for it in the stream instead): a record's
outputs commit with the offsets acked so far, so one handed back ahead of an earlier one
would run again after a crash (docs/keyed.md, "on_limit: defer, wait or shed"). The cost: a
record due later holds back its partition's later records that are due sooner.
"""

from __future__ import annotations

import asyncio
import bisect
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
        self._order: _OffsetOrder | None = None  # exactly_once: see the module's doc

    def _open(self) -> list[tuple[float, int, Any]]:
        self._heap = []
        self._wake = asyncio.Event()
        in_transaction = bool(getattr(self.app, "in_transaction", False))  # Faust's App
        self._order = _OffsetOrder() if in_transaction else None
        return self._heap

    def _push(self, due: float, event: Any) -> None:
        assert self._heap is not None
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, event))
        if self._order is not None:
            self._order.arrived(event.message)
        self._count()
        self._wake.set()

    def _count(self) -> None:
        parked = self._order.parked_count() if self._order is not None else 0
        self.backlog = len(self._heap or ()) + parked

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
        if self._heap is None or self._order is not None:
            return False
        message = event.message
        message.incref()
        self._held[message] = key
        self._held_keys.setdefault(key, {})[message] = (message.offset, due)
        self.held_back += 1
        self._push(due, event)
        return True

    def _let_all_go(self, heap: list[tuple[float, int, Any]]) -> None:
        parked = self._order.clear() if self._order is not None else []
        for held in [*(event for _, _, event in heap), *parked]:  # re-read after the rebalance
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
                ready = [event] if self._order is None else self._order.ready(event)
                self._count()
                for record in ready:
                    await self._hand_back(target, record, consumer)
                continue
            wake.clear()
            timeout = 0.25 if not heap else 0.05 if target is None else min(heap[0][0] - now, 0.25)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=max(timeout, 0.001))

    async def _hand_back(self, target: StreamT[Any], event: Any, consumer: Any) -> None:
        message = event.message
        if TP(message.topic, message.partition) not in consumer.assignment():
            return
        try:
            await redeliver(target, message)
        except Exception:  # broad: any failure must not kill the releaser;
            # the record stays un-acked, so it is read again later
            log.exception("keyed limit %s: cannot hand back %s[%d]@%d", self.name,
                          message.topic, message.partition, message.offset)
            return
        event.ack()  # the stream's ack is the last one: then the offset is done
        if not message.acked:
            self._handed_back.add(message)


class _OffsetOrder:
    """Per partition, the offsets of the records in the heap; a record due before a lower
    offset of its partition is parked until that one goes (exactly_once)."""

    def __init__(self) -> None:
        self._waiting: dict[TP, list[int]] = {}  # sorted: arrivals come in offset order
        self._parked: dict[TP, list[tuple[int, Any]]] = {}  # min-heaps by offset

    def arrived(self, message: Any) -> None:
        bisect.insort(self._waiting.setdefault(TP(message.topic, message.partition), []),
                      message.offset)

    def ready(self, event: Any) -> list[Any]:
        """``event`` is due: the records to hand back now, in offset order (none if a lower
        offset of its partition is still in the heap)."""
        message = event.message
        tp = TP(message.topic, message.partition)
        waiting, parked = self._waiting[tp], self._parked.setdefault(tp, [])
        heapq.heappush(parked, (message.offset, event))
        ready: list[Any] = []
        while parked and waiting and parked[0][0] == waiting[0]:
            waiting.pop(0)
            ready.append(heapq.heappop(parked)[1])
        return ready

    def parked_count(self) -> int:
        return sum(len(parked) for parked in self._parked.values())

    def clear(self) -> list[Any]:
        """Forget everything (the flow stopped); the parked records, to let go."""
        parked = [event for records in self._parked.values() for _, event in records]
        self._waiting.clear()
        self._parked.clear()
        return parked
