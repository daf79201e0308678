#!/usr/bin/env python3
"""Benchmark of faust_backpressure.limiters against peer libraries.

Run: ``PYTHONPATH=. python bench/limiters.py [--quick]``. Prints a markdown report and
writes it to ``bench/results/limiters.md``. Peers (aiolimiter, limits, pyrate-limiter)
come from the ``bench`` extra; a missing one is skipped.

1. Throughput of a non-blocking ``try_acquire(1)`` that never refuses (huge rate), as
   ops/s, median of 5 rounds; cases run round-robin within a round so machine noise
   hits all of them alike. The reference is a minimal hand-written token bucket.
2. Accuracy: 2000 permits/s, one greedy asyncio consumer doing ``await acquire()`` for
   5 s. Steady state = t >= 1 s (after the initial burst). CPU = process_time / wall.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from faust_backpressure.limiters import (
    AdaptiveRateLimiter,
    LeakyBucketRateLimiter,
    MultiTierRateLimiter,
    SlidingWindowRateLimiter,
    TokenBucketRateLimiter,
)

HUGE = 10**12
BATCH = 1000
ACC_RATE = 2000
STEADY_FROM = 1.0
_monotonic = time.monotonic


class MinimalTokenBucket:
    """The pure-Python ceiling: a token bucket with nothing but the arithmetic."""

    __slots__ = ("capacity", "last", "rate", "tokens")

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate, self.capacity, self.tokens = float(rate), float(capacity), float(capacity)
        self.last = _monotonic()

    def try_acquire(self, n: int = 1) -> bool:
        now = _monotonic()
        tokens = self.tokens + (now - self.last) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        self.last = now
        if tokens >= n:
            self.tokens = tokens - n
            return True
        self.tokens = tokens
        return False


# -- throughput -------------------------------------------------------------------------------

SyncBatch = Callable[[], int]
AsyncBatch = Callable[[], Awaitable[int]]


def sync_batch(acq: Callable[[], Any]) -> SyncBatch:
    def batch() -> int:
        refused = 0
        for _ in range(BATCH):
            if not acq():
                refused += 1
        return refused
    return batch


def peer_cases() -> list[tuple[str, Callable[[], SyncBatch | AsyncBatch], bool]]:
    cases: list[tuple[str, Callable[[], SyncBatch | AsyncBatch], bool]] = []
    try:
        import aiolimiter

        def make_aiolimiter() -> AsyncBatch:
            lim = aiolimiter.AsyncLimiter(HUGE, 1.0)
            has, acq = lim.has_capacity, lim.acquire

            async def batch() -> int:
                refused = 0
                for _ in range(BATCH):
                    if has():
                        await acq()
                    else:
                        refused += 1
                return refused
            return batch
        cases.append(("aiolimiter `has_capacity()` + `await acquire()`", make_aiolimiter, True))
    except ImportError:
        pass
    try:
        from limits import RateLimitItemPerSecond
        from limits.storage import MemoryStorage
        from limits.strategies import FixedWindowRateLimiter, SlidingWindowCounterRateLimiter

        def make_limits(cls: Any) -> Callable[[], SyncBatch]:
            def make() -> SyncBatch:
                strat, item = cls(MemoryStorage()), RateLimitItemPerSecond(10**9)
                return sync_batch(lambda: strat.hit(item))
            return make
        cases.append(("limits FixedWindow `hit()`", make_limits(FixedWindowRateLimiter), False))
        cases.append(("limits SlidingWindowCounter `hit()`",
                      make_limits(SlidingWindowCounterRateLimiter), False))
    except ImportError:
        pass
    try:
        from pyrate_limiter import Duration, Limiter, Rate

        def make_pyrate() -> SyncBatch:
            lim = Limiter(Rate(HUGE, Duration.SECOND))
            return sync_batch(lambda: lim.try_acquire("k", blocking=False))
        cases.append(("pyrate-limiter in-memory `try_acquire`", make_pyrate, False))
    except ImportError:
        pass
    return cases


def our_cases() -> list[tuple[str, Callable[[], SyncBatch | AsyncBatch], bool]]:
    def tiers() -> MultiTierRateLimiter:
        return MultiTierRateLimiter([(n, HUGE, HUGE) for n in ("global", "topic", "consumer")])

    makers: list[tuple[str, Callable[[], Any]]] = [
        ("minimal hand-written token bucket (reference)", lambda: MinimalTokenBucket(HUGE, HUGE)),
        ("**TokenBucketRateLimiter**.try_acquire", lambda: TokenBucketRateLimiter(HUGE, HUGE)),
        ("LeakyBucketRateLimiter.try_acquire", lambda: LeakyBucketRateLimiter(HUGE, HUGE)),
        ("SlidingWindowRateLimiter.try_acquire", lambda: SlidingWindowRateLimiter(HUGE, 1.0)),
        ("MultiTierRateLimiter (3 token-bucket tiers).try_acquire", tiers),
        ("AdaptiveRateLimiter(TokenBucket).try_acquire",
         lambda: AdaptiveRateLimiter(TokenBucketRateLimiter(HUGE, HUGE), min_rate=1,
                                     max_rate=HUGE)),
    ]
    return [(name, (lambda m=make: sync_batch(m().try_acquire)), False) for name, make in makers]


async def measure(make: Callable[[], SyncBatch | AsyncBatch], is_async: bool,
                  seconds: float) -> tuple[float, int]:
    batch = make()
    refused = (await batch()) if is_async else batch()  # type: ignore[misc]
    gc.collect()
    n, pc = 0, time.perf_counter
    t0 = pc()
    end = t0 + seconds
    while True:
        refused += (await batch()) if is_async else batch()  # type: ignore[misc,operator]
        n += BATCH
        t = pc()
        if t >= end:
            break
    return n / (t - t0), refused


async def bench_throughput(repeats: int, seconds: float
                           ) -> tuple[list[tuple[str, float, int]], dict[str, list[float]]]:
    """Each case's median ops/s and refusals, and every round's ops/s by case."""
    cases = our_cases() + peer_cases()
    rates: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    refused: dict[str, int] = dict.fromkeys(rates, 0)
    for _ in range(repeats):
        for name, make, is_async in cases:
            rate, ref = await measure(make, is_async, seconds)
            rates[name].append(rate)
            refused[name] += ref
    return ([(name, statistics.median(rates[name]), refused[name]) for name, _, _ in cases],
            rates)


def ratio_spread(ours: list[float], theirs: list[float]) -> str:
    """Per-round ratios ours / theirs (same round): their median and min-max."""
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    return (f"per round {statistics.median(ratios):.2f}x "
            f"({min(ratios):.2f}-{max(ratios):.2f})")


# -- accuracy ---------------------------------------------------------------------------------

async def bench_accuracy(acquire: Callable[[], Awaitable[Any]], seconds: float
                         ) -> dict[str, float]:
    gc.collect()
    ts: list[float] = []
    append, mono = ts.append, time.monotonic
    cpu0, t0 = time.process_time(), mono()
    end = t0 + seconds
    while mono() < end:
        await acquire()
        append(mono() - t0)
    wall, cpu = mono() - t0, time.process_time() - cpu0
    ts = [t for t in ts if t < seconds]
    steady = [t for t in ts if t >= STEADY_FROM]
    steady_rate = len(steady) / (seconds - STEADY_FROM)
    return {"count": len(ts), "rate": len(ts) / seconds, "steady": steady_rate,
            "cpu": cpu / wall}


def accuracy_cases() -> list[tuple[str, Callable[[], Callable[[], Awaitable[Any]]]]]:
    cases: list[tuple[str, Callable[[], Callable[[], Awaitable[Any]]]]] = [
        ("TokenBucket(2000, 2000), starts full (default)",
         lambda: TokenBucketRateLimiter(ACC_RATE, ACC_RATE).acquire),
        ("TokenBucket(2000, 2000, initial_tokens=0)",
         lambda: TokenBucketRateLimiter(ACC_RATE, ACC_RATE, initial_tokens=0).acquire),
        ("LeakyBucket(2000, capacity=20)", lambda: LeakyBucketRateLimiter(ACC_RATE, 20).acquire),
        ("SlidingWindow(2000 per 1 s, 10 sub-windows)",
         lambda: SlidingWindowRateLimiter(ACC_RATE, 1.0).acquire),
        ("MultiTier(global 4000/s, consumer 2000/s)",
         lambda: MultiTierRateLimiter([("global", 2 * ACC_RATE, 2 * ACC_RATE),
                                       ("consumer", ACC_RATE, ACC_RATE)]).acquire),
    ]
    try:
        import aiolimiter

        cases.append(("aiolimiter AsyncLimiter(2000, 1)",
                      lambda: aiolimiter.AsyncLimiter(ACC_RATE, 1.0).acquire))
    except ImportError:
        pass
    return cases


def fmt(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    args = parser.parse_args()
    repeats, seconds, acc_s = (3, 0.2, 2.0) if args.quick else (5, 0.9, 5.0)
    out: list[str] = []
    emit = out.append
    from faust_backpressure.testing.chaos_report import git_commit

    emit(f"Command: `PYTHONPATH=. python bench/limiters.py{' --quick' if args.quick else ''}`, "
         f"{time.strftime('%Y-%m-%d %H:%M %Z')}, commit {git_commit()}; "
         f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
         f"load {os.getloadavg()[0]:.2f}.")
    emit("")
    emit(f"### try_acquire(1) throughput, never refusing (median of {repeats} x {seconds} s)")
    emit("")
    emit("| limiter | ops/s | min-max | ns/op | vs minimal bucket | refused |")
    emit("| --- | ---: | --- | ---: | ---: | ---: |")
    rows, rounds = await bench_throughput(repeats, seconds)
    ref = rows[0][1]
    for name, rate, refused in rows:
        emit(f"| {name} | {fmt(rate)} | {fmt(min(rounds[name]))}-{fmt(max(rounds[name]))} "
             f"| {1e9 / rate:.0f} | {rate / ref * 100:.1f}% | {refused} |")
    ours_name = next(n for n, _, _ in rows if "TokenBucketRateLimiter" in n)
    ours = next(r for n, r, _ in rows if n == ours_name)
    aio_name = next((n for n, _, _ in rows if n.startswith("aiolimiter")), None)
    emit("")
    emit(f"TokenBucketRateLimiter: **{ours / ref * 100:.0f}% of the minimal bucket** (target "
         f">= 75%; {ratio_spread(rounds[ours_name], rounds[rows[0][0]])})"
         + (f", **{ours / dict((n, r) for n, r, _ in rows)[aio_name]:.1f}x aiolimiter** "
            f"(target >= 4x; {ratio_spread(rounds[ours_name], rounds[aio_name])})."
            if aio_name else "."))
    emit("")
    emit(f"### Accuracy: {ACC_RATE}/s, one greedy consumer `await acquire()`, {acc_s:.0f} s")
    emit("")
    emit("| limiter | permits | achieved/s (incl. burst) | steady/s (t >= 1 s) "
         "| steady error | CPU / wall |")
    emit("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, setup in accuracy_cases():
        r = await bench_accuracy(setup(), acc_s)
        err = (r["steady"] - ACC_RATE) / ACC_RATE * 100
        emit(f"| {name} | {r['count']:.0f} | {r['rate']:.0f} | {r['steady']:.1f} | "
             f"{err:+.2f}% | {r['cpu'] * 100:.1f}% |")
        print(f"  .. {name}: steady {r['steady']:.1f}/s", file=sys.stderr, flush=True)
    emit("")
    emit("Steady error target: within 1%. CPU / wall = process CPU time over wall time "
         "while the consumer waits; target < 5% of a core.")
    text = "\n".join(out) + "\n"
    print(text)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "limiters.md")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    print(f"(saved to {path})", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
