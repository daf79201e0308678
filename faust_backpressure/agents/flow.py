"""Keep a rate-limited stream from ever stalling the worker it runs in.

Faust delivers a worker's records through one conductor, which waits when a stream's buffer
is full, and every other agent of the worker with it: a rate-limited agent waiting with a full
buffer could deadlock the worker (the owner of a distributed limiter must answer its lease
request). So a gated stream's buffer never counts as full, and Faust's own pressure callbacks
bound it instead: the partition being delivered is held back (``Consumer.on_buffer_full``) at
``stream_buffer_maxsize`` events and released (``on_buffer_drop``) at 40% of that.

Nor may a waiting event hold a rebalance or a stop (Faust waits for every event being
processed, and a distributed limiter's owner cannot answer during a rebalance): every wait of
an event goes through :func:`unless_flow_stops`, which gives up when Faust stops the flow; what
the event does then is the caller's. See docs/agents.md, "Flow control" and "Rebalances and
shutdown".

Example::

    never_block_conductor(app, stream)   # before the stream is iterated
    if not await unless_flow_stops(app, limiter.acquire(1)):
        ...  # the flow stopped first: nothing was taken
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from faust.types import AppT, StreamT

from faust_backpressure.faust_seam import flow_stopped_event, unbounded_stream_buffer

__all__ = ["STOPPED", "StopWatch", "Stopped", "never_block_conductor", "unless_flow_stops",
           "unless_set"]

T = TypeVar("T")

#: Faust's (mode's) default: release held partitions at 40% of the high-water mark (a batch
#: pipeline's held partitions too).
PRESSURE_DROP_RATIO = 0.40


def never_block_conductor(app: AppT, stream: StreamT[Any]) -> None:
    """Make ``stream``'s buffer never full, bounded by Faust's pressure callbacks instead."""
    unbounded_stream_buffer(stream, int(app.conf.stream_buffer_maxsize), PRESSURE_DROP_RATIO)


async def unless_flow_stops(app: AppT, awaitable: Awaitable[Any]) -> bool:
    """Await ``awaitable`` unless Faust stops the flow first (a rebalance or shutdown).

    True if it completed (also when the flow stopped at the same moment: what it took is
    kept), False if the flow stopped first: it was cancelled (a cancelled limiter waiter
    takes nothing) and has finished leaving. Raises what ``awaitable`` raised. Before the
    consumer exists it is just awaited.
    """
    flow_stopped = flow_stopped_event(app)
    if flow_stopped is None:
        await awaitable
        return True
    return await unless_set(flow_stopped, awaitable) is not STOPPED


class StopWatch:
    """Awaits that end when an event is set (Faust's flow stopping), run in the caller's task.

    One watcher task per event cancels the awaits still running when it is set; an await
    costs a set insert, not the two tasks of :func:`unless_flow_stops` (a downstream call's
    CPU: bench/downstream_call_overhead.py). What is awaited must take nothing when
    cancelled (the limiters' waiters don't).

    Example::

        watch = StopWatch()
        if await watch.until_set(flow_stopped, limiter.acquire(1)) is STOPPED:
            ...  # the flow stopped first: nothing was taken
    """

    def __init__(self) -> None:
        #: event -> its watcher and the tasks awaiting under it
        self._watched: dict[asyncio.Event, tuple[asyncio.Task[None], set[asyncio.Task[Any]]]] = {}
        self._stopped: set[asyncio.Task[Any]] = set()  # cancelled by a watcher

    async def until_set(self, event: asyncio.Event, awaitable: Awaitable[T]) -> T | Stopped:
        """``await awaitable``, or :data:`STOPPED` if ``event`` is set first. Raises what
        ``awaitable`` raised."""
        if event.is_set():  # the watcher has fired: race it the costly way
            return await unless_set(event, awaitable)
        task = asyncio.current_task()
        assert task is not None  # (awaited: there is a task)
        watched = self._watched.get(event)
        if watched is None or watched[0].done():
            waiting: set[asyncio.Task[Any]] = set()
            watched = self._watched[event] = (
                asyncio.ensure_future(self._watch(event, waiting)), waiting)
        waiting = watched[1]
        waiting.add(task)
        try:
            result = await awaitable
        except asyncio.CancelledError:
            if task in self._stopped:
                self._stopped.discard(task)
                if task.uncancel() == 0:  # (> 0: cancelled by someone else too)
                    return STOPPED
            raise
        finally:
            waiting.discard(task)
        if task in self._stopped:  # it swallowed the cancel and finished: its result stands
            self._stopped.discard(task)
            task.uncancel()
        return result

    async def _watch(self, event: asyncio.Event, waiting: set[asyncio.Task[Any]]) -> None:
        await event.wait()
        for task in waiting:
            self._stopped.add(task)
            task.cancel()
        waiting.clear()

    def stop(self) -> None:
        """Cancel the watchers (the worker stops)."""
        for watcher, _ in self._watched.values():
            watcher.cancel()
        self._watched.clear()


class Stopped:
    """What :meth:`StopWatch.until_set` returns when the event was set first."""

    def __repr__(self) -> str:
        return "STOPPED"


STOPPED = Stopped()


async def unless_set(event: asyncio.Event, awaitable: Awaitable[T]) -> T | Stopped:
    """``await awaitable``, or :data:`STOPPED` if ``event`` is set first (then it was
    cancelled and has finished leaving). Raises what ``awaitable`` raised."""
    work = asyncio.ensure_future(awaitable)
    watching = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({work, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not work.done():
            work.cancel()
    await asyncio.wait({work})  # done, or leaving (e.g. the limiter's queue)
    if work.cancelled():
        return STOPPED
    return work.result()  # raises what work raised
