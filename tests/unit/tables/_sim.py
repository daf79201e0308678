"""A deterministic simulation of owner + workers + a lossy network on a virtual clock."""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from faust_backpressure.tables import DistributedRateLimiter, LimiterLedger
from faust_backpressure.tables.load import OwnerLoad
from faust_backpressure.wire.limiter_records import Ack, Command, Grant, LeaseRequest


class Clock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class Sim:
    rate: float
    burst: float
    workers: int = 3
    lease_ttl: float = 1.0
    delay: tuple[float, float] = (0.001, 0.005)
    #: Answers' own delay, if not ``delay`` (e.g. a slow way back the owner does not see).
    reply_delay: tuple[float, float] | None = None
    drop: float = 0.0
    duplicate: float = 0.0
    demand: list[float] | None = None  # permits/s per worker; None = greedy
    seed: int = 0
    dt: float = 0.002
    fallback_rate: float | None = None
    #: Permits per call with ``demand`` (a batch pipeline's batch): a refused batch is then
    #: taken a permit at a time, as the pipeline's gate does (``acquire_by_one``).
    batch: int = 1
    clock: Clock = field(default_factory=Clock)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.clients = [
            DistributedRateLimiter("lim", self.rate, self.burst, worker_id=f"w{i}",
                                   lease_ttl=self.lease_ttl, clock=self.clock,
                                   wall_clock=self.clock, fallback_rate=self.fallback_rate)
            for i in range(self.workers)]
        self.alive = [True] * self.workers
        self.record: dict[str, Any] | None = None  # what the changelog holds
        self.queue: list[tuple[float, int, str, Any]] = []
        self.seq = itertools.count()
        self.admitted: list[list[float]] = [[] for _ in self.clients]
        self.grants_by_request: dict[str, set[str]] = {}
        self.owner_down_until = -1.0
        self.requests_held_until = -1.0  # a broker outage: requests wait, none is lost
        self.held: list[Any] = []
        self.load = OwnerLoad()
        self._credit = [0.0] * self.workers
        self._by_one = [0] * self.workers  # permits of a refused batch still to take
        self.batches = [0] * self.workers
        self.refused_batches = [0] * self.workers

    def _send(self, target: str, message: Any) -> None:
        copies = 0 if self.rng.random() < self.drop else 1
        if copies and self.rng.random() < self.duplicate:
            copies = 2
        for _ in range(copies):
            delay = self.delay if target == "owner" else self.reply_delay or self.delay
            at = self.clock.now + self.rng.uniform(*delay)
            heapq.heappush(self.queue, (at, next(self.seq), target, message))

    def _owner(self, message: LeaseRequest | Command) -> None:
        now = self.clock.now
        if now < self.owner_down_until:
            return  # lost with the dead owner
        if now < self.requests_held_until:
            self.held.append(message)
        else:
            self._answer(message, now)

    def _answer(self, message: LeaseRequest | Command, now: float) -> None:
        self.load.observe(now - message.sent_at, now)
        ledger = (LimiterLedger.from_record(self.record) if self.record is not None
                  else LimiterLedger("lim", self.clients[0].config, now))
        if isinstance(message, LeaseRequest):
            reply: Grant | Ack | None = ledger.handle_lease(
                message, now, stretch=self.load.stretch, delay=self.load.delay)
            if isinstance(reply, Grant):
                self.grants_by_request.setdefault(reply.request_id, set()).add(reply.lease_id)
        else:
            reply = ledger.apply_command(message, now)
        self.record = ledger.to_record()  # persisted before the answer leaves
        if reply is not None:
            self._send(reply.worker_id, reply)

    def crash_owner(self, downtime: float) -> None:
        self.owner_down_until = self.clock.now + downtime

    def broker_outage(self, downtime: float) -> None:
        """The request partition has no leader: requests wait in the producers, then all
        arrive at once (``sent_at`` as when they were sent)."""
        self.requests_held_until = self.clock.now + downtime

    def kill_worker(self, index: int) -> None:
        self.alive[index] = False

    def run(self, seconds: float) -> None:
        end = self.clock.now + seconds
        while self.clock.now < end:
            now = self.clock.now
            if self.held and now >= self.requests_held_until:
                held, self.held = self.held, []  # all at once, oldest first
                for message in held:
                    self._answer(message, now)
            while self.queue and self.queue[0][0] <= now:
                _, _, target, message = heapq.heappop(self.queue)
                if target == "owner":
                    self._owner(message)
                else:
                    i = int(target[1:])
                    if not self.alive[i]:
                        continue
                    if isinstance(message, Grant):
                        self.clients[i].on_grant(message, now)
                    else:
                        self.clients[i].on_ack(message)
            for i, client in enumerate(self.clients):
                if not self.alive[i]:
                    continue
                if self.batch > 1:
                    self._spend_batches(i, client, now)
                else:
                    self._spend(i, client, now)
                while (message := client.poll(now)) is not None:
                    self._send("owner", message)
            self.clock.now = round(now + self.dt, 9)

    def _spend(self, i: int, client: DistributedRateLimiter, now: float) -> None:
        if self.demand is None:
            budget = 10_000
        else:
            self._credit[i] += self.demand[i] * self.dt
            budget = int(self._credit[i])
            self._credit[i] -= budget
        for _ in range(budget):
            if not client.try_acquire():
                break
            self.admitted[i].append(now)

    def _spend_batches(self, i: int, client: DistributedRateLimiter, now: float) -> None:
        assert self.demand is not None
        self._credit[i] += self.demand[i] * self.dt
        while self._by_one[i] > 0 and client.try_acquire():
            self._by_one[i] -= 1
            self.admitted[i].append(now)
        while not self._by_one[i] and self._credit[i] >= self.batch:
            self._credit[i] -= self.batch
            self.batches[i] += 1
            if client.try_acquire(self.batch):
                self.admitted[i].extend([now] * self.batch)
            else:
                self.refused_batches[i] += 1
                self._by_one[i] = self.batch

    def all_admissions(self) -> list[float]:
        return sorted(t for times in self.admitted for t in times)

    def worst_window(self, window: float = 1.0, since: float = -float("inf")) -> int:
        """The most admissions (all workers) in any sliding window ``[t, t + window)``."""
        times = [t for t in self.all_admissions() if t >= since]
        return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)),
                   default=0)

    def worst_excess(self, window: float) -> float:
        """max over windows [t, t+window] of admitted - (rate*window + burst)."""
        times = self.all_admissions()
        worst = -float("inf")
        for i, t in enumerate(times):
            j = bisect.bisect_right(times, t + window)
            worst = max(worst, (j - i) - (self.rate * window + self.burst))
        return worst
