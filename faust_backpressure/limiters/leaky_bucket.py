"""Leaky bucket (GCRA virtual scheduling): a constant pace with a bounded queue."""

from __future__ import annotations

import time

from .base import EPSILON, Clock, LimiterBase, check_capacity, check_rate

__all__ = ["LeakyBucketRateLimiter"]


class LeakyBucketRateLimiter(LimiterBase):
    """Permits leave at ``leak_rate_per_second``; at most ``capacity`` may be queued ahead.

    Implemented as GCRA: one float, the theoretical arrival time (TAT) at which the
    queue drains. A request for ``n`` is granted if the queue level after it,
    ``(TAT - now) * rate + n``, is at most ``capacity``. Hence over any interval of
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

    __slots__ = ("_capacity", "_rate", "_tat")

    def __init__(
        self,
        leak_rate_per_second: float,
        capacity: float,
        *,
        clock: Clock = time.monotonic,
        utilization_window: float = 1.0,
    ) -> None:
        self._rate = check_rate("leak_rate_per_second", leak_rate_per_second)
        self._capacity = check_capacity("capacity", capacity)
        super().__init__(clock, utilization_window)
        self._tat = clock()

    def _level(self, now: float) -> float:
        tat = self._tat
        return (tat - now) * self._rate if tat > now else 0.0

    def _admit(self, permits: int, now: float) -> bool:
        level = self._level(now)
        if level + permits <= self._capacity + EPSILON:
            self._tat = now + (level + permits) / self._rate
            return True
        return False

    def _delay(self, permits: float, now: float) -> float:
        return (self._level(now) + permits - self._capacity - EPSILON) / self._rate

    def _max_permits(self) -> float:
        return self._capacity

    def _tokens(self) -> float:
        return self._capacity - self.current_level

    @property
    def current_level(self) -> float:
        """Permits queued ahead (not yet leaked), between 0 and ``capacity``."""
        return self._level(self._clock())

    @property
    def capacity(self) -> float:
        return self._capacity

    @property
    def current_rate_limit(self) -> float:
        return self._rate

    def update_rate_limit(self, new_rate: float) -> None:
        """Change the pace at once; the queued level is kept and drains at the new rate."""
        new_rate = check_rate("new_rate", new_rate)
        now = self._clock()
        level = self._level(now)
        self._rate = new_rate
        self._tat = now + level / new_rate
        self._notify()

    def reset(self) -> None:
        """Empty the queue and clear counters; the current rate is kept."""
        now = self._clock()
        self._tat = now
        self._reset_counters(now)
        self._notify()
