"""Sliding window over a fixed number of sub-windows: bounded memory at any rate."""

from __future__ import annotations

import math
import time

from faust_backpressure.config.validation import check_int

from .base import Clock, LimiterBase, check_capacity, check_rate
from .bucket import EPSILON

__all__ = ["SlidingWindowRateLimiter"]


class SlidingWindowRateLimiter(LimiterBase):
    """At most ``max_permits`` per ``window_seconds``, counted in ``sub_windows`` buckets.

    The window is split into ``N = sub_windows`` buckets of ``window_seconds / N``;
    a request is granted if the sum of the current bucket and the ``N - 1`` before it
    stays within ``max_permits``. Memory is ``N`` ints whatever the rate (no
    per-permit log). The approximation and its bounds:

    * any interval of length ``<= window_seconds * (N - 1) / N`` holds at most
      ``max_permits`` grants (exact);
    * any interval of length ``window_seconds`` holds at most ``max_permits`` plus the
      grants of one sub-window, so never more than ``2 * max_permits`` (worst case:
      a burst at the end of one sub-window, another just after it expires);
    * it is conservative by at most one sub-window: a grant may be refused while the
      exact count over the last ``window_seconds`` is below the limit.

    A fresh window allows ``max_permits`` at once (like a full token bucket).

    Example::

        limiter = SlidingWindowRateLimiter(100, 1.0)   # 100 per second
        if not limiter.try_acquire():
            defer(message)
    """

    __slots__ = ("_counts", "_current", "_limit", "_n", "_origin", "_sum", "_width", "_window")

    def __init__(
        self,
        max_permits: float,
        window_seconds: float,
        *,
        sub_windows: int = 10,
        clock: Clock = time.monotonic,
        utilization_window: float = 1.0,
    ) -> None:
        self._limit = check_capacity("max_permits", max_permits)
        self._window = check_rate("window_seconds", window_seconds)
        self._n = check_int("sub_windows", sub_windows, 1)
        self._width = self._window / sub_windows
        self._counts = [0] * sub_windows
        self._sum = 0
        super().__init__(clock, utilization_window)
        self._origin = clock()
        self._current = 0  # absolute index of the current sub-window

    def _advance(self, now: float) -> None:
        index = math.floor((now - self._origin) / self._width)
        # Division may round just below a boundary that _delay computes by multiplication;
        # agree with it, or time_until_available says 0 while _admit refuses.
        if self._origin + (index + 1) * self._width <= now:
            index += 1
        steps = index - self._current
        if steps <= 0:
            return
        counts, n = self._counts, self._n
        if steps >= n:
            counts[:] = [0] * n
            self._sum = 0
        else:
            for k in range(self._current + 1, index + 1):
                pos = k % n
                self._sum -= counts[pos]
                counts[pos] = 0
        self._current = index

    def _admit(self, permits: int, now: float) -> bool:
        self._advance(now)
        if self._sum + permits <= self._limit + EPSILON:
            self._counts[self._current % self._n] += permits
            self._sum += permits
            return True
        return False

    def _delay(self, permits: float, now: float) -> float:
        self._advance(now)
        free = self._limit - self._sum + EPSILON
        if free >= permits:
            return 0.0
        n, cur = self._n, self._current
        for i in range(n):  # oldest sub-window expires first
            free += self._counts[(cur - n + 1 + i) % n]
            if free >= permits:
                return self._origin + (cur + 1 + i) * self._width - now
        return self._window  # unreachable: permits <= max_permits

    def _max_permits(self) -> float:
        return self._limit

    def _tokens(self) -> float:
        return self.available

    @property
    def available(self) -> float:
        """Permits that could be granted right now."""
        self._advance(self._clock())
        return self._limit - self._sum

    @property
    def window_seconds(self) -> float:
        return self._window

    @property
    def current_rate_limit(self) -> float:
        return self._limit / self._window

    def update_rate_limit(self, new_rate: float) -> None:
        """Set ``max_permits = new_rate * window_seconds`` (>= 1); counts are kept."""
        new_rate = check_rate("new_rate", new_rate)
        if new_rate * self._window < 1:
            raise ValueError(
                f"new_rate * window_seconds must be >= 1 (one permit per window), got {new_rate!r}"
            )
        self._limit = new_rate * self._window
        self._notify()

    def reset(self) -> None:
        """Forget all counts and counters; the current rate is kept."""
        now = self._clock()
        self._counts[:] = [0] * self._n
        self._sum = 0
        self._origin = now
        self._current = 0
        self._reset_counters(now)
        self._notify()
