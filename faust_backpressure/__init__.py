"""faust-backpressure: rate limiting and backpressure for Faust apps, shared across workers.

Layers (dependencies point downward): ``app`` -> ``agents`` -> ``tables`` -> ``limiters``;
``config`` is read by all. Importing the package registers the ``rocksdict://`` table store.
"""

from faust_backpressure import tables as _tables  # noqa: F401  (registers the rocksdict:// store)
from faust_backpressure.limiters import (
    AdaptiveRateLimiter,
    Clock,
    LeakyBucketRateLimiter,
    MultiTierRateLimiter,
    RateLimiterFactory,
    RateLimiterStats,
    RateLimitingStrategy,
    RateLimitTimeout,
    SlidingWindowRateLimiter,
    TierLimit,
    TierSpec,
    TokenBucketRateLimiter,
)

__version__ = "0.1.0"

__all__ = [
    "AdaptiveRateLimiter",
    "Clock",
    "LeakyBucketRateLimiter",
    "MultiTierRateLimiter",
    "RateLimitTimeout",
    "RateLimiterFactory",
    "RateLimiterStats",
    "RateLimitingStrategy",
    "SlidingWindowRateLimiter",
    "TierLimit",
    "TierSpec",
    "TokenBucketRateLimiter",
    "__version__",
]
