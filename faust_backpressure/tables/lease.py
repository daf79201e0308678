"""The worker side of a distributed limiter: spend a leased share in memory, renew it ahead.

:class:`DistributedRateLimiter` is pure (injectable clocks, no I/O): the Faust layer calls
:meth:`~DistributedRateLimiter.poll` to learn what to send and feeds answers back through
:meth:`~DistributedRateLimiter.on_grant` / :meth:`~DistributedRateLimiter.on_ack`. The hot path,
``try_acquire(1)`` with tokens in the lease, touches nothing but a few attributes.

A lease is a share of the rate for the lease's life: the lease's level (tokens granted from the
shared bucket, if any) refills at the share up to a small cap; only the slow path refills it,
the hot path just spends. See ``docs/distributed.md``, *Rate leases*.
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from collections.abc import Callable

from faust_backpressure.config.validation import check_number
from faust_backpressure.limiters.base import Clock, LimiterBase, check_rate
from faust_backpressure.limiters.bucket import Bucket
from faust_backpressure.tables.fallback import SafeCapacity
from faust_backpressure.tables.lease_state import (
    Inflight,
    LeaseCounters,
    OwnerHeard,
    PendingCommand,
    checked_share,
    give_up_wait,
    resend_due,
)
from faust_backpressure.tables.ledger import RATE_TTL_FACTOR, SATURATED
from faust_backpressure.wire.limiter_records import Ack, Command, Grant, LeaseRequest, LimiterConfig

__all__ = ["DistributedRateLimiter", "LeaseCounters"]

_INF = math.inf


class DistributedRateLimiter(LimiterBase):
    """One shared token bucket per ``rate_limiter_id``; this object is one worker's view of it.

    Implements :class:`~faust_backpressure.limiters.RateLimitingStrategy`. Permits come from a
    local rate lease granted by the bucket's owner; see ``docs/distributed.md``.
    ``clock`` is monotonic (leases), ``wall_clock`` is only used for ``sent_at`` stamps.
    """

    __slots__ = ("_asking_since", "_attempted", "_burst", "_config", "_counters", "_demand_since",
                 "_epoch", "_fallback", "_given_up", "_inflight", "_largest", "_largest_before",
                 "_lease", "_lease_expiry", "_lease_id", "_low_water", "_next_request_at",
                 "_pending", "_rate", "_rtt", "_seq", "_wakeup", "_wall", "_wanted", "owner_heard",
                 "rate_limiter_id", "request_timeout", "storage_backend", "worker_id")

    def __init__(self, rate_limiter_id: str, tokens_per_second: float, burst_capacity: float, *,
                 worker_id: str | None = None, lease_ttl: float = 2.0,
                 request_timeout: float | None = None, per_consumer: bool = False,
                 initial_tokens: float | None = None, storage_backend: str = "kafka-table",
                 clock: Clock = time.monotonic, wall_clock: Clock = time.time,
                 utilization_window: float = 1.0, wakeup: Callable[[], None] | None = None,
                 fallback_rate: float | None = None) -> None:
        """``wakeup`` is called when the limiter has something to send (its channel's
        keeper wakes); ``poll`` returns it. ``fallback_rate`` (off by default): permits/s this
        worker may admit on its own while the owner cannot be reached (see ``fallback.py``)."""
        self._config = LimiterConfig(
            rate=check_rate("tokens_per_second", tokens_per_second),
            burst=float(burst_capacity), lease_ttl=check_rate("lease_ttl", lease_ttl),
            per_consumer=per_consumer, initial_tokens=initial_tokens)
        if self._config.burst < 1:
            raise ValueError(f"burst_capacity must be >= 1, got {burst_capacity!r}")
        self.rate_limiter_id = rate_limiter_id
        self.worker_id = worker_id or uuid.uuid4().hex
        self.request_timeout = request_timeout or min(0.5, lease_ttl / 4.0)
        self.storage_backend = storage_backend
        self._wakeup = wakeup
        self._wall = wall_clock
        self._rate = self._config.rate
        self._burst = self._config.burst
        self._epoch = -1
        # The lease: its level refills at the share (``rate``) up to the local burst
        # (``capacity``, never cutting a larger grant) until ``_lease_expiry``.
        self._lease = Bucket(0.0, 0.0, 0.0, 0.0)
        self._lease_expiry = -_INF
        self._lease_id: str | None = None
        self._low_water = 1.0
        self._inflight: Inflight | None = None
        self._next_request_at = -_INF
        self._pending: dict[str, PendingCommand] = {}  # by command_id
        self._seq = itertools.count(1)
        self._attempted = 0
        # The most permits one call asked for since the last request, and before it: a
        # batch refused at once is then taken a permit at a time, which must not hide it.
        self._largest = self._largest_before = 0
        self._wanted = False
        self._rtt = 0.01
        self._counters = LeaseCounters()
        self._fallback = None if fallback_rate is None else SafeCapacity(fallback_rate)
        self._asking_since: float | None = None  # first send of the oldest unanswered request
        self._given_up = 0  # requests given up unanswered in a row
        #: Shared with this worker's limiters of the same owner (set by the channel).
        self.owner_heard: OwnerHeard | None = None
        super().__init__(clock, utilization_window)
        self._demand_since = clock()

    # -- hot path -------------------------------------------------------------------------

    def try_acquire(self, permits: int = 1) -> bool:
        """Spend ``permits`` of the local lease now or refuse now (never blocks, no I/O)."""
        now = self._clock()
        if permits == 1 and now < self._fast_until:
            lease = self._lease
            tokens = lease.level
            if tokens >= 1.0 and now < self._lease_expiry:
                self._attempted += 1
                lease.level = tokens = tokens - 1.0
                self._granted += 1
                if tokens < self._low_water and not self._wanted:
                    self._want()
                return True
            if self._admit(1, now):
                self._granted += 1
                return True
            self._denied += 1
            return False
        return self._try_slow(permits, now)

    def _want(self) -> None:
        self._wanted = True
        if self._wakeup is not None:
            self._wakeup()

    def _accrue(self, now: float) -> None:
        """Refill the lease's level at its share up to its cap, until the lease expires. Lazy
        but exact as a bound: the hot path only spends, so what it spent between two refills
        was there at the first, and a level over the cap never refills."""
        lease = self._lease
        if lease.rate > 0.0:
            until = now if now < self._lease_expiry else self._lease_expiry
            if until > lease.at:
                lease.refill(until)

    def _admit(self, permits: int, now: float) -> bool:
        self._attempted += permits
        if permits > self._largest:
            self._largest = permits
        self._accrue(now)
        lease = self._lease
        tokens = lease.level
        if tokens >= permits and now < self._lease_expiry:
            lease.level = tokens = tokens - permits
            if tokens < self._low_water and not self._wanted:
                self._want()
            return True
        if not self._wanted:
            self._want()
        fallback = self._fallback
        if fallback is not None:
            since = self._outage_since(now)
            if since is not None and now >= since and fallback.take(permits, since, now):
                self._counters.fallback_admitted += permits
                return True
        return False

    def _outage_since(self, now: float) -> float | None:
        """When the safe-capacity fallback starts (or started): the retry timeout after the
        later of the lease's expiry and the first unanswered send; ``None``: not while a
        lease is valid or no request is unanswered."""
        asking = self._asking_since
        if asking is None or now < self._lease_expiry:
            return None
        return max(asking, self._lease_expiry) + max(self.request_timeout, 3.0 * self._rtt)

    def time_until_available(self, permits: int = 1) -> float:
        """Seconds until ``permits`` could be taken here; asking for tokens the lease lacks is
        demand (a multi-tier limiter asks every tier before it takes from any), so it also
        makes the worker ask the owner for a lease, as a refused ``try_acquire`` does."""
        delay = super().time_until_available(permits)
        if delay > 0.0:
            self._attempted += permits
            self._largest = max(self._largest, permits)
            # Waiting for the share to refill the level is not a reason to ask the owner; a
            # short lease is.
            if not self._wanted and (self._lease.level < max(permits, self._low_water)
                                     or self._clock() >= self._lease_expiry):
                self._want()
        return delay

    def _delay(self, permits: float, now: float) -> float:
        lease = self._lease
        share = lease.rate
        if share > 0.0 and now < self._lease_expiry:
            self._accrue(now)
            level = lease.level
            if level < permits <= lease.capacity:
                wait = (permits - level) / share
                if now + wait < self._lease_expiry:
                    return wait  # the share refills it then (one timer, no polling)
        if lease.level >= permits and now < self._lease_expiry:
            return 0.0
        # A grant wakes waiters (on_grant -> _notify): the timer is only a fallback, set to
        # when a retry or the next request would be sent, not a polling interval.
        inflight = self._inflight
        start = inflight.last_sent if inflight is not None else max(now, self._next_request_at)
        delay = max(0.001, start + self.request_timeout - now)
        if self._fallback is not None:
            since = self._outage_since(now)
            if since is not None:
                delay = min(delay, max(0.001, self._fallback.delay(permits, since, now)))
        return delay

    def _max_permits(self) -> float:
        return self._burst

    def _tokens(self) -> float:
        return self.current_tokens

    # -- what to send ---------------------------------------------------------------------

    def _needs_lease(self) -> bool:
        """With demand, renew when the owner said (``retry_after``, checked by ``poll``)."""
        return bool(self._attempted or self._queue)

    def poll(self, now: float | None = None) -> LeaseRequest | Command | None:
        """The message to send now, if any: a command, a retry or a new lease request."""
        now = self._clock() if now is None else now
        for entry in self._pending.values():
            if now - entry.last_sent >= self.request_timeout:
                entry.last_sent = now
                return entry.command
        inflight = self._inflight
        if inflight is not None:
            # An answer may be worth having for the longest lease: the request stays in flight
            # (one per limiter: a slow owner is not sent new requests on top of old ones).
            if now < inflight.first_sent + self._max_ttl:
                if now < self._resend_due(inflight):
                    return None
                inflight.last_sent = now
                inflight.sends += 1
                self._counters.retries += 1
                return inflight.request
            self._inflight = None  # a grant now would already be expired: ask later
            self._counters.abandoned += 1
            self._given_up += 1
            self._next_request_at = now + give_up_wait(self._given_up, inflight,
                                                       self.owner_heard, self._max_ttl)
        if now < self._next_request_at:
            return None
        if not self._needs_lease():
            self._wanted = False
            return None
        return self._new_request(now)

    @property
    def _max_ttl(self) -> float:
        """The longest lease an owner grants (and so how long an answer is worth waiting)."""
        return RATE_TTL_FACTOR * self._config.lease_ttl

    def _resend_due(self, inflight: Inflight) -> float:
        """When to resend (see ``resend_due``): the retry timeout is at least the timeout, a
        lease TTL and three usual answer times, x4 with each resend."""
        base = max(self.request_timeout, 3.0 * self._rtt, self._config.lease_ttl)
        timeout = float(base * 4.0 ** min(inflight.sends - 1, 3))
        return resend_due(inflight, self.owner_heard, timeout, self._max_ttl)

    def _new_request(self, now: float) -> LeaseRequest:
        elapsed = max(now - self._demand_since, 1e-3)
        demand = SATURATED if self._queue else min(SATURATED, self._attempted / elapsed)
        if valid := now < self._lease_expiry:
            self._accrue(now)
        unspent = self._lease.level if valid else 0.0
        requested = max(1, math.ceil(min(self._burst, demand * self._config.lease_ttl)))
        seq = next(self._seq)
        request = LeaseRequest(
            request_id=f"{self.worker_id}:{self.rate_limiter_id}:{seq}", seq=seq,
            limiter_id=self.rate_limiter_id, worker_id=self.worker_id, demand=demand,
            requested=requested, sent_at=self._wall(),
            lease_id=self._lease_id if valid else None, unspent=unspent, config=self._config,
            rtt=round(self._rtt, 4), largest=max(self._largest, self._largest_before))
        self._attempted = 0
        self._largest_before, self._largest = self._largest, 0
        self._demand_since = now
        self._wanted = False
        self._inflight = Inflight(request, now, now)
        self._asking_since = now if self._asking_since is None else self._asking_since
        self._counters.requests += 1
        return request

    def next_poll_in(self, now: float | None = None) -> float:
        """Seconds until :meth:`poll` may have something to send (without new demand)."""
        now = self._clock() if now is None else now
        due = [entry.last_sent + self.request_timeout for entry in self._pending.values()]
        inflight = self._inflight
        if inflight is not None:
            due.append(min(self._resend_due(inflight), inflight.first_sent + self._max_ttl))
        elif self._wanted or self._queue or (self._attempted and now < self._lease_expiry):
            due.append(self._next_request_at)
        return max(0.0, min(due, default=now + 1.0) - now)

    # -- answers --------------------------------------------------------------------------

    def on_grant(self, grant: Grant, now: float | None = None) -> bool:
        """Apply the answer to the request in flight; any other grant is ignored."""
        now = self._clock() if now is None else now
        inflight = self._inflight
        if inflight is None or grant.request_id != inflight.request.request_id:
            self._counters.ignored_replies += 1
            return False
        self._inflight = None
        self._given_up = 0
        if (heard := self.owner_heard) is not None:  # it has read this far
            heard.sent, heard.at = max(heard.sent, inflight.first_sent), now
        lease = self._lease
        carry = 0.0
        if now < self._lease_expiry:
            self._accrue(now)
            if grant.renews is not None and grant.renews == self._lease_id:
                # No more than the request said it had (the owner counted that much), or
                # what the share may have refilled since, up to its cap.
                carry = min(lease.level, max(inflight.request.unspent, lease.capacity))
            else:
                self._counters.expired_tokens += lease.level
        elif lease.level > 0:
            self._counters.expired_tokens += lease.level
        # Checked against what this worker knows of the limiter: without a secret a forged
        # grant could hand it more than a bucket, a lease that never ends, or the share below.
        burst = max(self._burst, self._config.burst)
        granted = min(grant.tokens, math.floor(burst))
        ttl = min(grant.ttl, self._max_ttl)
        share = checked_share(grant, self._rate, self._config, lowering=bool(self._pending))
        if granted < grant.tokens or ttl < grant.ttl:
            self._counters.capped_grants += 1
        # The lease runs from our first send: never later than the owner's view of it.
        expires = inflight.first_sent + ttl
        live = now < expires
        lease.fill(carry + granted if live else 0.0, now)
        lease.rate = share if live else 0.0
        lease.capacity = min(grant.share_cap, burst)
        self._lease_id = grant.lease_id
        self._lease_expiry = expires
        self._low_water = 0.0 if share > 0.0 else 1.0  # the share refills it, no asking
        self._asking_since = None  # the owner answered: no fallback
        # The owner answers the first copy it reads: the answer time is from the first send.
        self._rtt = rtt = 0.8 * self._rtt + 0.2 * (now - inflight.first_sent)
        # Due from the first send, as the lease, in time for its answer, unless the owner asks
        # for a pause past the lease (OwnerLoad.pause; <= 1 h on the wire).
        due = inflight.first_sent + grant.retry_after
        self._next_request_at = due if grant.retry_after > ttl else min(due, expires - 2 * rtt)
        self._counters.grants += 1
        self._counters.granted_tokens += granted
        if grant.epoch >= self._epoch and not self._pending:
            self._epoch, self._rate, self._burst = grant.epoch, grant.rate, grant.burst
        self._notify()
        if self._wakeup is not None:
            # The renewal's time is new: the keeper's next poll of this limiter was set while
            # the request was in flight (up to 1 s on), later than a short lease's renewal.
            self._wakeup()
        return True

    def on_ack(self, ack: Ack) -> bool:
        if self._pending.pop(ack.command_id, None) is None:
            self._counters.ignored_replies += 1
            return False
        if ack.epoch >= self._epoch and not self._pending:
            self._epoch, self._rate = ack.epoch, ack.rate
        return True

    def _command(self, kind: str, rate: float | None, burst: float | None = None) -> None:
        command = Command(type=kind, command_id=uuid.uuid4().hex, limiter_id=self.rate_limiter_id,
                          worker_id=self.worker_id, sent_at=self._wall(), rate=rate, burst=burst)
        self._pending[command.command_id] = PendingCommand(command, -_INF)
        if self._wakeup is not None:
            self._wakeup()

    # -- RateLimitingStrategy -------------------------------------------------------------

    @property
    def current_rate_limit(self) -> float:
        """The shared rate as last seen from the owner (or as set here, until acknowledged)."""
        return self._rate

    def update_rate_limit(self, new_rate: float, *, burst: float | None = None) -> None:
        """Change the shared rate (and ``burst``), sent to the owner; a lower one cuts this
        worker's share at once, not a lease later (the others see it in their next lease)."""
        if (old := self._rate) > (rate := check_rate("new_rate", new_rate)):
            self._accrue(self._clock())
            self._lease.rate *= rate / old
        self._rate = rate
        if burst is not None:
            self._burst = check_number("burst", burst, 1.0)
        self._command("update_rate", self._rate, None if burst is None else self._burst)
        self._notify()

    def restart_demand(self) -> None:
        """Calls resume after a pause of the caller's own (a slow-down, an outage): demand is
        measured from now, else the pause reads as less of it and the next share is cut."""
        self._attempted, self._demand_since = 0, self._clock()

    def reset(self) -> None:
        """Refill the shared bucket to its initial tokens and clear counters; rate is kept."""
        self._command("reset", None)
        self._reset_counters(self._clock())
        self._notify()

    @property
    def current_tokens(self) -> float:
        """Tokens left in this worker's lease (0 when expired)."""
        now = self._clock()
        self._accrue(now)
        return self._lease.level if now < self._lease_expiry else 0.0

    @property
    def max_tokens(self) -> float:
        return self._burst

    @property
    def name(self) -> str:
        return self.rate_limiter_id

    @property
    def is_distributed(self) -> bool:
        return True

    @property
    def is_persistent(self) -> bool:
        return True

    @property
    def config(self) -> LimiterConfig:
        return self._config

    @property
    def epoch(self) -> int:
        """Rate epoch last seen from the owner (-1 before the first answer)."""
        return self._epoch

    @property
    def lease_counters(self) -> LeaseCounters:
        return self._counters

    @property
    def lease_expires(self) -> float:
        """When this worker's lease ends, on its monotonic clock (-inf before the first)."""
        return self._lease_expiry
