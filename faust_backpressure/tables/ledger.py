"""The owner's accounting of one shared bucket: refill, leases, fair share, idempotency.

Pure: no Faust, no I/O; ``now`` (owner wall-clock seconds) is passed in. The Faust agent loads a
:class:`LimiterLedger` from the table, calls :meth:`handle_lease` / :meth:`apply_command`, and
writes :meth:`to_record` back. Invariant: ``tokens + outstanding <= burst`` at all times, which is
what bounds admissions by ``rate * t + burst`` (see ``docs/distributed.md``).

The record is small and does not grow with the request rate: per worker its demand, leases and
its *last* request (id, ``seq`` and recorded grant). A worker has at most one request in flight
per limiter and numbers them, so a lower ``seq`` than the last one is a superseded request: it
is never answered, and the last one is answered with its recorded grant.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from faust_backpressure.limiters.bucket import EPSILON, refill, small_burst
from faust_backpressure.tables.fairshare import max_min_fair
from faust_backpressure.wire.limiter_records import Ack, Command, Grant, LeaseRequest, LimiterConfig

__all__ = ["LedgerStats", "LimiterLedger"]

#: Demand reported by a worker whose ``acquire()`` callers queue: "as much as you can give".
SATURATED = 1e12
#: A busy owner grants leases up to this many configured TTLs long (their length does not
#: enter the bound: an overloaded owner makes them long so that it is asked less often).
RATE_TTL_FACTOR = 16.0
#: ... and stretches the lease TTL up to this factor.
MAX_STRETCH = 8.0
#: The longest pause a busy owner asks of a worker between an answer and its next request
#: (the wire's range for ``retry_after``; see ``OwnerLoad.pause``).
MAX_PAUSE = 3600.0
#: A worker's share is computed from its declared demand times this.
RATE_HEADROOM = 1.25
#: A worker may hold ``BURST_SECONDS`` of its share unspent, and at least this many permits,
#: so a caller that polls less often than the share refills one permit still gets the whole
#: share (a 2-permit cap tolerates ticks up to 2 permits apart).
MIN_CAP = 2.0
#: Suffix of the id of a rate lease's tail (what it still reserves until its holder has
#: read the grant that replaced it).
_TAIL = "~"


@dataclass(slots=True)
class LedgerStats:
    """Counters of a limiter's ledger on its owner: requests, grants, denials, rejected records."""

    requests: int = 0
    grants: int = 0
    granted: int = 0
    denied: int = 0
    retries: int = 0
    rejected: int = 0
    stale: int = 0
    commands: int = 0
    superseded: int = 0
    late: int = 0


class _Lease(NamedTuple):
    """A rate lease not yet expired (stored as a JSON list): tokens leased to a worker,
    ``share`` permits/s of the rate and a local burst of ``cap`` permits."""

    lease_id: str
    outstanding: float
    expires: float
    share: float
    cap: float

    @property
    def held(self) -> float:
        """What its holder may still spend without new grants: its tokens, or (a rate
        lease refills its holder's level up to ``cap``, never above what it already has) its
        cap, whichever is larger."""
        return self.outstanding if self.outstanding > self.cap else self.cap


class _GrantRecord(NamedTuple):
    """A worker's last answered request, to answer its retry the same (a JSON list)."""

    at: float
    lease_id: str
    tokens: int
    renews: str | None
    retry_after: float
    epoch: int
    rate: float
    burst: float
    ttl: float
    share: float
    share_cap: float


@dataclass(slots=True)
class _Worker:
    demand: float
    seen: float
    leases: list[_Lease] = field(default_factory=list)
    last_seq: int = -1  # the worker's last request: its seq, id and recorded grant
    last_id: str | None = None
    last: _GrantRecord | None = None

    def to_list(self) -> list[Any]:
        return [self.demand, self.seen, self.leases, self.last_seq, self.last_id, self.last]

    @classmethod
    def from_list(cls, raw: list[Any]) -> _Worker:
        demand, seen, leases, last_seq, last_id, last = raw
        worker = cls(demand, seen, [_Lease(*lease) for lease in leases])
        worker.last_seq, worker.last_id = last_seq, last_id
        worker.last = None if last is None else _GrantRecord(*last)
        return worker


