#!/usr/bin/env python3
"""Many distributed limiter ids on one owner: does admission hold as the ids (and requests) grow?

Run: ``PYTHONPATH=. python bench/many_ids.py [--ids 30,100,300,1000] [--rounds 1]
[--seconds 55] [--window 30] [--label after]``. Starts its own Kafka broker (or uses
``$KAFKA_BOOTSTRAP_SERVERS``). For each N: 3 real ``faust worker`` processes of
``tests/integration/distributed/apps/many_ids.py`` each call ``try_acquire`` on every one of N
limiter ids (50/s, burst 50, lease TTL 1 s) every 10 ms; over the last ``window`` seconds of the
run it reports allowed (N x 50/s), admitted per second (all workers), and the grants answered
per second (records on the grant topic in that window) and the CPU the 3 workers (owners and
spenders at once) used in it, in cores. With ``--rounds R`` the sizes run R times, their order
rotating from round to round, and a summary gives each figure's median (min-max). Writes
``bench/results/many_ids-<label>.md``.
Targets (issue 13): on 1,000 ids admitted >= 95% of allowed, >= 2,000 lease requests answered/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.figures import cpu_seconds, median_spread, rotated
from faust_backpressure.testing.broker import kafka_bootstrap
from faust_backpressure.testing.chaos_report import git_commit
from faust_backpressure.testing.kafka_io import consume, create_topics, end_offsets
from faust_backpressure.testing.workers import FaustWorker, wait_until_settled
from faust_backpressure.wire.limiter_records import decode_replies

REPO = Path(__file__).resolve().parents[1]
APP = "tests.integration.distributed.apps.many_ids"
RATE, BURST, TTL = 50.0, 50.0, 1.0


async def run_once(bootstrap: str, ids: int, seconds: float, window: float
                   ) -> dict[str, Any]:
    tag = f"{os.getpid()}-{time.time_ns()}"
    report, app_id = f"bench-many-report-{tag}", f"bench-many-{tag}"
    await create_topics(bootstrap, {report: 1})
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "FBP_APP_ID": app_id, "FBP_REPORT": report,
               "FBP_GO_FILE": str(go), "FBP_IDS": str(ids), "FBP_RATE": f"{RATE:g}",
               "FBP_BURST": f"{BURST:g}", "FBP_LEASE_TTL": f"{TTL:g}"}
        procs = [FaustWorker(APP, name=f"w{i}", env=env, cwd=REPO).start() for i in range(3)]
        try:
            for proc in procs:
                proc.wait_ready(120)
            wait_until_settled(procs, 120)
            load_before = os.getloadavg()[0]
            go.touch()
            start = time.time()
            cpu = asyncio.create_task(window_cpu([p.pid for p in procs], start + seconds - window,
                                                 window))

            def done(records: list[Any]) -> bool:
                ats: dict[str, float] = {}
                for r in records:
                    body = json.loads(r.value)
                    ats[body["worker"]] = max(ats.get(body["worker"], 0.0), body["at"])
                return len(ats) == 3 and min(ats.values()) > start + seconds + 1.5

            records = await consume(bootstrap, report, until=done, timeout=seconds + 120)
            load_after = os.getloadavg()[0]
            cores = await cpu
        finally:
            for proc in procs:
                proc.cleanup()
    bodies = [json.loads(r.value) for r in records]
    lo, hi = int(start + seconds - window), int(start + seconds)
    admitted = sum(n for b in bodies for sec, n in b["counts"].items() if lo <= int(sec) < hi)
    per_second: dict[int, int] = {}
    for b in bodies:
        for sec, n in b["counts"].items():
            per_second[int(sec)] = per_second.get(int(sec), 0) + n
    grants_topic = f"{app_id}-fbp-limiter-grants"
    total = sum((await end_offsets(bootstrap, grants_topic)).values())
    grants = await consume(bootstrap, grants_topic, until=total, timeout=120)
    # A grant-topic record holds one reply or a batch of them (one per worker per owner batch).
    answered = sum(len(decode_replies(g.value)) for g in grants
                   if lo * 1000 <= g.timestamp < hi * 1000)
    last = {b["worker"]: b["lease"] for b in bodies}
    lease = {k: sum(v.get(k, 0) for v in last.values())
             for k in ("requests", "retries", "abandoned", "grants")}
    return {"ids": ids, "allowed": ids * RATE, "admitted": admitted / (hi - lo),
            "answered": answered / (hi - lo), "lease": lease,
            "series": [per_second.get(s, 0) for s in range(int(start), hi)],
            "load": (load_before, load_after), "cores": cores}


async def window_cpu(pids: list[int], since: float, window: float) -> float:
    """Cores the processes used, on average, over ``[since, since + window)``."""
    await asyncio.sleep(max(0.0, since - time.time()))
    before = cpu_seconds(pids)
    await asyncio.sleep(window)
    return (cpu_seconds(pids) - before) / window




def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ids", default="30,100,300,1000")
    parser.add_argument("--seconds", type=float, default=55.0)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--label", default="latest")
    args = parser.parse_args()
    sizes = [int(x) for x in args.ids.split(",")]
    results = []
    with kafka_bootstrap() as bootstrap:
        for k in range(args.rounds):
            for n in rotated(sizes, k):
                result = asyncio.run(run_once(bootstrap, n, args.seconds, args.window))
                result["round"] = k + 1
                results.append(result)
                sys.stderr.write(f"{json.dumps(result)}\n")
    lines = [f"Date: {time.strftime('%Y-%m-%d %H:%M')}; commit {git_commit(REPO)}; "
             f"Python {platform.python_version()}, "
             f"{os.cpu_count()} cores; `PYTHONPATH=. python bench/many_ids.py --ids {args.ids} "
             f"--rounds {args.rounds} --seconds {args.seconds:g} --window {args.window:g}` "
             f"({args.label}). 3 workers, "
             f"each id {RATE:g}/s burst {BURST:g}, TTL {TTL:g} s, try_acquire on every id "
             f"every 10 ms; last {args.window:g} s of a {args.seconds:g} s run. Medians over "
             f"{args.rounds} round(s) (min-max):", "",
             "| ids | admitted % | grants answered/s | workers' CPU, cores |",
             "| ---: | ---: | ---: | ---: |"]
    for n in sizes:
        mine = [r for r in results if r["ids"] == n]
        shares = [r["admitted"] / r["allowed"] * 100 for r in mine]
        lines.append(f"| {n} | {median_spread(shares, '.1f')} "
                     f"| {median_spread([r['answered'] for r in mine], ',.0f')} "
                     f"| {median_spread([r['cores'] for r in mine], '.2f')} |")
    lines += ["", "Every run, in the order run:", "",
              "| round | ids | allowed/s | admitted/s | admitted % | grants answered/s | lease "
              "requests (retries, abandoned) | CPU, cores | load 1 min before / after |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in results:
        lease = r["lease"]
        lines.append(f"| {r['round']} | {r['ids']} | {r['allowed']:,.0f} | {r['admitted']:,.0f} | "
                     f"{r['admitted'] / r['allowed']:.1%} | {r['answered']:,.0f} | "
                     f"{lease['requests']:,} ({lease['retries']:,}, {lease['abandoned']:,}) | "
                     f"{r['cores']:.2f} | {r['load'][0]:.2f} / {r['load'][1]:.2f} |")
    text = "\n".join(lines) + "\n"
    out = REPO / "bench" / "results" / f"many_ids-{args.label}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Many limiter ids\n\n" + text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
