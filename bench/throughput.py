#!/usr/bin/env python3
"""Throughput of topic-to-topic forwarding, ways side by side (issue 23, docs/batching.md).

Run: ``PYTHONPATH=. python bench/throughput.py [--records N] [--rounds R] [--output FILE]``.
Uses ``$KAFKA_BOOTSTRAP_SERVERS`` or starts its own broker. A source topic (4 partitions,
200-byte values) is filled once; then every way forwards all of it to a sink topic, each run in
a fresh process (``--way``) with a new consumer group, rounds interleaved with the order
rotated per round, after one warm-up round. A run is timed from the first record its code sees
to the last output flushed (acked by Kafka); CPU is the process's CPU time over the same span,
per event. The full settings of issue 23: ``--records 100000 --rounds 5``.

``--start-hold S`` (batch ways): a batch way's first batch, once through its gates, waits until
``S`` s after its first record was fetched, and its clock starts then. Every way then starts
from the same queues, whatever its gates waited at start (a distributed limiter's first lease,
reported apart): what is compared is the rate once running, not the start.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.figures import median_interval
from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.tables import DistributedRateLimiterFactory
from faust_backpressure.testing.broker import kafka_bootstrap
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import create_topics, produce
from faust_backpressure.testing.settings import fast_faust_settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "throughput.md"
BATCH = 500
WAYS = {
    "faust_agent": "plain Faust agent, one event at a time (`stream.items()`, `await topic.send`)",
    "take_events": "Faust agent over `stream.take_events(500, within=0.05)`",
    "raw": "raw aiokafka consume -> produce (`getmany`, `send`, commit per batch, no flush)",
    "raw_safe": "raw aiokafka, at-least-once safe (`getmany`, `send`, flush, then commit)",
    "pipeline": "our per-event pipeline (`process=`)",
    "batch": "our batch pipeline (`process_batch=`), at_least_once",
    "batch_eos": "our batch pipeline, exactly_once (one transaction per batch)",
    "batch_limited": "our batch pipeline under a distributed limiter that never binds",
    "batch_keyed": "our batch pipeline under a keyed limit that never binds (a key a record)",
    "batch_keyed_fn": "the same with `key=` and `cost=` functions (each record as an event)",
}


class Meter:
    """First record seen -> last output flushed: wall time and process CPU time; and the
    steady rate, between the records that cross 20 % and 80 % of the run (a way whose start
    waits, e.g. for a first lease, starts its window with its queues already full)."""

    def __init__(self, records: int, hold: float = 0.0) -> None:
        self.records = records
        self.hold = hold  # --start-hold
        self.count = 0
        self.t0 = self.cpu0 = 0.0
        self.done = asyncio.Event()
        self.marks: list[tuple[int, float, float]] = []  # (count, time, CPU) at 20 %, 80 %
        # A limited way's batches refused at once (taken a permit at a time): how many, and
        # their waits in s, over the run and in the steady window (see _time_gate)
        self.gate = {"gate_waits": 0.0, "gate_wait_s": 0.0, "steady_gate_waits": 0.0,
                     "steady_gate_wait_s": 0.0}

    def seen(self, n: int = 1) -> None:
        if not self.count:
            self.t0, self.cpu0 = time.perf_counter(), time.process_time()
        self.count += n
        if len(self.marks) < 2 and self.count >= (0.2, 0.8)[len(self.marks)] * self.records:
            self.marks.append((self.count, time.perf_counter(), time.process_time()))
        if self.count >= self.records:
            self.done.set()

    def result(self) -> dict[str, float]:
        wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.cpu0
        (c20, t20, cpu20), (c80, t80, cpu80) = self.marks
        return {"rate": self.count / wall, "cpu_us": cpu / self.count * 1e6,
                "steady": (c80 - c20) / (t80 - t20),
                "steady_cpu_us": (cpu80 - cpu20) / (c80 - c20) * 1e6, **self.gate}


def _app(guarantee: str = "at_least_once") -> faust.App:
    return faust.App(f"bench-tp-{uuid.uuid4().hex[:8]}", datadir=tempfile.mkdtemp(),
                     processing_guarantee=guarantee,
                     **fast_faust_settings(broker=f"kafka://{os.environ['BENCH_BOOTSTRAP']}",
                                           broker_commit_interval=1.0))


def _raw_topic(app: faust.App, name: str) -> Any:
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw")


async def _run_faust(app: faust.App, meter: Meter,
                     produced: Callable[[], int] | None = None) -> dict[str, float]:
    async with running_app(app):
        await asyncio.wait_for(meter.done.wait(), timeout=600)
        while produced is not None and produced() < meter.records:
            await asyncio.sleep(0.002)
        await app.producer.flush()
        return meter.result()


async def way_faust_agent(source: str, sink: str, meter: Meter) -> dict[str, float]:
    app = _app()
    dst = _raw_topic(app, sink)

    async def forward(stream: Any) -> None:
        async for key, value in stream.items():
            await dst.send(key=key, value=value)
            meter.seen()

    app.agent(_raw_topic(app, source), name="forward")(forward)
    return await _run_faust(app, meter)


async def way_take_events(source: str, sink: str, meter: Meter) -> dict[str, float]:
    app = _app()
    dst = _raw_topic(app, sink)

    async def forward(stream: Any) -> None:
        async for events in stream.take_events(BATCH, within=0.05):
            for event in events:
                await dst.send(key=event.key, value=event.value)
            meter.seen(len(events))

    app.agent(_raw_topic(app, source), name="forward")(forward)
    return await _run_faust(app, meter)


async def _way_raw(source: str, sink: str, meter: Meter, flush: bool) -> dict[str, float]:
    bootstrap = os.environ["BENCH_BOOTSTRAP"]
    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap,
                                group_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await consumer.start()
    await producer.start()
    try:
        while meter.count < meter.records:
            batches = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
            for records in batches.values():
                for record in records:
                    await producer.send(sink, record.value, key=record.key)
                meter.seen(len(records))
            if flush:
                await producer.flush()
            await consumer.commit()
        await producer.flush()
        return meter.result()
    finally:
        await consumer.stop()
        await producer.stop()


async def way_raw(source: str, sink: str, meter: Meter) -> dict[str, float]:
    return await _way_raw(source, sink, meter, flush=False)


async def way_raw_safe(source: str, sink: str, meter: Meter) -> dict[str, float]:
    return await _way_raw(source, sink, meter, flush=True)


async def way_pipeline(source: str, sink: str, meter: Meter) -> dict[str, float]:
    app = _app()
    bp = Backpressure(app, settings=BackpressureSettings())

    def forward(value: bytes) -> bytes:
        meter.seen()
        return value

    pipe = bp.pipeline("forward", source=source, sink=sink, process=forward)
    return await _run_faust(app, meter, lambda: pipe.stats.produced)


async def _way_batch(source: str, sink: str, meter: Meter, guarantee: str,
                     limited: bool, keyed: str = "") -> dict[str, float]:
    app = _app(guarantee)
    bp = Backpressure(app, settings=BackpressureSettings())

    def forward(values: list[bytes]) -> list[bytes]:
        meter.seen(len(values))
        return values

    limiter: Any = (DistributedRateLimiterFactory.create_distributed(
        app, f"bench-{uuid.uuid4().hex[:6]}", 1e9, 1e9) if limited else None)
    if keyed:  # never binds: each key 1e9/s; "fn": the functions' path (BatchEvent per record)
        functions: dict[str, Any] = ({"key": lambda event: event.key,
                                      "cost": lambda event: 1} if keyed == "fn" else {})
        limiter = bp.rate_limit_per_key("bench", tokens_per_second=1e9, partitions=4,
                                        **functions)
    pipe = bp.pipeline("forward", source=source, sink=sink, process_batch=forward,
                       batch_size=BATCH, batch_timeout=0.05, limiter=limiter)
    if pipe.gate is not None:
        _time_gate(pipe.gate, meter)
    if meter.hold:
        _hold_start(pipe.batch, meter.hold)
    return await _run_faust(app, meter, lambda: pipe.stats.produced)


def _hold_start(runner: Any, hold: float) -> None:
    """``--start-hold``: the first batch, once through its gates, waits until ``hold`` s after
    the first record reached the runner (the runner's queues fill meanwhile)."""
    divert, gates = runner.divert, runner._gates
    first: list[float] = []

    def diverted(*args: Any) -> None:
        if not first:
            first.append(time.perf_counter())
        divert(*args)

    async def held(batch: Any) -> None:
        await gates(batch)
        if len(first) == 1:
            first.append(0.0)  # the first batch only
            await asyncio.sleep(max(0.0, first[0] + hold - time.perf_counter()))

    runner.divert, runner._gates = diverted, held


def _time_gate(gate: Any, meter: Meter) -> None:
    """Time the gate's slow path: a batch whose cost the limiter refused at once waits in
    ``acquire_by_one`` (the first lease's wait comes before the window; the rest is in it)."""
    by_one = gate.acquire_by_one

    async def timed(permits: int) -> None:
        started, steady = time.perf_counter(), len(meter.marks) == 1
        try:
            await by_one(permits)
        finally:
            waited = time.perf_counter() - started
            meter.gate["gate_waits"] += 1
            meter.gate["gate_wait_s"] += waited
            if steady:
                meter.gate["steady_gate_waits"] += 1
                meter.gate["steady_gate_wait_s"] += waited

    gate.acquire_by_one = timed


async def way_batch(source: str, sink: str, meter: Meter) -> dict[str, float]:
    return await _way_batch(source, sink, meter, "at_least_once", limited=False)


async def way_batch_eos(source: str, sink: str, meter: Meter) -> dict[str, float]:
    return await _way_batch(source, sink, meter, "exactly_once", limited=False)


async def way_batch_limited(source: str, sink: str, meter: Meter) -> dict[str, float]:
    return await _way_batch(source, sink, meter, "at_least_once", limited=True)


async def way_batch_keyed(source: str, sink: str, meter: Meter) -> dict[str, float]:
    return await _way_batch(source, sink, meter, "at_least_once", limited=False, keyed="key")


async def way_batch_keyed_fn(source: str, sink: str, meter: Meter) -> dict[str, float]:
    return await _way_batch(source, sink, meter, "at_least_once", limited=False, keyed="fn")


RUNNERS: dict[str, Callable[[str, str, Meter], Awaitable[dict[str, float]]]] = {
    name: globals()[f"way_{name}"] for name in WAYS}


def run_child(way: str, source: str, sink: str, records: int,
              hold: float = 0.0) -> dict[str, float]:
    """One run of ``way`` in a fresh process."""
    proc = subprocess.run(
        [sys.executable, __file__, "--way", way, "--source", source, "--sink", sink,
         "--records", str(records), "--start-hold", str(hold)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{way} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(json.loads(lines[-1]))


def _spread(values: list[float]) -> str:
    if len(values) < 4:
        return f"{min(values):,.0f}-{max(values):,.0f}"
    q = statistics.quantiles(values, n=4)
    return f"{min(values):,.0f}-{max(values):,.0f} (IQR {q[2] - q[0]:,.0f})"


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1]).stdout.strip()


def _ways_option(ways: list[str], hold: float) -> str:
    return ("" if ways == list(WAYS) else " --ways " + ",".join(ways)) + (
        f" --start-hold {hold:g}" if hold else "")


def report(results: dict[str, list[dict[str, float]]], records: int, rounds: int,
           ways: list[str], hold: float = 0.0) -> str:
    med = {w: statistics.median(r["rate"] for r in results[w]) for w in ways}
    steady = {w: statistics.median(r.get("steady", math.nan) for r in results[w]) for w in ways}
    cpu = {w: statistics.median(r["cpu_us"] for r in results[w]) for w in ways}
    base = med.get("faust_agent")
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Command: `PYTHONPATH=. python bench/throughput.py --records {records} --rounds "
        f"{rounds}{_ways_option(ways, hold)}`, {when}; commit {_commit()}; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f} at the end; faust-streaming "
        f"{faust.__version__}, local broker.",
        "",
        f"{records:,} records (4 partitions, 200-byte values) forwarded topic to topic by one "
        "process per run; one warm-up round, then rounds interleaved (order rotated). Timed "
        "from the first record the way's code sees to its last output flushed"
        + (f"; batch ways start {hold:g} s after their first record was fetched (--start-hold)"
           if hold else "") + ".",
        "",
        "| way | median events/s | spread (min-max) | x plain agent | median CPU µs/event "
        "| steady events/s (20-80 %) |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for w in ways:
        rates = [r["rate"] for r in results[w]]
        ratio = f"{med[w] / base:.2f}x" if base else "-"
        lines.append(f"| {WAYS[w]} | {med[w]:,.0f} | {_spread(rates)} | {ratio} | "
                     f"{cpu[w]:.1f} | {steady[w]:,.0f} |")
    lines.append("")
    checks: list[tuple[str, str, float | None]] = [  # None: reported, no target
        ("batch", "faust_agent", 5.0), ("batch", "raw_safe", 0.5),
        ("batch_eos", "faust_agent", 3.0), ("batch_limited", "batch", 0.97),
        ("pipeline", "faust_agent", 0.97), ("batch_keyed", "batch", None),
        ("batch_keyed_fn", "batch_keyed", None)]
    for way, against, target in checks:
        if way in med and against in med:
            # without a start hold the limited way's whole-run window starts after its first
            # lease, with full queues (1.20-1.28x of the unlimited way): read the steady rates
            basis = steady if way == "batch_limited" and not hold else med
            ratio = basis[way] / basis[against]
            verdict = ("(reported)" if target is None else f"(target >= {target}x): "
                       f"{'met' if ratio >= target else 'NOT met'}")
            lines.append(f"- `{way}` / `{against}`{' (steady rates)' * (basis is steady)}: "
                         f"**{ratio:.2f}x** {verdict}")
    if "batch_limited" in med and "batch" in med:
        lines.extend(_limited_lines(results["batch_limited"], results["batch"]))
    return "\n".join(lines) + "\n"