class LimiterLedger:
    """State and rules of one limiter id, owned by exactly one worker at a time."""

    __slots__ = ("burst", "commands", "epoch", "initial_tokens", "lease_ttl", "limiter_id",
                 "max_clock_skew", "per_consumer", "rate", "refilled_at", "seq",
                 "stats", "tokens", "workers")

    def __init__(self, limiter_id: str, config: LimiterConfig, now: float, *,
                 max_clock_skew: float = 10.0) -> None:
        self.limiter_id = limiter_id
        self.rate = config.rate
        self.burst = config.burst
        self.lease_ttl = config.lease_ttl
        self.per_consumer = config.per_consumer
        self.initial_tokens = config.burst if config.initial_tokens is None \
            else config.initial_tokens
        self.max_clock_skew = max_clock_skew
        self.epoch = 0
        self.tokens = self.initial_tokens
        self.refilled_at = now
        self.seq = 0
        self.workers: dict[str, _Worker] = {}
        self.commands: dict[str, float] = {}
        self.stats = LedgerStats()

    # -- derived values -------------------------------------------------------------------

    @property
    def demand_window(self) -> float:
        return 3.0 * self.lease_ttl

    @property
    def max_rate_ttl(self) -> float:
        """The longest rate lease a busy owner grants (``RATE_TTL_FACTOR`` configured TTLs)."""
        return RATE_TTL_FACTOR * self.lease_ttl

    @property
    def retention(self) -> float:
        """How long a worker's last request (and command ids) are kept after it was seen:
        longer than any retry of it can be accepted (see :meth:`is_stale`)."""
        return self.max_rate_ttl + 2.0 * self.max_clock_skew + 1.0

    def _active(self, now: float) -> dict[str, float]:
        return {wid: w.demand for wid, w in self.workers.items()
                if now - w.seen <= self.demand_window}

    def _scale(self, now: float) -> float:
        return float(max(1, len(self._active(now)))) if self.per_consumer else 1.0

    def effective_rate(self, now: float) -> float:
        return self.rate * self._scale(now)

    def effective_burst(self, now: float) -> float:
        return self.burst * self._scale(now)

    def outstanding(self) -> float:
        """What the workers may still spend of their leases (``L`` in docs/distributed.md)."""
        return float(sum(lease.held for w in self.workers.values() for lease in w.leases))

    def reserved(self) -> float:
        """The rate (permits/s) given away as rate leases: the bucket refills at the rest."""
        return float(sum(lease.share for w in self.workers.values() for lease in w.leases))

    # -- time -----------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Expire leases in expiry order and refill up to ``burst - outstanding`` in between."""
        rate, burst = self.effective_rate(now), self.effective_burst(now)
        expiring = sorted((lease.expires, id(lease), lease, w) for w in self.workers.values()
                          for lease in w.leases if lease.expires <= now)
        held, reserved = self.outstanding(), self.reserved()
        t = self.refilled_at
        tokens = self.tokens
        for expires, _, lease, worker in expiring:
            if expires > t:
                tokens = refill(tokens, max(0.0, rate - reserved), expires - t, burst - held)
                t = expires
            held -= lease.held
            reserved -= lease.share
            worker.leases.remove(lease)
        if now > t:  # a new owner whose clock is behind does not refill backwards
            tokens = refill(tokens, max(0.0, rate - reserved), now - t, burst - held)
            t = now
        self.tokens = min(tokens, burst - held)
        self.refilled_at = t
        self._prune(now)

    def _prune(self, now: float) -> None:
        keep = self.retention
        if self.commands:
            self.commands = {k: v for k, v in self.commands.items() if now - v <= keep}
        # A worker's entry (and so its last request id) outlives any retry of that request.
        keep = max(keep, self.demand_window)
        for wid in [wid for wid, w in self.workers.items()
                    if not w.leases and now - w.seen > keep]:
            del self.workers[wid]

    # -- requests -------------------------------------------------------------------------

    def is_stale(self, sent_at: float, now: float) -> bool:
        skew = self.max_clock_skew
        return now - sent_at > self.max_rate_ttl + skew or sent_at - now > skew

    def handle_lease(self, req: LeaseRequest, now: float, *, stretch: float = 1.0,
                     delay: float = 0.0, pause: float = 0.0) -> Grant | None:
        """Grant a rate lease (possibly no share and 0 tokens) or ``None`` for a stale or
        superseded request; a retry of the worker's last request returns its recorded grant,
        never a new one.

        ``stretch`` (>= 1), ``delay`` and ``pause`` (s) come from a busy owner (see
        ``OwnerLoad``): the lease grows with them, so each worker asks less often, and past
        the longest lease the worker waits ``pause`` after the answer before it asks again."""
        if pause > 0.0 and now - req.sent_at > self.max_rate_ttl:
            # Paused, its sender has given it up (by its clock, unless it lags ours): skipped
            # at once, no lease reserved for nobody (see OwnerLoad.pause).
            self.stats.late += 1
            return None
        self.advance(now)
        worker = self.workers.get(req.worker_id)
        if worker is not None and req.seq <= worker.last_seq:
            if req.seq == worker.last_seq and req.request_id == worker.last_id \
                    and worker.last is not None:
                self.stats.retries += 1
                return self._grant_from(req, worker.last)
            self.stats.superseded += 1  # the worker has moved on: nobody waits for it
            return None
        if self.is_stale(req.sent_at, now):
            self.stats.stale += 1
            return None
        self.stats.requests += 1
        # New to this limiter (or back after its share was given up): nobody else may be
        # known yet, so its first lease is short.
        newcomer = worker is None or worker.last is None or not self._wants_share(worker, now)
        if worker is None:
            worker = self.workers[req.worker_id] = _Worker(req.demand, now)
        worker.demand, worker.seen = min(req.demand, SATURATED), now
        # Paused, every lease is the longest: a pair asks once a pause (see OwnerLoad).
        record = self._rate_lease(req, worker, now, stretch, delay,
                                  newcomer=newcomer and not pause, pause=pause)
        worker.last_seq, worker.last_id, worker.last = req.seq, req.request_id, record
        return self._grant_from(req, record)

    def _rate_lease(self, req: LeaseRequest, worker: _Worker, now: float, stretch: float,
                    delay: float, *, newcomer: bool, pause: float = 0.0) -> _GrantRecord:
        """A rate lease: ``share`` permits/s of the rate for the lease's life (the bucket
        refills at the rest), a local burst ``cap``, and tokens from the bucket if it has
        any (after idle time: the configured burst). Renewals are needed about once a lease
        life, however short the burst is, which is what lets one owner serve many ids."""
        rate = self.effective_rate(now)
        wait = max(0.0, delay, min(req.rtt, self.max_rate_ttl))
        ttl = self.max_rate_ttl if pause > 0.0 else self._ttl(stretch, wait, newcomer=newcomer)
        if req.lease_id is None:
            # The worker holds no valid lease (its view of the last one ends before ours):
            # its leases' share goes back to the pool now, not at our later expiry, which
            # would take it from this very grant's share.
            worker.leases = []
        # A worker that let its last lease expire (and has not asked since) wants no share
        # now: the others may have it at their next renewal.
        active = {wid: d for wid, d in self._active(now).items()
                  if self._wants_share(self.workers[wid], now)}
        # A little headroom over the declared demand, so a growing worker is not held at
        # what it used before; what nobody takes stays in the bucket as tokens.
        fair = max_min_fair(rate, {wid: d * RATE_HEADROOM for wid, d in active.items()})
        old = None
        for lease in worker.leases:
            if lease.lease_id == req.lease_id:
                old = lease
        # The worker has read the answer to its previous request: a superseded lease's tail
        # (see _new_lease) is no longer needed.
        worker.leases = [lease for lease in worker.leases
                         if lease is not old and not lease.lease_id.endswith(_TAIL)]
        lease_id, tokens, renews, share, cap = self._new_lease(
            req, worker, old, fair[req.worker_id], len(active), now, ttl)
        if tokens > 0 or share > 0:
            self.stats.grants += 1
            self.stats.granted += tokens
        else:
            self.stats.denied += 1
        # Renew early enough that the answer (``wait`` each way) is back before expiry; a
        # worker short of its fair share asks sooner (others' old leases are expiring).
        retry_after = max(0.5 * ttl, ttl - max(0.25 * ttl, 3.0 * wait))
        mine = fair[req.worker_id]
        if share < 0.95 * mine:
            retry_after = min(retry_after, 0.25 * ttl)
        elif (mine >= 0.999 * RATE_HEADROOM * active[req.worker_id]
              and (old is None or req.demand >= old.share)
              and (self.tokens >= 1.0 or sum(fair.values()) < rate - EPSILON)):
            # Its share is what it asked for, its demand is new or outgrew the last share,
            # and there is rate or burst to spare: come back soon, so the share grows x1.25
            # a time and a burst after idle time gets the bucket's tokens at once.
            retry_after = min(retry_after, max(0.1 * ttl, 2.0 * wait))
        if pause > 0.0:
            retry_after = self._paused(retry_after, req, now, pause)
        return _GrantRecord(now, lease_id, tokens, renews, retry_after, self.epoch,
                            self.rate, self.burst, ttl, round(share, 6), cap)

    def _paused(self, retry_after: float, req: LeaseRequest, now: float, pause: float) -> float:
        """Asked more often than it can answer (``OwnerLoad.pause``): the next request comes
        ``pause`` after this answer (the request's age is by the sender's clock: off by the
        skew at most), spread +-25% by the request id, so that workers answered together
        (after a start or an outage) do not all come back together."""
        age = min(max(0.0, now - req.sent_at), self.max_rate_ttl)
        pause *= 0.75 + 0.5 * zlib.crc32(req.request_id.encode()) / 2.0**32
        return min(MAX_PAUSE, max(retry_after, age + pause))

    def _ttl(self, stretch: float, wait: float, *, newcomer: bool) -> float:
        """Overloaded (the queue delay past what even the stretch absorbs), the lease grows
        with the delay: workers then ask less often, so the queue shrinks again instead of
        filling with requests whose answers would come too late (the collapse)."""
        stretch = min(max(1.0, stretch), MAX_STRETCH)
        ttl = min(self.max_rate_ttl, self.lease_ttl * stretch + 4.0 * wait)
        if newcomer:
            # A first lease is short: the first worker to ask gets the whole rate (nobody
            # else is known yet), and the workers that ask next wait for it to expire. Keyed
            # on the worker, not the lease id: a late renewal must not make it short for ever.
            ttl = min(ttl, 0.25 * self.lease_ttl + 4.0 * wait)
        return ttl

    def _new_lease(self, req: LeaseRequest, worker: _Worker, old: _Lease | None,
                   fair: float, active: int, now: float, ttl: float
                   ) -> tuple[str, int, str | None, float, float]:
        """Record the new lease (and the old one's tail): ``(lease_id, tokens, renews, share,
        cap)``, the share cut to what the other leases leave of the rate."""
        rate, burst = self.effective_rate(now), self.effective_burst(now)
        share = max(0.0, min(fair, rate - self.reserved()))
        held_before = self.outstanding()
        carried, renews = 0.0, None
        if old is not None:
            # What it had at the request, and what its share may have refilled since (up to
            # the old cap): its level when it reads this grant, carried into the new lease.
            carried, renews = min(max(req.unspent, old.cap), old.held), old.lease_id
        want = min(max(0.0, req.requested - carried), burst - carried)
        tokens = max(0, math.floor(min(want, self.tokens / max(1, active)) + EPSILON))
        cap = small_burst(share, MIN_CAP) if share > 0 else 0.0
        # The new lease may hold max(carried + tokens, cap): what it adds to L comes from
        # the bucket (B + L <= burst); the cap shrinks first if the bucket is short.
        room = burst - held_before - (self.tokens - tokens)
        cap = min(cap, max(room, carried + tokens))
        fit = min(req.largest, self.burst) if share > 0 else 0.0
        if cap < fit:
            # The worker's largest call (a batch) must fit, or it never succeeds at once:
            # that much of the cap may come out of the bucket's tokens (cut to B + L <= b below).
            cap = min(fit, max(burst - held_before, carried + tokens))
        if share > 0 and cap < 1.0:
            share, cap = 0.0, 0.0  # no room for even one permit: tokens only, ask again soon
        self.tokens -= tokens
        self.seq += 1
        lease_id = f"{self.seq}"
        if carried + tokens > 0 or share > 0:
            worker.leases.append(_Lease(lease_id, carried + tokens, now + ttl, share, cap))
        else:
            renews = None
        if old is not None:
            # Until the worker reads this grant it still spends the old lease (its level up
            # to max(unspent, old cap), refilled at the old share): what that needs beyond
            # the new lease stays reserved until the old one expires.
            tail_share = max(0.0, old.share - share)
            tail_cap = max(0.0, old.cap - max(carried + tokens, cap))
            if tail_share > 0 or tail_cap > 0:
                worker.leases.append(_Lease(old.lease_id + _TAIL, 0.0, old.expires,
                                            tail_share, tail_cap))
        self.tokens = min(self.tokens, burst - self.outstanding())
        return lease_id, tokens, renews, share, cap

    def _wants_share(self, worker: _Worker, now: float) -> bool:
        if worker.leases:
            return True
        last = worker.last.ttl if worker.last is not None else self.lease_ttl
        return now - worker.seen <= max(self.lease_ttl, last)

    def _grant_from(self, req: LeaseRequest, rec: _GrantRecord) -> Grant:
        return Grant(request_id=req.request_id, limiter_id=self.limiter_id,
                     worker_id=req.worker_id, lease_id=rec.lease_id, tokens=rec.tokens,
                     ttl=rec.ttl, renews=rec.renews, retry_after=rec.retry_after,
                     epoch=rec.epoch, rate=rec.rate, burst=rec.burst, share=rec.share,
                     share_cap=rec.share_cap)

    def apply_command(self, cmd: Command, now: float) -> Ack | None:
        """Apply ``update_rate`` (and its burst) / ``reset`` once per id; ``None`` if stale."""
        self.advance(now)
        if cmd.command_id not in self.commands:
            if self.is_stale(cmd.sent_at, now):
                self.stats.stale += 1
                return None
            self.commands[cmd.command_id] = now
            if cmd.type == "update_rate" and cmd.rate is not None:
                self._cut_shares(min(1.0, cmd.rate / self.rate))
                self.rate, self.burst = cmd.rate, cmd.burst or self.burst
            elif cmd.type == "reset":
                self.tokens, self.stats = self.initial_tokens, LedgerStats()
            room = self.effective_burst(now) - self.outstanding()  # B + L <= a new burst too
            self.tokens = max(0.0, min(self.tokens, room))
            self.epoch += 1
            self.stats.commands += 1
        return Ack(command_id=cmd.command_id, limiter_id=self.limiter_id,
                   worker_id=cmd.worker_id, epoch=self.epoch, rate=self.rate)

    def _cut_shares(self, ratio: float) -> None:
        """A lower rate cuts the shares reserved alike (a worker that sets it cuts its own at
        once, the others at their next grant): kept, they left the renewals nothing."""
        for w in self.workers.values():
            w.leases = [_Lease(i, n, end, share * ratio, cap) for i, n, end, share, cap in w.leases]

    def reject(self) -> None:
        self.stats.rejected += 1

    # -- persistence ----------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        return {
            "limiter_id": self.limiter_id, "rate": self.rate, "burst": self.burst,
            "lease_ttl": self.lease_ttl, "per_consumer": self.per_consumer,
            "initial_tokens": self.initial_tokens, "max_clock_skew": self.max_clock_skew,
            "epoch": self.epoch, "tokens": self.tokens, "refilled_at": self.refilled_at,
            "seq": self.seq,
            "workers": {wid: w.to_list() for wid, w in self.workers.items()},
            "commands": self.commands,
            "stats": {name: getattr(self.stats, name) for name in LedgerStats.__slots__},
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LimiterLedger:
        config = LimiterConfig(**{f.name: record[f.name] for f in fields(LimiterConfig)})
        ledger = cls(record["limiter_id"], config, record["refilled_at"],
                     max_clock_skew=record["max_clock_skew"])
        ledger.epoch = record["epoch"]
        ledger.tokens = record["tokens"]
        ledger.seq = record["seq"]
        ledger.workers = {wid: _Worker.from_list(raw) for wid, raw in record["workers"].items()}
        ledger.commands = dict(record["commands"])
        ledger.stats = LedgerStats(**record["stats"])
        return ledger
