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

Example::

    never_block_conductor(app, stream)   # before the stream is iterated
"""

from __future__ import annotations

from typing import Any

from faust.types import AppT, StreamT

from faust_backpressure.faust_seam import unbounded_stream_buffer

__all__ = ["never_block_conductor"]

#: Faust's (mode's) default: release held partitions at 40% of the high-water mark.
PRESSURE_DROP_RATIO = 0.40


def never_block_conductor(app: AppT, stream: StreamT[Any]) -> None:
    """Make ``stream``'s buffer never full, bounded by Faust's pressure callbacks instead."""
    unbounded_stream_buffer(stream, int(app.conf.stream_buffer_maxsize), PRESSURE_DROP_RATIO)
