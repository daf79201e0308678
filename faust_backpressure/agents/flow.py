"""Keep a rate-limited stream from ever stalling the worker it runs in.

Faust delivers every fetched record of a worker through one conductor. When a stream's buffer is
*full*, the conductor awaits room, and every other agent of the worker waits with it. A
rate-limited agent that waits for tokens with a full buffer therefore stalls the whole worker,
including the owner agent of a distributed limiter that must answer the very lease request the
waiting agent needs: a deadlock. Faust pauses a partition when the buffer passes 80%, but a fetch
in flight can still fill it.

So a gated stream's buffer never counts as full (the conductor never waits on it), and Faust's
own pressure callbacks bound it instead: the partition being delivered is held back (Faust's
``Consumer.on_buffer_full``) once the buffer holds ``stream_buffer_maxsize`` events, and
released (``on_buffer_drop``) when it is down to 40% of that. The buffer then holds at most
``stream_buffer_maxsize`` plus the fetches in flight.

Nor may a waiting event hold a rebalance or a stop: Faust waits for every event being processed
before it hands partitions over or stops, and a distributed limiter's owner cannot answer during
a rebalance. So every wait of an event (for permits, a key's due time, an operator's resume)
goes through :func:`unless_flow_stops`, which gives up when Faust stops the flow; what the event
does then (goes on without its permits, or its batch is abandoned) is the caller's.

Example::

    never_block_conductor(app, stream)   # before the stream is iterated
    if not await unless_flow_stops(app, limiter.acquire(1)):
        ...  # the flow stopped first: nothing was taken
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from faust.types import AppT, StreamT

from faust_backpressure.faust_seam import flow_stopped_event, unbounded_stream_buffer

__all__ = ["never_block_conductor", "unless_flow_stops"]

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
    work = asyncio.ensure_future(awaitable)
    watching = asyncio.ensure_future(flow_stopped.wait())
    try:
        await asyncio.wait({work, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not work.done():
            work.cancel()
    await asyncio.wait({work})  # done, or leaving (e.g. the limiter's queue)
    if work.cancelled():
        return False
    work.result()  # raises what work raised
    return True
