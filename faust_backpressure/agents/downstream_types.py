"""What a downstream guard (:mod:`.downstream`) shares with its callers: its stats, the
default "unavailable" predicate, its errors and the publishers it is given."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from faust_backpressure.agents.slow_down import DependencyUnavailable
from faust_backpressure.errors import BackpressureError
from faust_backpressure.limiters.base import gauge

__all__ = ["RECOVERY_MIN_OPEN", "DownstreamStats", "Publisher", "WaitAborted",
           "is_unavailable"]


def is_unavailable(exc: BaseException) -> bool:
    """The default: the system is down or overloaded as a whole, not this event's fault."""
    return isinstance(exc, (DependencyUnavailable, ConnectionError, TimeoutError,
                            asyncio.TimeoutError))


class WaitAborted(BackpressureError):
    """A call gave up waiting for its dependency (the caller asked it to: e.g. Faust stopped
    the flow for a rebalance while the breaker was open). Nothing was called."""


#: Publishes a slow-down to the other workers: ``(dependency, until)`` (wall-clock seconds);
#: or, for ``publish_recovery``, that this worker's probes passed: ``(dependency, at)``.
Publisher = Callable[[str, float], Awaitable[None]]

#: Probes after another worker's recovery news come at most this often (seconds after an
#: opening): a flood of such records (unsigned, from anyone) costs a probe round per period.
RECOVERY_MIN_OPEN = 0.5


@dataclass
class DownstreamStats:
    """One guard's view since this worker started (per process)."""

    name: str
    limit: int = field(metadata=gauge("Calls in flight the learnt limit allows."))
    in_flight: int = field(metadata=gauge("Calls in flight now."))
    queued: int = field(metadata=gauge("Calls waiting for a slot."))
    breaker: str
    failure_rate: float = field(metadata=gauge("The breaker's failure rate over its window."))
    slow_call_rate: float
    paused_for: float = field(metadata=gauge("Seconds left of a slow-down in force."))
    outcomes: dict[str, int] = field(default_factory=dict)
    latency_p50: float | None = None
    latency_p99: float | None = None
    latency_buckets: list[int] = field(default_factory=list)
    latency_sum: float = 0.0
    #: The rate learnt from slow-downs (None: no limit learnt yet, or not learning).
    learnt_rate: float | None = None
