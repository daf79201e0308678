"""Safe capacity (Google Doorman's term): what a worker may admit while its owner is gone.

A worker normally admits only from leases granted by the limiter's owner; when the owner cannot
be reached (broker down, rebalance, owner crashed and not yet replaced) it admits nothing. With
``fallback_rate=f`` a :class:`~faust_backpressure.tables.DistributedRateLimiter` instead admits
at up to ``f`` permits/s from this local bucket while it has had no valid lease for longer than
its retry timeout; the first grant stops it. The bucket starts empty at each outage, so one
outage of length ``t`` admits at most ``f * t + burst`` here (``burst = max(1, f / 20)``, i.e.
50 ms of the fallback rate): with ``W`` workers ``W * (f * t + burst)`` in all, on top of what
unexpired leases still allow. Pure: times are passed in.
"""

from __future__ import annotations

import math

from faust_backpressure.limiters.base import check_rate

__all__ = ["FALLBACK_BURST_SECONDS", "SafeCapacity"]

#: The fallback bucket holds this many seconds of its rate (at least one permit).
FALLBACK_BURST_SECONDS = 0.05


class SafeCapacity:
    """A token bucket at ``rate`` (capacity ``max(1, rate * FALLBACK_BURST_SECONDS)``) that is
    emptied whenever a new outage starts (``since`` changes)."""

    __slots__ = ("_at", "_level", "_since", "burst", "rate")

    def __init__(self, rate: float) -> None:
        self.rate = check_rate("fallback_rate", rate)
        self.burst = max(1.0, self.rate * FALLBACK_BURST_SECONDS)
        self._since = -math.inf
        self._level = 0.0
        self._at = -math.inf

    def _refill(self, since: float, now: float) -> float:
        if since != self._since:  # a new outage: start empty at its beginning
            self._since, self._level, self._at = since, 0.0, since
        level = min(self.burst, self._level + max(0.0, now - self._at) * self.rate)
        self._level, self._at = level, max(self._at, now)
        return level

    def take(self, permits: float, since: float, now: float) -> bool:
        """Take ``permits`` for the outage that began (fallback-wise) at ``since``, or refuse."""
        level = self._refill(since, now)
        if level >= permits:
            self._level = level - permits
            return True
        return False

    def delay(self, permits: float, since: float, now: float) -> float:
        """Seconds until ``permits`` could be taken (``inf`` if more than the bucket holds)."""
        if permits > self.burst:
            return math.inf
        if now < since:
            return since - now + permits / self.rate
        level = self._refill(since, now)
        return 0.0 if level >= permits else (permits - level) / self.rate
