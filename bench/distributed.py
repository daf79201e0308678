#!/usr/bin/env python3
"""Benchmark of the distributed limiters (faust_backpressure.tables).

Run: ``PYTHONPATH=. python bench/distributed.py [--rounds N] [--quick] [--seconds S]``. Starts
its own Kafka broker (or uses ``$KAFKA_BOOTSTRAP_SERVERS``), prints a markdown report and writes
``bench/results/distributed.md`` (with the commit, the load average and the command).

1. Lease-hit ``try_acquire(1)`` ops/s (tokens in the local lease), median (min-max) of 5 timings.
2. ``acquire()`` latency p50/p99: with tokens in the lease; and when the lease is empty and a
   refill must come from the owner through Kafka (in-process app, real broker).
3. Real ``faust worker`` processes (1, 2, 3) sharing one limiter at 1000/s, burst 2000, TTL 2 s,
   greedy demand for 12 s: admitted rate from 4 s after the first admission (the burst spent)
   vs 1000/s, and lease requests (grant-topic records) per 1000 admitted permits. ``--rounds N``
   (default 5) repeats the three runs N times, the worker counts rotated within each round
   (1,2,3; 2,3,1; 3,1,2; ...); each figure is the median over rounds (min-max).
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
from faust_backpressure.testing.chaos_report import git_commit
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


def lease_hit_ops(n: int) -> list[float]:
    """ops/s of 5 timings of ``n`` lease-hit ``try_acquire(1)`` calls."""
    rounds = []
    for _ in range(5):
        limiter = leased(n + 10)
        take = limiter.try_acquire
        began = time.perf_counter()
        for _ in range(n):
            take()
        rounds.append(n / (time.perf_counter() - began))
    return rounds


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


def rotation(workers: tuple[int, ...], rounds: int) -> list[list[int]]:
    """Round r runs the worker counts rotated by r: 1,2,3 then 2,3,1 then 3,1,2, ..."""
    k = len(workers)
    return [[workers[(r + i) % k] for i in range(k)] for r in range(rounds)]


async def measure(bootstrap: str, seconds: float, rounds: int
                  ) -> tuple[dict[str, float], list[dict[str, object]]]:
    lat = await acquire_latencies(bootstrap, 2000)
    runs: list[dict[str, object]] = []
    for r, order in enumerate(rotation((1, 2, 3), rounds), start=1):
        for n in order:
            before = os.getloadavg()[0]
            began = time.monotonic()
            try:
                result: dict[str, object] = dict(await accuracy(bootstrap, n, seconds))
            except Exception as exc:  # one failed run must not lose the others
                result = {"error": f"{type(exc).__name__}: {exc}"}
            result.update(round=r, workers=n, load=(before, os.getloadavg()[0]),
                          took=time.monotonic() - began)
            runs.append(result)
            sys.stderr.write(f"round {r}, {n} worker(s): "
                             f"{ {k: v for k, v in result.items() if k != 'load'} }\n")
    return lat, runs


def spread(values: list[float], fmt: str) -> str:
    if not values:
        return "n/a"
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:{fmt}} ({low:{fmt}}-{high:{fmt}})"


def worker_rows(runs: list[dict[str, object]], seconds: float) -> list[str]:
    lines = []
    for n in (1, 2, 3):
        ok = [r for r in runs if r["workers"] == n and "error" not in r]
        rates = [float(r["rate"]) for r in ok]  # type: ignore[arg-type]
        admitted = [float(r["admitted"]) for r in ok]  # type: ignore[arg-type]
        per_1000 = [float(r["per_1000"]) for r in ok]  # type: ignore[arg-type]
        bound = 1000 * seconds + 2000
        lines.append(
            f"| {n} worker(s) at 1000/s (burst 2000, TTL 2 s): steady admitted rate | "
            f"{spread(rates, '.0f')}/s ({spread([x / 10 for x in rates], '.1f')}% of rate); "
            f"{spread(admitted, '.0f')} admitted of bound {bound:.0f}; "
            f"{len(ok)} of {len([r for r in runs if r['workers'] == n])} runs | within 5% |")
        lines.append(f"| {n} worker(s): lease requests per 1000 admitted permits | "
                     f"{spread(per_1000, '.1f')} | <= 10 |")
    return lines


def run_lines(runs: list[dict[str, object]]) -> list[str]:
    lines = ["", "## Runs (in the order run)", "",
             "| round | workers | steady rate/s | admitted | lease requests / 1000 | "
             "load before / after | took |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        load = r["load"]
        assert isinstance(load, tuple)
        if "error" in r:
            cells = f"FAILED: {r['error']} | | | "
        else:
            cells = f"{r['rate']:.1f} | {r['admitted']} | {r['per_1000']:.2f} | "
        lines.append(f"| {r['round']} | {r['workers']} | {cells}"
                     f"{load[0]:.2f} / {load[1]:.2f} | {r['took']:.0f} s |")
    return lines


def main(args: argparse.Namespace, command: str) -> str:
    seconds = args.seconds or (8.0 if args.quick else 12.0)
    began, load_before = time.time(), os.getloadavg()
    ops = lease_hit_ops(200_000 if args.quick else 1_000_000)
    with kafka_bootstrap() as bootstrap:  # starts its broker outside any event loop
        lat, runs = asyncio.run(measure(bootstrap, seconds, args.rounds))
    load_after, took = os.getloadavg(), time.time() - began
    lines = [
        f"Date: {time.strftime('%Y-%m-%d %H:%M', time.gmtime(began))}-"
        f"{time.strftime('%H:%M UTC', time.gmtime())} ({took / 60:.1f} min); commit "
        f"{git_commit(REPO)}; Python {platform.python_version()}, {os.cpu_count()} cores; load "
        f"average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)}, after "
        f"{'/'.join(f'{x:.2f}' for x in load_after)}; command `{command}`.", "",
        f"{args.rounds} round(s) of 1, 2 and 3 real `faust worker` processes, {seconds:g} s "
        "of greedy demand each, the worker counts rotated within a round (1,2,3; 2,3,1; "
        "3,1,2; ...). Worker figures: median over rounds (min-max). Lease-hit ops/s: median "
        "of 5 timings (min-max); `acquire()` latencies: one run (2000 samples with tokens in "
        "the lease, 40 refills), before the worker runs.", "",
        "| measure | value | target |", "| --- | --- | --- |",
        f"| lease-hit `try_acquire(1)` | {spread([x / 1e6 for x in ops], '.2f')}M ops/s "
        "| >= 1M ops/s |",
        f"| `acquire()` with tokens in the lease, p50 / p99 | {lat['hit_p50'] * 1e6:.1f} / "
        f"{lat['hit_p99'] * 1e6:.1f} us | |",
        f"| `acquire()` after emptying the lease (refilled locally at the share), p50 / p99 | "
        f"{lat['refill_p50'] * 1e3:.1f} / {lat['refill_p99'] * 1e3:.1f} ms | |",
        *worker_rows(runs, seconds), *run_lines(runs)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true",
                        help="200,000 lease-hit timings instead of 1,000,000; 8 s runs")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of 1/2/3-worker runs, interleaved (default 5)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds of demand per worker run (default 12, 8 with --quick)")
    args = parser.parse_args()
    command = " ".join(["PYTHONPATH=. python bench/distributed.py", *sys.argv[1:]])
    text = main(args, command)
    out = REPO / "bench" / "results" / "distributed.md"
    out.write_text("# Distributed limiters\n\n" + text)
    sys.stdout.write(text)
