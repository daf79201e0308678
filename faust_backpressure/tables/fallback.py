"""Safe capacity (Google Doorman's term): what a worker may admit while its owner is gone.

A worker that cannot reach the owner (broker down, rebalance, owner crashed) admits nothing,
unless ``fallback_rate=f``: then a :class:`~faust_backpressure.tables.DistributedRateLimiter`
with no valid lease for longer than its retry timeout admits up to ``f`` permits/s from this
local bucket, until the first grant. The bucket starts empty at each outage, so an outage of
length ``t`` admits at most ``f * t + burst`` per worker (``burst = max(1, f / 20)``), on top of
what unexpired leases still allow. Pure: times are passed in. See docs/distributed.md.
"""

from __future__ import annotations

import math

from faust_backpressure.limiters.base import check_rate
from faust_backpressure.limiters.bucket import Bucket, small_burst

__all__ = ["SafeCapacity"]


class SafeCapacity:
    """A token bucket at ``rate`` (capacity :func:`~faust_backpressure.limiters.bucket.small_burst`
    of it) that is emptied whenever a new outage starts (``since`` changes)."""

    __slots__ = ("_bucket", "_since")

    def __init__(self, rate: float) -> None:
        rate = check_rate("fallback_rate", rate)
        self._bucket = Bucket(rate, small_burst(rate), 0.0, -math.inf)
        self._since = -math.inf

    @property
    def rate(self) -> float:
        return self._bucket.rate

    @property
    def burst(self) -> float:
        return self._bucket.capacity

    def _start(self, since: float) -> None:
        if since != self._since:  # a new outage: start empty at its beginning
            self._since = since
            self._bucket.fill(0.0, since)

    def take(self, permits: float, since: float, now: float) -> bool:
        """Take ``permits`` for the outage that began (fallback-wise) at ``since``, or refuse;
        ``now >= since``."""
        self._start(since)
        return self._bucket.take(permits, now)

    def delay(self, permits: float, since: float, now: float) -> float:
        """Seconds until ``permits`` could be taken (``inf`` if more than the bucket holds)."""
        if permits > self.burst:
            return math.inf
        if now < since:
            return since - now + permits / self.rate
        self._start(since)
        return max(0.0, self._bucket.delay(permits, now))
