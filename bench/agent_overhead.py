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

from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.testing.broker import kafka_bootstrap
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import create_topics, produce
from faust_backpressure.testing.settings import fast_faust_settings

RESULTS = Path(__file__).resolve().parent / "results" / "agent_overhead.md"


async def one_run(bootstrap: str, source: str, sink: str, records: int, decorated: bool,
                  datadir: str) -> float:
    app = faust.App(f"bench-{uuid.uuid4().hex[:8]}", datadir=datadir,
                    **fast_faust_settings(broker=f"kafka://{bootstrap}"))
    src = app.topic(source, key_type=bytes, value_type=bytes,
                    key_serializer="raw", value_serializer="raw")
    dst = app.topic(sink, key_type=bytes, value_type=bytes,
                    key_serializer="raw", value_serializer="raw")
    seen = 0
    first = last = 0.0
    done = asyncio.Event()

    async def forward(stream: faust.StreamT[bytes]) -> None:
        nonlocal seen, first, last
        async for key, value in stream.items():
            await dst.send(key=key, value=value)
            seen += 1
            if seen == 1:
                first = time.perf_counter()
            elif seen >= records:
                last = time.perf_counter()
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
    return (records - 1) / (last - first)


async def measure(bootstrap: str, records: int, rounds: int) -> str:
    run = uuid.uuid4().hex[:6]
    source, sink = f"bench-src-{run}", f"bench-sink-{run}"
    await create_topics(bootstrap, {source: 4, sink: 4})
    await produce(bootstrap, source,
                  ((b"k%06d" % i, b"v%06d" % i) for i in range(records)), linger_ms=20)
    rates: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as datadir:
        await one_run(bootstrap, source, sink, records, False, datadir)  # warm-up
        for r in range(rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            for decorated in order:
                rate = await one_run(bootstrap, source, sink, records, decorated, datadir)
                rates[decorated].append(rate)
                print(f"round {r + 1}: {'decorated' if decorated else 'plain'} "
                      f"{rate:,.0f} events/s", flush=True)
    plain, deco = statistics.median(rates[False]), statistics.median(rates[True])
    ratios = [d / p for p, d in zip(rates[False], rates[True], strict=True)]
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    lines = [
        f"Command: `PYTHONPATH=. python bench/agent_overhead.py --records {records} --rounds "
        f"{rounds}`, {when}; Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load {load:.2f}; faust-streaming {faust.__version__}, "
        "Apache Kafka 3.9.1 (local KRaft broker).",
        "",
        f"One agent forwarding {records:,} records (4 partitions) topic to topic; rounds "
        "interleaved; the decorated agent uses `@bp.rate_limit(TokenBucketRateLimiter(1e12, "
        "1e12))` (never binds).",
        "",
        "| agent | median events/s | runs |",
        "| --- | ---: | --- |",
        f"| plain Faust agent | {plain:,.0f} | "
        + ", ".join(f"{x:,.0f}" for x in rates[False]) + " |",
        f"| `@bp.rate_limit` agent | {deco:,.0f} | "
        + ", ".join(f"{x:,.0f}" for x in rates[True]) + " |",
        "",
        f"Decorated / plain: **{deco / plain:.1%}** of medians (target >= 97%); per-round "
        f"ratios: {', '.join(f'{x:.1%}' for x in ratios)} "
        f"(median {statistics.median(ratios):.1%}).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with kafka_bootstrap() as bootstrap:
        report = asyncio.run(measure(bootstrap, args.records, args.rounds))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)
    print()
    print(report)
