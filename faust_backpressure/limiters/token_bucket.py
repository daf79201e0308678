"""Token bucket: a sustained rate plus a bounded burst."""

from __future__ import annotations

import time

from .base import EPSILON, Clock, LimiterBase, check_capacity, check_rate

__all__ = ["TokenBucketRateLimiter"]


class TokenBucketRateLimiter(LimiterBase):
    """Tokens refill at ``tokens_per_second`` up to ``burst_capacity``; a permit costs one.

    Refill is lazy (computed from the clock on each call, no timers), so the
    limiter is exact: over any interval of length ``t`` at most
    ``tokens_per_second * t + burst_capacity`` permits are granted.

    **Burst semantics.** ``initial_tokens=None`` (the default) starts the bucket
    FULL: the first ``burst_capacity`` permits are granted at once, then the pace
    is ``tokens_per_second``. Pass ``initial_tokens=0`` to start empty and avoid
    that first burst.

    Example::

        limiter = TokenBucketRateLimiter(1000, 2000, initial_tokens=0)
        if limiter.try_acquire():
            process(message)
        await limiter.acquire(10, timeout=5.0)   # waits, FIFO, no polling
    """

    __slots__ = ("_capacity", "_initial", "_last", "_rate", "_tokens_now", "rate_limiter_id")

    def __init__(
        self,
        tokens_per_second: float,
        burst_capacity: float,
        *,
        rate_limiter_id: str | None = None,
        initial_tokens: float | None = None,
        clock: Clock = time.monotonic,
        utilization_window: float = 1.0,
    ) -> None:
        self._rate = check_rate("tokens_per_second", tokens_per_second)
        self._capacity = check_capacity("burst_capacity", burst_capacity)
        if initial_tokens is None:
            self._initial = self._capacity
        else:
            initial = float(initial_tokens)
            if not 0.0 <= initial <= self._capacity:
                raise ValueError(
                    f"initial_tokens must be None or between 0 and burst_capacity "
                    f"({self._capacity:g}), got {initial_tokens!r}"
                )
            self._initial = initial
        self.rate_limiter_id = rate_limiter_id
        super().__init__(clock, utilization_window)
        self._tokens_now = self._initial
        self._last = clock()

    # The hot path: no validation for permits == 1, no method calls beyond the clock.
    def try_acquire(self, permits: int = 1) -> bool:
        """Take ``permits`` tokens now or refuse now (never blocks)."""
        now = self._clock()
        if permits == 1 and now < self._fast_until:
            tokens = self._tokens_now + (now - self._last) * self._rate
            if tokens > self._capacity:
                tokens = self._capacity
            self._last = now
            if tokens >= 0.999999999:  # 1 - EPSILON, inlined
                self._tokens_now = tokens - 1.0
                self._granted += 1
                return True
            self._tokens_now = tokens
            self._denied += 1
            return False
        return self._try_slow(permits, now)

    def _refill(self, now: float) -> float:
        tokens = self._tokens_now + (now - self._last) * self._rate
        if tokens > self._capacity:
            tokens = self._capacity
        self._tokens_now = tokens
        self._last = now
        return tokens

    def _admit(self, permits: int, now: float) -> bool:
        tokens = self._refill(now)
        if tokens >= permits - EPSILON:
            self._tokens_now = tokens - permits
            return True
        return False

    def _delay(self, permits: float, now: float) -> float:
        return (permits - EPSILON - self._refill(now)) / self._rate

    def _max_permits(self) -> float:
        return self._capacity

    def _tokens(self) -> float:
        return self.current_tokens

    @property
    def current_tokens(self) -> float:
        """Tokens available right now (fractional)."""
        tokens = self._tokens_now + (self._clock() - self._last) * self._rate
        return min(tokens, self._capacity)

    @property
    def max_tokens(self) -> float:
        return self._capacity

    @property
    def name(self) -> str:
        """``rate_limiter_id`` when given, else the class name."""
        return self.rate_limiter_id or type(self).__name__

    @property
    def current_rate_limit(self) -> float:
        return self._rate

    @property
    def is_distributed(self) -> bool:
        return False

    @property
    def is_persistent(self) -> bool:
        return False

    @property
    def storage_backend(self) -> str:
        return "memory"

    def can_accommodate_burst(self, burst_size: int) -> bool:
        """True if ``burst_size`` permits could be taken right now (tokens only)."""
        return 0 < burst_size <= self.current_tokens

    def update_rate_limit(self, new_rate: float) -> None:
        """Change the refill rate at once; tokens accrued so far are kept."""
        new_rate = check_rate("new_rate", new_rate)
        self._refill(self._clock())
        self._rate = new_rate
        self._notify()

    def reset(self) -> None:
        """Back to ``initial_tokens`` with cleared counters; the current rate is kept."""
        now = self._clock()
        self._tokens_now = self._initial
        self._last = now
        self._reset_counters(now)
        self._notify()
