"""Token bucket: a sustained rate plus a bounded burst."""

from __future__ import annotations

import time

from .base import Clock, LimiterBase, check_capacity, check_rate
from .bucket import ONE_PERMIT, Bucket

__all__ = ["BucketLimiter", "TokenBucketRateLimiter"]


class BucketLimiter(LimiterBase):
    """A limiter over one :class:`~.bucket.Bucket`: the token bucket, and the leaky bucket
    (GCRA is a token bucket seen from the other side: its queue level is the tokens missing)."""

    __slots__ = ("_initial", "bucket")

    def __init__(self, rate: float, capacity: float, initial: float, clock: Clock,
                 utilization_window: float) -> None:
        self._initial = initial
        super().__init__(clock, utilization_window)
        #: The tokens (read by a :class:`MultiTierRateLimiter` that holds this one as a tier).
        self.bucket = Bucket(rate, capacity, initial, clock())

    # The hot path: no validation for permits == 1, no method calls beyond the clock.
    # ``Bucket.take(1, now)`` inlined (a call would cost about a quarter of the time);
    # the level never exceeds the capacity here, so refill may cut to it.
    def try_acquire(self, permits: int = 1) -> bool:
        """Take ``permits`` tokens now or refuse now (never blocks)."""
        now = self._clock()
        if permits == 1 and now < self._fast_until:
            b = self.bucket
            tokens = b.level + (now - b.at) * b.rate
            if tokens > b.capacity:
                tokens = b.capacity
            b.at = now
            if tokens >= ONE_PERMIT:
                b.level = tokens - 1.0
                self._granted += 1
                return True
            b.level = tokens
            self._denied += 1
            return False
        return self._try_slow(permits, now)

    def _admit(self, permits: int, now: float) -> bool:
        return self.bucket.take(permits, now)

    def _delay(self, permits: float, now: float) -> float:
        return self.bucket.delay(permits, now)

    def _max_permits(self) -> float:
        return self.bucket.capacity

    def _tokens(self) -> float:
        return self.bucket.level_at(self._clock())

    @property
    def current_rate_limit(self) -> float:
        return self.bucket.rate

    def update_rate_limit(self, new_rate: float) -> None:
        """Change the rate at once; the level (tokens, or a leaky bucket's queue) is kept."""
        self.bucket.set_rate(check_rate("new_rate", new_rate), self._clock())
        self._notify()

    def reset(self) -> None:
        """Back to the initial level with cleared counters; the current rate is kept."""
        now = self._clock()
        self.bucket.fill(self._initial, now)
        self._reset_counters(now)
        self._notify()


class TokenBucketRateLimiter(BucketLimiter):
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

    __slots__ = ("rate_limiter_id",)

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
        rate = check_rate("tokens_per_second", tokens_per_second)
        capacity = check_capacity("burst_capacity", burst_capacity)
        initial = capacity if initial_tokens is None else float(initial_tokens)
        if not 0.0 <= initial <= capacity:
            raise ValueError(
                f"initial_tokens must be None or between 0 and burst_capacity "
                f"({capacity:g}), got {initial_tokens!r}"
            )
        self.rate_limiter_id = rate_limiter_id
        super().__init__(rate, capacity, initial, clock, utilization_window)

    @property
    def current_tokens(self) -> float:
        """Tokens available right now (fractional)."""
        return self._tokens()

    @property
    def max_tokens(self) -> float:
        return self.bucket.capacity

    @property
    def name(self) -> str:
        """``rate_limiter_id`` when given, else the class name."""
        return self.rate_limiter_id or type(self).__name__

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
