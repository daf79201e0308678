#!/usr/bin/env python3
"""Benchmark of the distributed limiters (faust_backpressure.tables).

Run: ``PYTHONPATH=. python bench/distributed.py [--quick]``. Starts its own Kafka broker (or uses
``$KAFKA_BOOTSTRAP_SERVERS``), prints a markdown report and writes ``bench/results/distributed.md``.

1. Lease-hit ``try_acquire(1)`` ops/s (tokens in the local lease), median of 5 rounds.
2. ``acquire()`` latency p50/p99: with tokens in the lease; and when the lease is empty and a
   refill must come from the owner through Kafka (in-process app, real broker).
3. Real ``faust worker`` processes (1, 2, 3) sharing one limiter at 1000/s, burst 2000, TTL 2 s,
   greedy demand for 12 s: admitted rate after the first 2 s vs 1000/s, and lease requests
   (grant-topic records) per 1000 admitted permits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import faust

from faust_backpressure.tables import DistributedRateLimiter, DistributedRateLimiterFactory, Grant
from faust_backpressure.testing.broker import kafka_bootstrap
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import consume, create_topics
from faust_backpressure.testing.settings import fast_faust_settings
from faust_backpressure.testing.workers import FaustWorker, wait_until_settled

REPO = Path(__file__).resolve().parents[1]
APP = "tests.integration.distributed.apps.limited"


def leased(tokens: int) -> DistributedRateLimiter:
    limiter = DistributedRateLimiter("bench", 1e12, 1e12, worker_id="w", lease_ttl=3600)
    limiter.try_acquire()
    request = limiter.poll()
    assert request is not None
    limiter.on_grant(Grant(request_id=request.request_id, limiter_id="bench", worker_id="w",
                           lease_id="1", tokens=tokens, ttl=3600, renews=None,
                           retry_after=3600, epoch=0, rate=1e12, burst=1e12))
    return limiter


def lease_hit_ops(n: int) -> float:
    rounds = []
    for _ in range(5):
        limiter = leased(n + 10)
        take = limiter.try_acquire
        began = time.perf_counter()
        for _ in range(n):
            take()
        rounds.append(n / (time.perf_counter() - began))
    return statistics.median(rounds)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def acquire_latencies(bootstrap: str, samples: int) -> dict[str, float]:
    limiter = leased(samples + 10)
    hit = []
    for _ in range(samples):
        began = time.perf_counter()
        await limiter.acquire()
        hit.append(time.perf_counter() - began)
    with tempfile.TemporaryDirectory() as data:
        app = faust.App(f"bench-dist-{os.getpid()}-{time.time_ns()}", datadir=data,
                        **fast_faust_settings(broker=f"kafka://{bootstrap}"))
        shared = DistributedRateLimiterFactory.create_distributed(
            app, "latency", 1000, 2000, lease_ttl=2.0)
        refill = []
        async with running_app(app):
            await asyncio.sleep(3)
            await asyncio.wait_for(shared.acquire(), 30)  # first lease
            for _ in range(min(samples, 40)):
                while shared.try_acquire():
                    pass  # empty the lease: the next acquire needs the owner
                began = time.perf_counter()
                await asyncio.wait_for(shared.acquire(), 10)
                refill.append(time.perf_counter() - began)
    return {"hit_p50": pct(hit, 0.5), "hit_p99": pct(hit, 0.99),
            "refill_p50": pct(refill, 0.5), "refill_p99": pct(refill, 0.99)}


async def accuracy(bootstrap: str, workers: int, seconds: float) -> dict[str, float]:
    tag = f"{os.getpid()}-{time.time_ns()}"
    report = f"bench-report-{tag}"
    await create_topics(bootstrap, {report: 1})
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "FBP_APP_ID": f"bench-app-{tag}",
               "FBP_REPORT": report, "FBP_GO_FILE": str(go), "FBP_LEASE_TTL": "2.0",
               "FBP_LIMITERS": "acc:1000:2000"}
        procs = [FaustWorker(APP, name=f"w{i}", env=env, cwd=REPO).start() for i in range(workers)]
        try:
            for proc in procs:
                proc.wait_ready()
            wait_until_settled(procs)  # no rebalance pending when the load starts
            go.touch()

            def done(records: list) -> bool:  # type: ignore[type-arg]
                bodies = [json.loads(r.value) for r in records]
                times = [t for b in bodies for t in b["times"]]
                return bool(times) and max(b["at"] for b in bodies) > min(times) + seconds + 0.5

            records = await consume(bootstrap, report, until=done, timeout=seconds + 60)
        finally:
            for proc in procs:
                proc.cleanup()
    times = sorted(t for r in records for t in json.loads(r.value)["times"])
    t0 = times[0]
    # Steady state starts once the initial 2000-token burst can have been spent (2 s at the
    # rate) plus 2 s of margin, so the figure is the rate alone, without the burst.
    settle = 4.0
    steady = [t for t in times if t0 + settle <= t < t0 + seconds]
    admitted = [t for t in times if t < t0 + seconds]
    grants = await consume(bootstrap, f"bench-app-{tag}-fbp-limiter-grants", until=1)
    grants = await consume(bootstrap, f"bench-app-{tag}-fbp-limiter-grants",
                           until=lambda rs: len(rs) >= len(grants), timeout=10)
    return {"rate": len(steady) / (seconds - settle), "admitted": len(admitted),
            "bound": 1000 * seconds + 2000,
            "per_1000": len(grants) / max(1, len(times)) * 1000}


async def measure(bootstrap: str, quick: bool
                  ) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
    lat = await acquire_latencies(bootstrap, 2000)
    runs = {n: await accuracy(bootstrap, n, 8.0 if quick else 12.0) for n in (1, 2, 3)}
    return lat, runs


def main(quick: bool) -> str:
    ops = lease_hit_ops(200_000 if quick else 1_000_000)
    with kafka_bootstrap() as bootstrap:  # starts its broker outside any event loop
        lat, runs = asyncio.run(measure(bootstrap, quick))
    lines = [
        f"Date: {time.strftime('%Y-%m-%d')}; Python {platform.python_version()}, "
        f"{os.cpu_count()} cores; command `PYTHONPATH=. python bench/distributed.py"
        f"{' --quick' if quick else ''}`.", "",
        "| measure | value | target |", "| --- | --- | --- |",
        f"| lease-hit `try_acquire(1)` | {ops / 1e6:.2f}M ops/s | >= 1M ops/s |",
        f"| `acquire()` with tokens in the lease, p50 / p99 | {lat['hit_p50'] * 1e6:.1f} / "
        f"{lat['hit_p99'] * 1e6:.1f} us | |",
        f"| `acquire()` needing a refill from the owner, p50 / p99 | "
        f"{lat['refill_p50'] * 1e3:.1f} / {lat['refill_p99'] * 1e3:.1f} ms | |",
    ]
    for n, run in runs.items():
        lines.append(f"| {n} worker(s) at 1000/s (burst 2000, TTL 2 s): steady admitted rate | "
                     f"{run['rate']:.0f}/s ({run['rate'] / 10:.1f}% of rate); "
                     f"{run['admitted']} admitted of bound {run['bound']:.0f} | within 5% |")
        lines.append(f"| {n} worker(s): lease requests per 1000 admitted permits | "
                     f"{run['per_1000']:.1f} | <= 10 |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    text = main(args.quick)
    out = REPO / "bench" / "results" / "distributed.md"
    out.write_text("# Distributed limiters\n\n" + text)
    sys.stdout.write(text)
