#!/usr/bin/env python3
"""A plain Faust agent against the same agent under a keyed limit that never refuses, over many
distinct keys (one event per key).

Run: ``PYTHONPATH=. python bench/keyed.py [--keys N] [--rounds R]``. Uses
``$KAFKA_BOOTSTRAP_SERVERS`` or starts its own broker. One topic is filled once (N records,
N distinct keys, 4 partitions); then, in one process and round-robin (plain, keyed, keyed,
plain, ...), a fresh in-process app (new consumer group, fresh data dir) forwards all of it to a
sink topic. The rate is ``(N - 1) / (last event - first event)`` seen by the body. After each
keyed run: the process RSS and the size of the keyed table's RocksDB files. Prints a markdown
report and writes ``bench/results/keyed-<N>.md``.
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
import psutil

from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.testing.broker import kafka_bootstrap
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import create_topics, produce
from faust_backpressure.testing.settings import fast_faust_settings

RESULTS = Path(__file__).resolve().parent / "results"
PARTITIONS = 4


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def one_run(bootstrap: str, source: str, sink: str, records: int, keyed: bool
                  ) -> tuple[float, float, int, int]:
    """events/s, CPU µs per event, RSS after, bytes of the keyed table's store."""
    app_id = f"bench-keyed-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as datadir:
        app = faust.App(app_id, datadir=datadir, store="rocksdict://",
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

        fun: Any = forward
        if keyed:
            bp = Backpressure(app, settings=BackpressureSettings())
            # Never refuses: what is measured is the per-key bucket's cost (a table read and
            # write per event, and the removal of refilled entries).
            limit = bp.rate_limit_per_key("bench", tokens_per_second=1e9, burst_capacity=1e9,
                                          partitions=PARTITIONS)
            fun = limit(forward)
        app.agent(src, name="forward")(fun)
        async with running_app(app):
            await asyncio.wait_for(done.wait(), timeout=1800)
            rss = psutil.Process().memory_info().rss
        store = _du(Path(datadir)) if keyed else 0
    return ((records - 1) / (last - first), (cpu_last - cpu_first) / (records - 1) * 1e6,
            rss, store)


async def measure(bootstrap: str, keys: int, rounds: int) -> str:
    run = uuid.uuid4().hex[:6]
    source, sink = f"bench-keyed-src-{run}", f"bench-keyed-sink-{run}"
    await create_topics(bootstrap, {source: PARTITIONS, sink: PARTITIONS})
    await produce(bootstrap, source,
                  ((b"customer-%07d" % i, b"v%07d" % i) for i in range(keys)), linger_ms=20)
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    rss: list[int] = []
    stores: list[int] = []
    for r in range(rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for keyed in order:
            rate, cpu_us, mem, store = await one_run(bootstrap, source, sink, keys, keyed)
            rates[keyed].append(rate)
            cpu[keyed].append(cpu_us)
            if keyed:
                rss.append(mem)
                stores.append(store)
            print(f"round {r + 1}: {'keyed' if keyed else 'plain'} {rate:,.0f} events/s, "
                  f"{cpu_us:.1f} us CPU/event", flush=True)
    plain, keyed_rate = statistics.median(rates[False]), statistics.median(rates[True])
    ratios = [k / p for p, k in zip(rates[False], rates[True], strict=True)]
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Command: `PYTHONPATH=. python bench/keyed.py --keys {keys} --rounds {rounds}`, "
        f"{when}; Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; faust-streaming "
        f"{faust.__version__}, local Apache Kafka broker.",
        "",
        f"One agent forwarding {keys:,} records with {keys:,} distinct keys ({PARTITIONS} "
        "partitions) topic to topic; rounds interleaved; the keyed agent uses "
        "`@bp.rate_limit_per_key(..., tokens_per_second=1e9, burst_capacity=1e9)` (never "
        "refuses; one bucket per key in a rocksdict table).",
        "",
        "| agent | median events/s | median CPU µs/event | runs (events/s) |",
        "| --- | ---: | ---: | --- |",
        f"| plain Faust agent | {plain:,.0f} | {statistics.median(cpu[False]):.1f} | "
        + ", ".join(f"{x:,.0f}" for x in rates[False]) + " |",
        f"| keyed limit | {keyed_rate:,.0f} | {statistics.median(cpu[True]):.1f} | "
        + ", ".join(f"{x:,.0f}" for x in rates[True]) + " |",
        "",
        f"Keyed / plain: **{keyed_rate / plain:.1%}** of medians (issue 15's target: >= 95%); "
        f"per-round: {', '.join(f'{x:.1%}' for x in ratios)}.",
        "",
        f"After a keyed run: process RSS {statistics.median(rss) / 2**20:,.0f} MiB (the whole "
        f"benchmark process, broker client included), data dir (RocksDB of the keyed table, "
        f"before compaction) {statistics.median(stores) / 2**20:,.1f} MiB.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with kafka_bootstrap() as bootstrap:
        report = asyncio.run(measure(bootstrap, args.keys, args.rounds))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"keyed-{args.keys}.md").write_text(report)
    print()
    print(report)
