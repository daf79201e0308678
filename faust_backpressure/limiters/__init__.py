"""Pure-Python rate limiters: no Faust, no I/O, an injectable clock.

See ``docs/limiters.md`` for burst semantics, waiting and multi-tier atomicity.
"""

from .adaptive import AdaptiveRateLimiter
from .base import (
    Clock,
    LimiterBase,
    RateLimiterStats,
    RateLimitingStrategy,
    RateLimitTimeout,
)
from .circuit_breaker import BreakerState, BreakerStats, CircuitBreaker, CircuitOpenTimeout
from .concurrency import AIMDLimit, ConcurrencyLimit, FixedLimit
from .concurrency_limiter import (
    CallPermit,
    ConcurrencyLimiter,
    ConcurrencyLimitTimeout,
    ConcurrencyStats,
)
from .factory import RateLimiterFactory, TierLimit
from .keyed_buckets import KeyedTokenBuckets, KeyLimits
from .latency_limits import GradientLimit, VegasLimit
from .leaky_bucket import LeakyBucketRateLimiter
from .multi_tier import MultiTierRateLimiter, TierSpec
from .sliding_window import SlidingWindowRateLimiter
from .token_bucket import TokenBucketRateLimiter

__all__ = ["AIMDLimit", "AdaptiveRateLimiter", "BreakerState", "BreakerStats", "CallPermit",
           "CircuitBreaker", "CircuitOpenTimeout", "Clock", "ConcurrencyLimit",
           "ConcurrencyLimitTimeout", "ConcurrencyLimiter", "ConcurrencyStats", "FixedLimit",
           "GradientLimit", "KeyLimits", "KeyedTokenBuckets", "LeakyBucketRateLimiter",
           "LimiterBase", "MultiTierRateLimiter", "RateLimitTimeout", "RateLimiterFactory",
           "RateLimiterStats", "RateLimitingStrategy", "SlidingWindowRateLimiter", "TierLimit",
           "TierSpec", "TokenBucketRateLimiter", "VegasLimit"]
