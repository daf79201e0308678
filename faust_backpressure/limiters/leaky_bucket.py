"""Leaky bucket (GCRA): a constant pace with a bounded queue."""

from __future__ import annotations

import time

from .base import Clock, check_capacity, check_rate
from .token_bucket import BucketLimiter

__all__ = ["LeakyBucketRateLimiter"]


class LeakyBucketRateLimiter(BucketLimiter):
    """Permits leave at ``leak_rate_per_second``; at most ``capacity`` may be queued ahead.

    The generic cell rate algorithm, kept as the token bucket it is equivalent to (the
    tokens are ``capacity`` minus the queue level). A request for ``n`` is granted if the
    queue level after it is at most ``capacity``. Hence over any interval of
    length ``t`` at most ``rate * t + capacity`` permits are granted, and with
    ``capacity=1`` consecutive grants are spaced at least ``1 / rate`` apart (strict
    pacing, no bursts). The bucket starts empty, so an idle limiter accepts up to
    ``capacity`` at once: that is its queue, there is no burst beyond it.

    Example::

        shaper = LeakyBucketRateLimiter(50, capacity=1)   # one every 20 ms
        for msg in batch:
            await shaper.acquire()
            send(msg)
    """

    __slots__ = ()

    def __init__(
        self,
        leak_rate_per_second: float,
        capacity: float,
        *,
        clock: Clock = time.monotonic,
        utilization_window: float = 1.0,
    ) -> None:
        # An empty queue is a full bucket: the tokens are the room left in the queue.
        capacity = check_capacity("capacity", capacity)
        super().__init__(check_rate("leak_rate_per_second", leak_rate_per_second), capacity,
                         capacity, clock, utilization_window)

    @property
    def current_level(self) -> float:
        """Permits queued ahead (not yet leaked), between 0 and ``capacity``."""
        return self.bucket.capacity - self._tokens()

    @property
    def capacity(self) -> float:
        return self.bucket.capacity
