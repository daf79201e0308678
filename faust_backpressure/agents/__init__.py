"""Rate-limited agents, pipelines with a dead-letter queue, DLQ replay, the control loop."""

from faust_backpressure.agents.control import ControlLoop, ControlLoops, WorkerSample
from faust_backpressure.agents.headers import Failure, dlq_headers, shed_headers
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

__all__ = [
    "Backoff",
    "ControlLoop",
    "ControlLoops",
    "CostFunction",
    "Failure",
    "LimiterSpec",
    "Pipeline",
    "PipelineStats",
    "RateLimitGate",
    "ReplayReport",
    "WorkerSample",
    "dlq_headers",
    "exponential_backoff",
    "rate_limited",
    "replay_dlq",
    "resolve_limiter",
    "shed_headers",
]
