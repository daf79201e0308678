"""The owner's accounting of one shared bucket: refill, leases, fair share, idempotency.

Pure: no Faust, no I/O; ``now`` (owner wall-clock seconds) is passed in. The Faust agent loads a
:class:`LimiterLedger` from the table, calls :meth:`handle_lease` / :meth:`apply_command`, and
writes :meth:`to_record` back. Invariant: ``tokens + outstanding <= burst`` at all times, which is
what bounds admissions by ``rate * t + burst`` (see ``docs/distributed.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from faust_backpressure.tables.fairshare import max_min_fair
from faust_backpressure.tables.messages import Ack, Command, Grant, LeaseRequest, LimiterConfig

__all__ = ["LedgerStats", "LimiterLedger"]

#: Demand reported by a worker whose ``acquire()`` callers queue: "as much as you can give".
SATURATED = 1e12


@dataclass(slots=True)
class LedgerStats:
    requests: int = 0
    grants: int = 0
    granted: int = 0
    denied: int = 0
    retries: int = 0
    rejected: int = 0
    stale: int = 0
    commands: int = 0


class _Lease(NamedTuple):
    """Tokens a worker holds until ``expires`` (persisted as a JSON list in this order)."""

    lease_id: str
    outstanding: float
    expires: float


class _GrantRecord(NamedTuple):
    """What was granted for one request id, so that a retry gets the same answer (persisted
    as a JSON list in this order)."""

    at: float
    lease_id: str
    tokens: int
    renews: str | None
    retry_after: float
    epoch: int
    rate: float
    burst: float
    ttl: float


@dataclass(slots=True)
class _Worker:
    demand: float
    seen: float
    leases: list[_Lease] = field(default_factory=list)


class LimiterLedger:
    """State and rules of one limiter id, owned by exactly one worker at a time."""

    __slots__ = ("burst", "commands", "epoch", "initial_tokens", "lease_ttl", "limiter_id",
                 "max_clock_skew", "per_consumer", "rate", "refilled_at", "requests", "seq",
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
        self.requests: dict[str, _GrantRecord] = {}  # by request_id
        self.commands: dict[str, float] = {}
        self.stats = LedgerStats()

    # -- derived values -------------------------------------------------------------------

    @property
    def demand_window(self) -> float:
        return 3.0 * self.lease_ttl

    @property
    def retention(self) -> float:
        """How long request ids are kept: longer than any retry can be accepted."""
        return self.lease_ttl + 2.0 * self.max_clock_skew + 1.0

    def _active(self, now: float) -> dict[str, float]:
        window = self.demand_window
        return {wid: w.demand for wid, w in self.workers.items() if now - w.seen <= window}

    def _scale(self, now: float) -> float:
        return float(max(1, len(self._active(now)))) if self.per_consumer else 1.0

    def effective_rate(self, now: float) -> float:
        return self.rate * self._scale(now)

    def effective_burst(self, now: float) -> float:
        return self.burst * self._scale(now)

    def outstanding(self) -> float:
        return float(sum(lease.outstanding for w in self.workers.values()
                         for lease in w.leases))

    # -- time -----------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Expire leases in expiry order and refill up to ``burst - outstanding`` in between."""
        rate, burst = self.effective_rate(now), self.effective_burst(now)
        expiring = sorted((lease.expires, id(lease), lease, w) for w in self.workers.values()
                          for lease in w.leases if lease.expires <= now)
        held = self.outstanding()
        t = self.refilled_at
        tokens = self.tokens
        for expires, _, lease, worker in expiring:
            if expires > t:
                tokens = min(tokens + rate * (expires - t), burst - held)
                t = expires
            held -= lease.outstanding
            worker.leases.remove(lease)
        if now > t:  # a new owner whose clock is behind does not refill backwards
            tokens = min(tokens + rate * (now - t), burst - held)
            t = now
        self.tokens = min(tokens, burst - held)
        self.refilled_at = t
        self._prune(now)

    def _prune(self, now: float) -> None:
        keep = self.retention
        if self.requests:
            self.requests = {k: v for k, v in self.requests.items() if now - v.at <= keep}
        if self.commands:
            self.commands = {k: v for k, v in self.commands.items() if now - v <= keep}
        window = self.demand_window
        for wid in [wid for wid, w in self.workers.items()
                    if not w.leases and now - w.seen > window]:
            del self.workers[wid]

    # -- requests -------------------------------------------------------------------------

    def is_stale(self, sent_at: float, now: float) -> bool:
        skew = self.max_clock_skew
        return now - sent_at > self.lease_ttl + skew or sent_at - now > skew

    def handle_lease(self, req: LeaseRequest, now: float) -> Grant | None:
        """Grant (possibly 0 tokens) or, for a stale request, ``None``; a retry of a recorded
        request id returns the recorded grant, never a new one."""
        self.advance(now)
        recorded = self.requests.get(req.request_id)
        if recorded is not None:
            self.stats.retries += 1
            return self._grant_from(req, recorded)
        if self.is_stale(req.sent_at, now):
            self.stats.stale += 1
            return None
        self.stats.requests += 1
        worker = self.workers.get(req.worker_id)
        if worker is None:
            worker = self.workers[req.worker_id] = _Worker(req.demand, now)
        worker.demand, worker.seen = min(req.demand, SATURATED), now

        active = self._active(now)
        rate, burst = self.effective_rate(now), self.effective_burst(now)
        period = min(self.lease_ttl / 2.0, burst / (4.0 * rate))
        shares = max_min_fair(rate, active)
        share = shares[req.worker_id]
        others = sum(s for wid, s in shares.items() if wid != req.worker_id) * period

        carried, renews = 0.0, None
        for lease in worker.leases:
            if lease.lease_id == req.lease_id:
                carried, renews = min(req.unspent, lease.outstanding), lease.lease_id
                worker.leases.remove(lease)
                break
        want = min(max(0.0, req.requested - carried), burst - carried)
        grant = min(want, self.tokens, max(share * period, self.tokens - others))
        tokens = max(0, math.floor(grant + 1e-9))
        self.tokens -= tokens

        self.seq += 1
        lease_id = f"{self.seq}"
        if carried + tokens > 0:
            worker.leases.append(_Lease(lease_id, carried + tokens, now + self.lease_ttl))
        else:
            renews = None
        if tokens > share * period + 1:
            # A bonus from a rich bucket: come back soon to report it spent, or its
            # outstanding count would hold the refill back for a whole period.
            self.stats.grants += 1
            self.stats.granted += tokens
            retry_after = period / 8.0
        elif tokens > 0:
            self.stats.grants += 1
            self.stats.granted += tokens
            retry_after = tokens / share if share > 0 else period
        else:
            self.stats.denied += 1
            retry_after = period / 4.0
        retry_after = min(max(retry_after, period / 8.0), period)
        record = self.requests[req.request_id] = _GrantRecord(
            now, lease_id, tokens, renews, retry_after, self.epoch, self.rate, self.burst,
            self.lease_ttl)
        return self._grant_from(req, record)

    def _grant_from(self, req: LeaseRequest, rec: _GrantRecord) -> Grant:
        return Grant(request_id=req.request_id, limiter_id=self.limiter_id,
                     worker_id=req.worker_id, lease_id=rec.lease_id, tokens=rec.tokens,
                     ttl=rec.ttl, renews=rec.renews, retry_after=rec.retry_after,
                     epoch=rec.epoch, rate=rec.rate, burst=rec.burst)

    def apply_command(self, cmd: Command, now: float) -> Ack | None:
        """Apply ``update_rate`` / ``reset`` once per command id; ``None`` if stale."""
        self.advance(now)
        if cmd.command_id not in self.commands:
            if self.is_stale(cmd.sent_at, now):
                self.stats.stale += 1
                return None
            self.commands[cmd.command_id] = now
            if cmd.type == "update_rate" and cmd.rate is not None:
                self.rate = cmd.rate
            elif cmd.type == "reset":
                self.tokens = min(self.initial_tokens, self.effective_burst(now)
                                  - self.outstanding())
                self.stats = LedgerStats()
            self.epoch += 1
            self.stats.commands += 1
        return Ack(command_id=cmd.command_id, limiter_id=self.limiter_id,
                   worker_id=cmd.worker_id, epoch=self.epoch, rate=self.rate)

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
            # Leases and grant records as plain JSON lists, in their fields' order.
            "workers": {wid: [w.demand, w.seen, [list(lease) for lease in w.leases]]
                        for wid, w in self.workers.items()},
            "requests": {k: list(v) for k, v in self.requests.items()},
            "commands": self.commands,
            "stats": {name: getattr(self.stats, name) for name in LedgerStats.__slots__},
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LimiterLedger:
        config = LimiterConfig(rate=record["rate"], burst=record["burst"],
                               lease_ttl=record["lease_ttl"],
                               per_consumer=record["per_consumer"],
                               initial_tokens=record["initial_tokens"])
        ledger = cls(record["limiter_id"], config, record["refilled_at"],
                     max_clock_skew=record["max_clock_skew"])
        ledger.epoch = record["epoch"]
        ledger.tokens = record["tokens"]
        ledger.seq = record["seq"]
        ledger.workers = {wid: _Worker(d, s, [_Lease(*lease) for lease in leases])
                          for wid, (d, s, leases) in record["workers"].items()}
        ledger.requests = {k: _GrantRecord(*v) for k, v in record["requests"].items()}
        ledger.commands = dict(record["commands"])
        ledger.stats = LedgerStats(**record["stats"])
        return ledger
