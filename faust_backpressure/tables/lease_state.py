"""What a worker's distributed limiter (``lease.py``) keeps besides its lease: its wire
counters, the request in flight and the commands not acknowledged yet."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

from faust_backpressure.wire.limiter_records import Command, Grant, LeaseRequest, LimiterConfig

__all__ = ["Inflight", "LeaseCounters", "OwnerHeard", "PendingCommand", "checked_share",
           "give_up_wait", "resend_due"]


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


@dataclass(slots=True)
class OwnerHeard:
    """How far one owner (one partition of the request topic) has read this worker's requests
    (the latest first send of one it answered), when it last answered, and when that partition
    last moved (a rebalance), on the limiters' monotonic clock; shared by the worker's
    limiters of that partition (see :func:`resend_due` and :func:`give_up_wait`)."""

    sent: float = -math.inf
    moved: float = -math.inf
    #: When it last answered one.
    at: float = -math.inf


def resend_due(inflight: Inflight, heard: OwnerHeard | None, timeout: float,
               longest: float) -> float:
    """When to resend a request: after the retry ``timeout``, and (when the channel tells us
    about the owner) only once the owner answered a later request of ours (it reads ours in
    the order we sent them: this one or its reply was lost) or its partition moved since the
    last send (its successor may have skipped it: the offset was committed, the reply lost in
    the crash). Else the request waits in the owner's queue and is given up after the
    ``longest`` lease: a slow owner is not sent copies, each more queue (docs/distributed.md,
    "Beyond the owner's capacity")."""
    if heard is not None and heard.sent <= inflight.last_sent \
            and heard.moved <= inflight.last_sent:
        return inflight.first_sent + longest
    return inflight.last_sent + timeout


def give_up_wait(given_up: int, inflight: Inflight, heard: OwnerHeard | None,
                 longest: float) -> float:
    """How long a worker waits before it asks again after ``given_up`` requests in a row went
    unanswered for the ``longest`` lease while the owner answered others (slow, not gone; a
    gone owner, or a moved partition, is asked again at once): about 1, 3, 7, ... times the
    longest lease (up to an hour), spread by the request id (deterministic, and workers that
    gave up together do not come back together): the owner's queue shrinks until its answers
    (and the pause they carry, ``OwnerLoad.pause``) arrive in time again."""
    first = inflight.first_sent
    if heard is None or heard.at <= first or heard.moved > first:
        return 0.0
    spread = 0.5 + zlib.crc32(inflight.request.request_id.encode()) / 2.0**32
    return min(3600.0, longest * (2.0 ** min(given_up, 12) - 1.0) * spread)


def checked_share(grant: Grant, rate: float, config: LimiterConfig, *, lowering: bool) -> float:
    """A grant's share as this worker may spend it: at most the rate (per consumer: any
    worker's), and, granted before the owner applied a lower ``rate`` this worker sent
    (``lowering``: a change not acknowledged yet), that rate's part of it."""
    share = min(grant.share, max(rate, config.rate) * (1e6 if config.per_consumer else 1.0))
    if lowering and grant.rate > rate:
        share *= rate / grant.rate
    return share
