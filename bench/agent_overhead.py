#!/usr/bin/env python3
"""Overhead of ``@bp.rate_limit`` on a Faust agent, at a rate that never binds.

Run: ``PYTHONPATH=. python bench/agent_overhead.py [--records N] [--rounds R]``. Uses
``$KAFKA_BOOTSTRAP_SERVERS`` or starts its own broker. One topic is filled once; then, in one
process and round-robin (plain, decorated, decorated, plain, ...), a fresh in-process app (new
consumer group) forwards all of it to a sink topic, as the plain agent of the anchors does. The
rate is ``(N - 1) / (last event - first event)`` seen by the body (startup and group join are
excluded). Prints a markdown report and writes ``bench/results/agent_overhead.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import faust

from bench.figures import median_interval
from faust_backpressure.agents.rate_limit import RateLimitGate
from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.testing.broker import kafka_bootstrap
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import create_topics, produce
from faust_backpressure.testing.settings import fast_faust_settings

RESULTS = Path(__file__).resolve().parent / "results" / "agent_overhead.md"


async def one_run(bootstrap: str, source: str, sink: str, records: int, decorated: bool,
                  datadir: str) -> tuple[float, float]:
    app = faust.App(f"bench-{uuid.uuid4().hex[:8]}", datadir=datadir,
                    **fast_faust_settings(broker=f"kafka://{bootstrap}"))
    src = app.topic(source, key_type=bytes, value_type=bytes,
                    key_serializer="raw", value_serializer="raw")
    dst = app.topic(sink, key_type=bytes, value_type=bytes,
                    key_serializer="raw", value_serializer="raw")
    seen = 0
    first = last = cpu_first = cpu_last = 0.0
    done = asyncio.Event()

    async def forward(stream: faust.StreamT[bytes]) -> None:
        nonlocal seen, first, last, cpu_first, cpu_last
        async for key, value in stream.items():
            await dst.send(key=key, value=value)
            seen += 1
            if seen == 1:
                first, cpu_first = time.perf_counter(), time.process_time()
            elif seen >= records:
                last, cpu_last = time.perf_counter(), time.process_time()
                done.set()

    if decorated:
        bp = Backpressure(app, settings=BackpressureSettings())
        # Never binds: what is measured is the decorator's per-event cost.
        fun: Any = bp.rate_limit(TokenBucketRateLimiter(1e12, 1e12))(forward)
    else:
        fun = forward
    app.agent(src, name="forward")(fun)
    async with running_app(app):
        await asyncio.wait_for(done.wait(), timeout=300)
    return (records - 1) / (last - first), (cpu_last - cpu_first) / (records - 1) * 1e6


async def gate_cost_in_stream(events: int = 200_000, repeats: int = 5) -> float:
    """CPU µs the gate adds per event in Faust's own stream loop (no broker: a stream over a
    range), median of ``repeats`` plain/gated pairs: the decorator's intrinsic cost."""
    async def cpu_per_event(gated: bool) -> float:
        app = faust.App(f"bench-micro-{uuid.uuid4().hex[:8]}", broker="kafka://127.0.0.1:1")
        stream = app.stream(range(events))
        if gated:
            gate = RateLimitGate(app, TokenBucketRateLimiter(1e12, 1e12))
            stream.add_processor(gate._processor(stream))  # what install() adds per event
        began = time.process_time()
        async for _ in stream:
            pass
        return (time.process_time() - began) / events * 1e6

    costs = []
    for _ in range(repeats):
        plain = await cpu_per_event(False)
        costs.append(await cpu_per_event(True) - plain)
    return statistics.median(costs)


def median_ratio_interval(plain: list[float], decorated: list[float]) -> tuple[float, float]:
    """95% bootstrap interval of the median per-round ratio decorated / plain."""
    ratios = [d / p for p, d in zip(plain, decorated, strict=True)]
    _, low, high = median_interval(ratios, seed=7)
    return low, high