def _median_interval(values: list[float]) -> str:
    median, low, high = median_interval(values)
    return f"{median:.3f} ({low:.3f}-{high:.3f})"


def _limited_lines(limited: list[dict[str, float]], batch: list[dict[str, float]]) -> list[str]:
    """Per round: the limited way's rates over the unlimited one's, CPU per event in the
    steady window, and the limiter's waits."""
    def ratios(key: str) -> list[float]:
        return [a.get(key, math.nan) / b.get(key, math.nan)
                for a, b in zip(limited, batch, strict=True)]

    def cpu(runs: list[dict[str, float]]) -> str:
        values = [r.get("steady_cpu_us", math.nan) for r in runs]
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    whole, steady = ratios("rate"), ratios("steady")
    cpu_ratios = ratios("steady_cpu_us")
    return [
        "- `batch_limited` / `batch`, whole-run rates per round: "
        + ", ".join(f"{r:.2f}" for r in whole) + f" (median {statistics.median(whole):.2f})",
        "- `batch_limited` / `batch`, steady rates per round: "
        + ", ".join(f"{r:.2f}" for r in steady) + f" (median {statistics.median(steady):.2f})",
        f"- CPU µs/event in the steady window, median (min-max): `batch` {cpu(batch)}, "
        f"`batch_limited` {cpu(limited)}",
        "- paired by round, median and 95 % bootstrap interval of the median: whole-run rate "
        f"ratio {_median_interval(whole)}, steady rate ratio {_median_interval(steady)}, "
        f"steady CPU µs/event ratio (limited / batch) {_median_interval(cpu_ratios)}",
        "- `batch_limited`: batches refused at once by the limiter (taken a "
        "permit at a time) and their wait per round, all / in the steady window: "
        + ", ".join(f"{r.get('gate_waits', 0):.0f} in {r.get('gate_wait_s', 0):.2f} s"
                    f" / {r.get('steady_gate_waits', 0):.0f} in "
                    f"{r.get('steady_gate_wait_s', 0):.2f} s" for r in limited)]


