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
