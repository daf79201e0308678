"""Construction helpers; subclass to add storage backends (e.g. distributed)."""

from __future__ import annotations

import time
from typing import Any

from .adaptive import AdaptiveRateLimiter
from .base import Clock, RateLimitingStrategy
from .leaky_bucket import LeakyBucketRateLimiter
from .multi_tier import MultiTierRateLimiter
from .sliding_window import SlidingWindowRateLimiter
from .token_bucket import TokenBucketRateLimiter

__all__ = ["RateLimiterFactory", "TierLimit"]

#: A tier given as ``(tokens_per_second, burst_capacity)`` or as a ready limiter.
TierLimit = tuple[float, float] | RateLimitingStrategy


class RateLimiterFactory:
    """Builds limiters. Methods are class methods so a subclass can override one
    (e.g. ``create_in_memory`` -> a distributed bucket) and the others follow.

    Example::

        limiter = RateLimiterFactory.create_in_memory(1000, 2000, initial_tokens=0)
        tiers = RateLimiterFactory.create_multi_tier(
            global_limit=(10_000, 20_000), topic_limit=(1_000, 2_000),
            consumer_limit=(100, 200))
    """

    @classmethod
    def create_in_memory(
        cls, tokens_per_second: float, burst_capacity: float, **kwargs: Any
    ) -> TokenBucketRateLimiter:
        """A :class:`TokenBucketRateLimiter`; ``kwargs`` are passed through."""
        return TokenBucketRateLimiter(tokens_per_second, burst_capacity, **kwargs)

    @classmethod
    def create_leaky_bucket(
        cls, leak_rate_per_second: float, capacity: float, **kwargs: Any
    ) -> LeakyBucketRateLimiter:
        return LeakyBucketRateLimiter(leak_rate_per_second, capacity, **kwargs)

    @classmethod
    def create_sliding_window(
        cls, max_permits: float, window_seconds: float, **kwargs: Any
    ) -> SlidingWindowRateLimiter:
        return SlidingWindowRateLimiter(max_permits, window_seconds, **kwargs)

    @classmethod
    def create_adaptive(
        cls, inner: RateLimitingStrategy, *, min_rate: float, max_rate: float, **kwargs: Any
    ) -> AdaptiveRateLimiter:
        return AdaptiveRateLimiter(inner, min_rate=min_rate, max_rate=max_rate, **kwargs)

    @classmethod
    def _make_tier(cls, name: str, spec: TierLimit, clock: Clock) -> RateLimitingStrategy:
        if isinstance(spec, RateLimitingStrategy):
            return spec
        if isinstance(spec, tuple) and len(spec) == 2:
            rate, burst = spec
            return cls.create_in_memory(rate, burst, rate_limiter_id=name, clock=clock)
        raise ValueError(f"{name} must be (tokens_per_second, burst_capacity) or a limiter, "
                         f"got {spec!r}")

    @classmethod
    def create_multi_tier(
        cls,
        global_limit: TierLimit,
        topic_limit: TierLimit | None = None,
        consumer_limit: TierLimit | None = None,
        *,
        clock: Clock = time.monotonic,
        **extra_tiers: TierLimit,
    ) -> MultiTierRateLimiter:
        """Tiers named ``global``, ``topic``, ``consumer`` (None = omitted) plus any
        ``extra_tiers`` by keyword name, checked in that order."""
        specs: dict[str, TierLimit | None] = {
            "global": global_limit, "topic": topic_limit, "consumer": consumer_limit,
            **extra_tiers,
        }
        tiers = {
            name: cls._make_tier(f"{name}_limit" if name in ("global", "topic", "consumer")
                                 else name, spec, clock)
            for name, spec in specs.items() if spec is not None
        }
        return MultiTierRateLimiter(tiers, clock=clock)
