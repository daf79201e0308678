"""faust-backpressure: rate limiting and backpressure for Faust apps, shared across workers.

Layers (dependencies point downward): ``app`` -> ``agents`` -> ``tables`` -> ``limiters``;
``config`` is read by all. Importing the package registers the ``rocksdict://`` table store.
"""

from faust_backpressure.agents import (
    Pipeline,
    RateLimitGate,
    ReplayReport,
    replay_dlq,
    resolve_limiter,
)
from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
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
from faust_backpressure.tables import DistributedRateLimiter, DistributedRateLimiterFactory

__version__ = "0.1.0"

__all__ = [
    "AdaptiveRateLimiter",
    "Backpressure",
    "BackpressureSettings",
    "Clock",
    "DistributedRateLimiter",
    "DistributedRateLimiterFactory",
    "LeakyBucketRateLimiter",
    "MultiTierRateLimiter",
    "Pipeline",
    "RateLimitGate",
    "RateLimitTimeout",
    "RateLimiterFactory",
    "RateLimiterStats",
    "RateLimitingStrategy",
    "ReplayReport",
    "SlidingWindowRateLimiter",
    "TierLimit",
    "TierSpec",
    "TokenBucketRateLimiter",
    "__version__",
    "replay_dlq",
    "resolve_limiter",
]
