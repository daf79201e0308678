"""faust-backpressure: rate limiting and backpressure for Faust apps, shared across workers.

Layers (dependencies point downward): ``app`` -> ``control`` -> ``agents`` -> ``tables`` ->
``wire`` | ``limiters`` (side by side); ``config`` is read by all; ``faust_seam`` is the one
package that touches Faust internals. Importing the package registers the ``rocksdict://``
table store.

Exported here: what an app uses and the types in those signatures; the rest lives in the
subpackages.
"""

from faust_backpressure.agents import (
    Backoff,
    BackpressureSensor,
    CostFunction,
    DependencyUnavailable,
    Downstream,
    KeyedRateLimitGate,
    LimiterSpec,
    NotCopartitioned,
    Pipeline,
    PipelineStats,
    RateLimitGate,
    ReplayReport,
    SlowDown,
    replay_dlq,
)
from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings, ControlPolicy, OnLimit
from faust_backpressure.control import (
    BackpressureSeverity,
    BackpressureThresholds,
    CircuitState,
    ControlLoop,
    CreditBasedFlowController,
    PressureDecision,
    ShedLevels,
)
from faust_backpressure.errors import BackpressureError, ConflictingOption
from faust_backpressure.limiters import (
    AdaptiveRateLimiter,
    AIMDLimit,
    CircuitBreaker,
    Clock,
    ConcurrencyLimit,
    ConcurrencyLimiter,
    GradientLimit,
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

__all__ = ["AIMDLimit", "AdaptiveRateLimiter", "Backoff", "Backpressure", "BackpressureError",
           "BackpressureSensor", "BackpressureSettings", "BackpressureSeverity",
           "BackpressureThresholds", "CircuitBreaker", "CircuitState", "Clock", "ConcurrencyLimit",
           "ConcurrencyLimiter", "ConflictingOption", "ControlLoop", "ControlPolicy",
           "CostFunction", "CreditBasedFlowController", "DependencyUnavailable",
           "DistributedRateLimiter", "DistributedRateLimiterFactory", "Downstream", "GradientLimit",
           "KeyedRateLimitGate", "LeakyBucketRateLimiter", "LimiterSpec", "MultiTierRateLimiter",
           "NotCopartitioned", "OnLimit", "Pipeline", "PipelineStats", "PressureDecision",
           "RateLimitGate", "RateLimitTimeout", "RateLimiterFactory", "RateLimiterStats",
           "RateLimitingStrategy", "ReplayReport", "ShedLevels", "SlidingWindowRateLimiter",
           "SlowDown", "TierLimit", "TierSpec", "TokenBucketRateLimiter", "__version__",
           "replay_dlq"]