async def measure(bootstrap: str, records: int, rounds: int) -> str:
    run = uuid.uuid4().hex[:6]
    source, sink = f"bench-src-{run}", f"bench-sink-{run}"
    await create_topics(bootstrap, {source: 4, sink: 4})
    await produce(bootstrap, source,
                  ((b"k%06d" % i, b"v%06d" % i) for i in range(records)), linger_ms=20)
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as datadir:
        for decorated in (False, True):  # warm-up: broker and both code paths
            await one_run(bootstrap, source, sink, records, decorated, datadir)
        for r in range(rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            for decorated in order:
                rate, cpu_us = await one_run(bootstrap, source, sink, records, decorated,
                                             datadir)
                rates[decorated].append(rate)
                cpu[decorated].append(cpu_us)
                print(f"round {r + 1}: {'decorated' if decorated else 'plain'} "
                      f"{rate:,.0f} events/s, {cpu_us:.1f} us CPU/event", flush=True)
    gate_us = await gate_cost_in_stream()
    plain_cpu = statistics.median(cpu[False])
    plain, deco = statistics.median(rates[False]), statistics.median(rates[True])
    ratios = [d / p for p, d in zip(rates[False], rates[True], strict=True)]
    low, high = median_ratio_interval(rates[False], rates[True])
    # CPU per event: plain / decorated, so that > 100% would mean the gate saves CPU.
    cpu_low, cpu_high = median_ratio_interval(cpu[True], cpu[False])
    cpu_ratios = [p / d for p, d in zip(cpu[False], cpu[True], strict=True)]
    from faust_backpressure.testing.chaos_report import git_commit
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    lines = [
        f"Command: `PYTHONPATH=. python bench/agent_overhead.py --records {records} --rounds "
        f"{rounds}`, {when}, commit {git_commit()}; Python {platform.python_version()}, "
        f"{platform.machine()}, "
        f"{os.cpu_count()} CPUs, load {load:.2f}; faust-streaming {faust.__version__}, "
        "Apache Kafka 3.9.1 (local KRaft broker).",
        "",
        f"One agent forwarding {records:,} records (4 partitions) topic to topic; rounds "
        "interleaved; the decorated agent uses `@bp.rate_limit(TokenBucketRateLimiter(1e12, "
        "1e12))` (never binds). CPU is the worker process's CPU time between the first and "
        "the last event, per event.",
        "",
        "| agent | median events/s | median CPU µs/event | runs (events/s) |",
        "| --- | ---: | ---: | --- |",
        f"| plain Faust agent | {plain:,.0f} | {statistics.median(cpu[False]):.1f} | "
        + ", ".join(f"{x:,.0f}" for x in rates[False]) + " |",
        f"| `@bp.rate_limit` agent | {deco:,.0f} | {statistics.median(cpu[True]):.1f} | "
        + ", ".join(f"{x:,.0f}" for x in rates[True]) + " |",
        "",
        f"Throughput decorated / plain: **{deco / plain:.1%}** of medians (target >= 97%); "
        f"median per-round ratio {statistics.median(ratios):.1%}, 95% bootstrap interval "
        f"[{low:.1%}, {high:.1%}]; per-round: {', '.join(f'{x:.1%}' for x in ratios)}.",
        "",
        f"CPU per event plain / decorated: median per-round {statistics.median(cpu_ratios):.1%}, "
        f"95% bootstrap interval [{cpu_low:.1%}, {cpu_high:.1%}]; per-round: "
        f"{', '.join(f'{x:.1%}' for x in cpu_ratios)}.",
        "",
        f"The gate's own cost, measured without the broker (a Faust stream over a range, "
        f"gate processor vs none): **{gate_us:.2f} µs CPU per event**, against "
        f"{plain_cpu:.0f} µs per event for the plain agent above: an "
        f"intrinsic bound of {plain_cpu / (plain_cpu + gate_us):.1%} "
        "of the plain agent's throughput when the worker is CPU-bound.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with kafka_bootstrap() as bootstrap:
        report = asyncio.run(measure(bootstrap, args.records, args.rounds))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)
    print()
    print(report)