async def fill(bootstrap: str, records: int) -> tuple[str, str]:
    run = uuid.uuid4().hex[:6]
    source, sink = f"bench-tp-src-{run}", f"bench-tp-sink-{run}"
    await create_topics(bootstrap, {source: 4, sink: 4})
    pad = b"x" * 190
    await produce(bootstrap, source,
                  ((b"k%06d" % i, b"%08d" % i + pad) for i in range(records)), linger_ms=20)
    return source, sink


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--start-hold", type=float, default=0.0,
                        help="batch ways: start S s after the first record was fetched")
    parser.add_argument("--way", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--sink", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.way:  # a child: one run
        meter = Meter(args.records, args.start_hold)
        print(json.dumps(asyncio.run(RUNNERS[args.way](args.source, args.sink, meter))))
        return
    ways = args.ways.split(",")
    with kafka_bootstrap() as bootstrap:
        os.environ["BENCH_BOOTSTRAP"] = bootstrap
        source, sink = asyncio.run(fill(bootstrap, args.records))
        results: dict[str, list[dict[str, float]]] = {w: [] for w in ways}
        for way in ways:  # warm-up
            run_child(way, source, sink, args.records, args.start_hold)
        for r in range(args.rounds):
            shift = r % len(ways)
            for way in ways[shift:] + ways[:shift]:
                result = run_child(way, source, sink, args.records, args.start_hold)
                results[way].append(result)
                print(f"round {r + 1}: {way:14} {result['rate']:10,.0f} events/s "
                      f"{result['cpu_us']:6.1f} us CPU/event", flush=True)
    text = report(results, args.records, args.rounds, ways, args.start_hold)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
