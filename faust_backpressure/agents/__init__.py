"""Rate-limited agents, pipelines with a dead-letter queue, DLQ replay."""

from faust_backpressure.agents.downstream import Downstream, DownstreamStats, WaitAborted
from faust_backpressure.agents.gate_base import GateStats, KeyedGateStats, RateLimitGateStats
from faust_backpressure.agents.headers import Failure, dlq_headers, shed_headers
from faust_backpressure.agents.keyed import KeyedRateLimitGate, NotCopartitioned
from faust_backpressure.agents.pipeline import (
    Backoff,
    Pipeline,
    PipelineStats,
    exponential_backoff,
)
from faust_backpressure.agents.rate_limit import CostFunction, RateLimitGate, rate_limited
from faust_backpressure.agents.replay import ReplayReport, replay_dlq
from faust_backpressure.agents.resolve import (
    LimiterSpec,
    resolve_limiter,
)
from faust_backpressure.agents.sensor import BackpressureSensor, notify_sensors
from faust_backpressure.agents.slow_down import DependencyUnavailable, SlowDown

__all__ = ["Backoff", "BackpressureSensor", "CostFunction", "DependencyUnavailable", "Downstream",
           "DownstreamStats", "Failure", "GateStats", "KeyedGateStats", "KeyedRateLimitGate",
           "LimiterSpec", "NotCopartitioned", "Pipeline", "PipelineStats", "RateLimitGate",
           "RateLimitGateStats", "ReplayReport", "SlowDown", "WaitAborted", "dlq_headers",
           "exponential_backoff", "notify_sensors", "rate_limited", "replay_dlq",
           "resolve_limiter", "shed_headers"]
