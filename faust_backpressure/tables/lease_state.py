"""What a worker's distributed limiter (``lease.py``) keeps besides its lease: its wire
counters, the request in flight and the commands not acknowledged yet."""

from __future__ import annotations

from dataclasses import dataclass

from faust_backpressure.wire.limiter_records import Command, LeaseRequest

__all__ = ["Inflight", "LeaseCounters", "PendingCommand"]


@dataclass(slots=True)
class LeaseCounters:
    """What the worker did on the wire (for benchmarks and debugging)."""

    requests: int = 0
    retries: int = 0
    abandoned: int = 0
    grants: int = 0
    granted_tokens: int = 0
    expired_tokens: float = 0.0
    ignored_replies: int = 0
    #: Permits admitted from the safe-capacity fallback while the owner was unreachable.
    fallback_admitted: int = 0
    #: Grants cut to the limiter's burst or the longest lease TTL (forged, or a confused owner).
    capped_grants: int = 0


@dataclass(slots=True)
class PendingCommand:
    """A rate change or reset not acknowledged yet, and when it was last sent."""

    command: Command
    last_sent: float


@dataclass(slots=True)
class Inflight:
    request: LeaseRequest
    first_sent: float
    last_sent: float
    sends: int = 1
