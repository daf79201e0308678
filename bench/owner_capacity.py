#!/usr/bin/env python3
"""Where one owner's answers run out: many ids and many workers on a virtual clock (issue 25).

Run: ``PYTHONPATH=. python bench/owner_capacity.py [--cases 1000x3x1,1000x3,10000x30]
[--owners 30] [--capacity 600,2000] [--seconds 90] [--dt 0.05]``: a case is
IDSxWORKERS[xOWNERS] (owners: ``min(--owners, workers)`` when not given). Writes
``bench/results/owner_capacity.md``.

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
and answered per second, the owner's queue delay and lease stretch. What the model leaves
out: the owner's CPU is not the workers' (a real owner also spends permits), and the wire's
delay does not grow with load.
"""

from __future__ import annotations

import argparse
import collections
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from faust_backpressure.tables import DistributedRateLimiter, LimiterConfig, LimiterLedger
from faust_backpressure.tables.load import OwnerLoad
from faust_backpressure.testing.chaos_report import git_commit
from faust_backpressure.wire.limiter_records import Grant, LeaseRequest

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
    wall: float


def simulate(ids: int, workers: int, owners: int, capacity: float, seconds: float,
             dt: float) -> Outcome:
    began = time.monotonic()
    slice_ids = max(1, round(ids / owners))
    clock = Clock()
    limiters = [[DistributedRateLimiter(f"id-{i}", CONFIG.rate, CONFIG.burst,
                                        worker_id=f"w{w}", lease_ttl=CONFIG.lease_ttl,
                                        clock=clock, wall_clock=clock)
                 for i in range(slice_ids)] for w in range(workers)]
    ledgers: dict[str, LimiterLedger] = {}
    load = OwnerLoad()
    queue: collections.deque[tuple[float, LeaseRequest]] = collections.deque()
    replies: collections.deque[tuple[float, int, Grant]] = collections.deque()
    credit, end = 0.0, clock.now + seconds
    measure_from = end - seconds / 3
    admitted = asked = answered = 0
    while clock.now < end:
        now = clock.now
        counting = now >= measure_from
        credit = min(credit + capacity * dt, capacity * dt)  # idle time is not banked
        while queue and credit >= 1 and queue[0][0] <= now:
            sent, request = queue.popleft()
            credit -= 1
            load.observe(now - sent, now)
            ledger = ledgers.get(request.limiter_id)
            if ledger is None:
                ledger = ledgers[request.limiter_id] = LimiterLedger(request.limiter_id,
                                                                     CONFIG, now)
            grant = ledger.handle_lease(request, now, stretch=load.stretch, delay=load.delay)
            if grant is not None:
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
                    queue.append((now + LATENCY, message))
        clock.now = round(now + dt, 9)
    window = seconds / 3
    return Outcome(ids, workers, owners, capacity, slice_ids, admitted / window,
                   slice_ids * CONFIG.rate, asked / window, answered / window, load.delay,
                   load.stretch, time.monotonic() - began)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="1000x3x1,1000x3,1000x30,10000x3,10000x30",
                        help="IDSxWORKERS[xOWNERS], comma-separated")
    parser.add_argument("--owners", type=int, default=30, help="partitions of the request topic")
    parser.add_argument("--capacity", default="600,2000", help="answers/s per owner")
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--dt", type=float, default=0.05)
    args = parser.parse_args()
    outcomes = []
    for case in args.cases.split(","):
        ids, workers, *given = (int(x) for x in case.split("x"))
        owners = given[0] if given else min(args.owners, workers)
        for capacity in (float(c) for c in args.capacity.split(",")):
            outcome = simulate(ids, workers, owners, capacity, args.seconds, args.dt)
            outcomes.append(outcome)
            print(outcome, flush=True)
    lines = [
        f"# Owner capacity on a virtual clock\n\nDate: {time.strftime('%Y-%m-%d %H:%M %Z')}; "
        f"commit {git_commit(REPO)}; Python {platform.python_version()}; command `PYTHONPATH=. "
        f"python bench/owner_capacity.py --cases {args.cases} --owners {args.owners} "
        f"--capacity {args.capacity} --seconds {args.seconds:g} --dt {args.dt:g}`. Each id "
        f"{CONFIG.rate:g}/s, burst {CONFIG.burst:g}, TTL {CONFIG.lease_ttl:g} s; one owner's "
        f"slice simulated (see the module's docstring); last {args.seconds / 3:g} s.", "",
        "| ids | workers | owners | ids per owner | answers/s per owner (capacity) | admitted "
        "% | asked /s | answered /s | owner delay, s | stretch | wall s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for o in outcomes:
        lines.append(
            f"| {o.ids:,} | {o.workers} | {o.owners} | {o.slice_ids:,} "
            f"| {o.capacity:,.0f} | {o.admitted / o.allowed:.1%} | {o.asked:,.0f} "
            f"| {o.answered:,.0f} | {o.delay:.2f} | {o.stretch:.1f} | {o.wall:.0f} |")
    text = "\n".join(lines) + "\n"
    out = REPO / "bench" / "results" / "owner_capacity.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
