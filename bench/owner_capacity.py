#!/usr/bin/env python3
"""Where one owner's answers run out: many ids and many workers on a virtual clock (issue 25).

Run: ``PYTHONPATH=. python bench/owner_capacity.py [--cases 1000x3x1,1000x3,10000x30]
[--owners 30] [--capacity 600,2000] [--seconds 90] [--dt 0.05] [--skip-cost 0.1]
[--out owner_capacity.md]``: a case is IDSxWORKERS[xOWNERS] (owners: ``min(--owners,
workers)`` when not given). Writes ``bench/results/<--out>``.

The real many-ids runs (``bench/many_ids.py``) stop at 1,000 ids on 3 workers on this 2-core
machine; this extrapolates with the library's own classes: every worker's
``DistributedRateLimiter`` per id, the owner's ``LimiterLedger`` and ``OwnerLoad``, and an
owner that answers at most ``capacity`` requests a second, first come first served, with 10
ms each way on the wire. Each id is 50/s, burst 50, lease TTL 1 s (the many-ids settings);
every worker tries every id every ``dt`` (a few permits each time, so its demand is always
above its share). Ids are spread evenly over ``min(owners, workers)`` owners (a limiter's
owner is the worker that owns its partition of the request topic), and the owners do not
share work, so one owner's slice (its ids x every worker) is simulated and stands for all.
Reported over the last third of the run: admitted / allowed, requests the owner was asked
and answered per second, the owner's queue delay, lease stretch and pause; over the whole run,
the requests it skipped (stale, superseded, or given up by their sender: ``late``) and the
workers' resends and requests given up.

Cost model: an answer (a grant, new or resent) costs the owner one unit of its capacity, a
request answered nothing ``--skip-cost`` of one. A real owner decodes and checks the record
in both cases; an answer also updates the ledger and encodes its record (and writes it to the
changelog and sends a reply, which this leaves out), a skip compares a timestamp or a sequence
number: the CPU of each is measured at the start of the run and reported with the results
(``costs()``): a skip's CPU (decode + check) is about 0.12 of an answer's (decode + grant)
before the answer's changelog write and reply, which make the real ratio smaller; hence the
default 0.1. ``--skip-cost 1`` charges a skip as an answer (the bench's first version did).
What the model leaves out: the owner's CPU is not the workers' (a real owner also spends
permits), and the wire's delay does not grow with load.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from faust_backpressure.tables import DistributedRateLimiter, LimiterConfig, LimiterLedger
from faust_backpressure.tables.lease_state import OwnerHeard
from faust_backpressure.tables.load import OwnerLoad
from faust_backpressure.testing.chaos_report import git_commit
from faust_backpressure.wire.limiter_records import (
    Grant,
    LeaseRequest,
    decode_requests,
    encode_batch,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = LimiterConfig(rate=50.0, burst=50.0, lease_ttl=1.0)
LATENCY = 0.01
TRIES = 4  # permits a worker asks for per id and tick, at most


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Outcome:
    ids: int
    workers: int
    owners: int
    capacity: float
    slice_ids: int
    admitted: float  # per second, the owner's slice, measured window
    allowed: float
    asked: float  # requests per second sent to the owner, measured window
    answered: float
    delay: float  # the owner's smoothed queue delay at the end, s
    stretch: float
    pause: float
    wall: float
    skipped: int = 0  # owner, whole run: requests answered nothing (stale, superseded, late)
    resent: int = 0  # workers, whole run: copies of unanswered requests
    given_up: int = 0  # workers, whole run: requests given up unanswered


class Owner:
    """One owner: a FIFO queue it serves at ``capacity`` units a second (see the docstring)."""

    def __init__(self, capacity: float, skip_cost: float) -> None:
        self.capacity, self.skip_cost = capacity, skip_cost
        self.ledgers: dict[str, LimiterLedger] = {}
        self.load = OwnerLoad()
        self.queue: collections.deque[tuple[float, LeaseRequest]] = collections.deque()
        self.credit = 0.0

    def serve(self, now: float, dt: float) -> list[Grant]:
        load, grants = self.load, []
        self.credit = min(self.credit + self.capacity * dt, self.capacity * dt)  # not banked
        while self.queue and self.credit > 0 and self.queue[0][0] <= now:  # may overdraw 1
            sent, request = self.queue.popleft()
            load.observe(now - sent, now)
            ledger = self.ledgers.get(request.limiter_id)
            if ledger is None:
                ledger = self.ledgers[request.limiter_id] = LimiterLedger(request.limiter_id,
                                                                          CONFIG, now)
            grant = ledger.handle_lease(request, now, stretch=load.stretch, delay=load.delay,
                                        pause=load.pause)
            load.served((request.worker_id, request.limiter_id), now, answered=grant is not None)
            self.credit -= self.skip_cost if grant is None else 1.0
            if grant is not None:
                grants.append(grant)
        return grants


def simulate(ids: int, workers: int, owners: int, capacity: float, seconds: float,
             dt: float, skip_cost: float = 0.1) -> Outcome:
    began = time.monotonic()
    slice_ids = max(1, round(ids / owners))
    clock = Clock()
    limiters = [[DistributedRateLimiter(f"id-{i}", CONFIG.rate, CONFIG.burst,
                                        worker_id=f"w{w}", lease_ttl=CONFIG.lease_ttl,
                                        clock=clock, wall_clock=clock)
                 for i in range(slice_ids)] for w in range(workers)]
    for row in limiters:  # one owner: a worker's limiters share what they know of it
        heard = OwnerHeard()
        for limiter in row:
            limiter.owner_heard = heard
    owner = Owner(capacity, skip_cost)
    replies: collections.deque[tuple[float, int, Grant]] = collections.deque()
    end = clock.now + seconds
    measure_from = end - seconds / 3
    admitted = asked = answered = 0
    while clock.now < end:
        now = clock.now
        counting = now >= measure_from
        for grant in owner.serve(now, dt):
            answered += counting
            replies.append((now + LATENCY, int(grant.worker_id[1:]), grant))
        while replies and replies[0][0] <= now:
            _, w, grant = replies.popleft()
            limiters[w][int(grant.limiter_id[3:])].on_grant(grant, now)
        for row in limiters:
            for limiter in row:
                for _ in range(TRIES):
                    if not limiter.try_acquire():
                        break
                    admitted += counting
                message = limiter.poll(now)
                if isinstance(message, LeaseRequest):
                    asked += counting
                    owner.queue.append((now + LATENCY, message))
        clock.now = round(now + dt, 9)
    window = seconds / 3
    stats = [ledger.stats for ledger in owner.ledgers.values()]
    counters = [limiter.lease_counters for row in limiters for limiter in row]
    load = owner.load
    return Outcome(ids, workers, owners, capacity, slice_ids, admitted / window,
                   slice_ids * CONFIG.rate, asked / window, answered / window, load.delay,
                   load.stretch, load.pause, time.monotonic() - began,
                   sum(s.stale + s.superseded + s.late for s in stats),
                   sum(c.retries for c in counters), sum(c.abandoned for c in counters))


def costs(n: int = 3000) -> dict[str, float]:
    """CPU per request on the owner, microseconds: decoding and checking a signed record,
    a grant (ledger update and its record encoded), a request skipped as given up."""
    ledger = LimiterLedger("lim", CONFIG, 0.0)

    def request(seq: int, sent_at: float) -> LeaseRequest:
        return LeaseRequest(request_id=f"w{seq % 30}:lim:{seq}", limiter_id="lim",
                            worker_id=f"w{seq % 30}", demand=100.0, requested=50,
                            sent_at=sent_at, lease_id=None, unspent=0.0, config=CONFIG,
                            seq=seq)

    for seq in range(300):  # 30 workers known
        ledger.handle_lease(request(seq, seq * 0.05), seq * 0.05)
    now = 15.0
    key, value = encode_batch([request(1000, now)], secret=b"secret")
    began = time.perf_counter()
    for _ in range(n):
        decode_requests(key, value, b"secret")
    decode = time.perf_counter() - began
    began = time.perf_counter()
    for seq in range(2000, 2000 + n):
        now += 1e-4
        ledger.handle_lease(request(seq, now), now, stretch=8.0, delay=0.1)
        json.dumps(ledger.to_record(), separators=(",", ":")).encode()
    grant = time.perf_counter() - began
    began = time.perf_counter()
    for seq in range(9000, 9000 + n):
        ledger.handle_lease(request(seq, now - 20.0), now, stretch=8.0, pause=5.0)
    skip = time.perf_counter() - began
    return {"decode": decode / n * 1e6, "grant": grant / n * 1e6, "skip": skip / n * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="1000x3x1,1000x3,1000x30,10000x3,10000x30",
                        help="IDSxWORKERS[xOWNERS], comma-separated")
    parser.add_argument("--owners", type=int, default=30, help="partitions of the request topic")
    parser.add_argument("--capacity", default="600,2000", help="answers/s per owner")
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--dt", type=float, default=0.05)
    parser.add_argument("--skip-cost", type=float, default=0.1,
                        help="what a request answered nothing costs, in answers")
    parser.add_argument("--out", default="owner_capacity.md", help="file in bench/results/")
    args = parser.parse_args()
    cpu = costs()
    print(cpu, flush=True)
    outcomes = []
    for case in args.cases.split(","):
        ids, workers, *given = (int(x) for x in case.split("x"))
        owners = given[0] if given else min(args.owners, workers)
        for capacity in (float(c) for c in args.capacity.split(",")):
            outcome = simulate(ids, workers, owners, capacity, args.seconds, args.dt,
                               args.skip_cost)
            outcomes.append(outcome)
            print(outcome, flush=True)
    write(args, cpu, outcomes)


def write(args: argparse.Namespace, cpu: dict[str, float], outcomes: list[Outcome]) -> None:
    lines = [
        f"# Owner capacity on a virtual clock\n\nDate: {time.strftime('%Y-%m-%d %H:%M %Z')}; "
        f"commit {git_commit(REPO)}; Python {platform.python_version()}; command `PYTHONPATH=. "
        f"python bench/owner_capacity.py --cases {args.cases} --owners {args.owners} "
        f"--capacity {args.capacity} --seconds {args.seconds:g} --dt {args.dt:g} "
        f"--skip-cost {args.skip_cost:g} --out {args.out}`. Each id "
        f"{CONFIG.rate:g}/s, burst {CONFIG.burst:g}, TTL {CONFIG.lease_ttl:g} s; one owner's "
        f"slice simulated (see the module's docstring); last {args.seconds / 3:g} s. A request "
        f"answered nothing costs the owner {args.skip_cost:g} of an answer; measured CPU per "
        f"request here: decode and check a signed record {cpu['decode']:.0f} us, a grant "
        f"(ledger, record encoded; 30 workers) {cpu['grant']:.0f} us, a skip of a request its "
        f"sender gave up {cpu['skip']:.1f} us (a changelog write and a reply come on top of a "
        "grant). Skipped, resent and given up: whole run.", "",
        "| ids | workers | owners | ids per owner | answers/s per owner (capacity) | admitted "
        "% | asked /s | answered /s | owner delay, s | stretch | pause, s | skipped | resent "
        "| given up | wall s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: |"]
    for o in outcomes:
        lines.append(
            f"| {o.ids:,} | {o.workers} | {o.owners} | {o.slice_ids:,} "
            f"| {o.capacity:,.0f} | {o.admitted / o.allowed:.1%} | {o.asked:,.0f} "
            f"| {o.answered:,.0f} | {o.delay:.2f} | {o.stretch:.1f} | {o.pause:.1f} "
            f"| {o.skipped:,} | {o.resent:,} | {o.given_up:,} | {o.wall:.0f} |")
    text = "\n".join(lines) + "\n"
    out = REPO / "bench" / "results" / args.out
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
