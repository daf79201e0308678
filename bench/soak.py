#!/usr/bin/env python3
"""A soak (issue 25, not in CI): two workers of ``bench/soak_app.py`` for 30 minutes at a steady
rate that binds now and then; does anything grow?

Run (starts its own Kafka broker, or uses ``$KAFKA_BOOTSTRAP_SERVERS``)::

    PYTHONPATH=. .venv/bin/python bench/soak.py [--minutes 30] [--rate 60] [--limit 150]
        [--output soak]

The feeder sends ``--rate`` orders/s for 50 s of each minute and 3x that for the other 10 s
(the shared limit ``--limit`` binds then; the backlog drains in the next seconds: the average,
80/s by default, must stay well under what the slowest stage does, ~100/s for the keyed
stage on a loaded 2-core machine, or the backlog only grows); 1 order in 500 is not
JSON (the DLQ); 60 customers, so the per-customer limit (20/s) defers a few. Each
worker logs a ``soak-sample`` every 10 s (RSS, open fds, asyncio tasks, items held in the
library's components) and, once a minute after the warm-up, a ``soak-census``: the object
types grown since (``bench/soak_census.py``; the report lists the last one). After the run
the feed stops, the backlog drains (until nothing new arrives for 60 s), and every order must
be in the billed topic or the DLQ.

Verdict, after a ``--warmup`` (5 min): per worker, RSS within +10 MiB of its first sample
after the warm-up, fds other than RocksDB table files and tasks within +5 (the medians of
the first and the last 5 samples), open table files (``.sst``: RocksDB opens one per flush
and closes them as it compacts, a sawtooth) held to RocksDB's bounds: no fd on a deleted
table file, at most 6 per database, the live table data within 2x its peak in the first half
after the warm-up (+1 MiB); and no component holding more items at the end than 2x its peak
in the first half after the warm-up (+100). Writes
``bench/results/<output>.md``; worker logs are kept under ``$TMPDIR/fbp-soak/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from faust_backpressure.testing.broker import kafka_bootstrap
from faust_backpressure.testing.kafka_io import create_topics
from faust_backpressure.testing.workers import FaustWorker

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SAMPLE = re.compile(r"^\[(?P<at>[^\]]+)\].*soak-sample (?P<json>\{.*\})\s*$")
CENSUS = re.compile(r"^\[(?P<at>[^\]]+)\].*soak-census (?P<json>\{.*\})\s*$")


def order(i: int) -> bytes:
    if i % 500 == 499:
        return b"{not json %d" % i
    return json.dumps({"id": i, "customer": f"c{i % 60}", "quantity": 1 + i % 4}).encode()


async def feed(bootstrap: str, topic: str, rate: float, seconds: float,
               sent: list[int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    began = time.monotonic()
    try:
        while (elapsed := time.monotonic() - began) < seconds:
            burst = elapsed % 60 >= 50  # the last 10 s of each minute: 3x
            for _ in range(int(rate * (3 if burst else 1) / 10)):
                i = sent[0]
                await producer.send(topic, key=f"c{i % 60}".encode(), value=order(i))
                sent[0] += 1
            await asyncio.sleep(max(0.0, began + (int(elapsed * 10) + 1) / 10
                                    - time.monotonic()))
        await producer.flush()
    finally:
        await producer.stop()


async def accounted(bootstrap: str, topics: list[str], count: int, timeout: float) -> set[int]:
    """The ids in ``topics``: read until all ``count`` are there, or nothing new came for
    ``timeout`` seconds (a backlog still draining keeps the wait going)."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    ids: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(ids) < count and time.monotonic() < deadline:
            before = len(ids)
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    value = record.value or b""
                    try:
                        ids.add(int(json.loads(value)["id"]))
                    except (ValueError, KeyError, TypeError):
                        ids.add(int(value.rsplit(b" ", 1)[-1]))
            if len(ids) > before:
                deadline = time.monotonic() + timeout
    finally:
        await consumer.stop()
    return ids


def samples(log: Path, pattern: re.Pattern[str] = SAMPLE) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if m := pattern.match(line):
            found.append((m["at"], json.loads(m["json"])))
    return found


def other(sample: dict[str, Any], what: str) -> int:
    """``tasks``, or ``other_fds``: the open fds that are not RocksDB table files."""
    if what == "other_fds":
        return int(sample["fds"]) - int(sample.get("sst_fds", 0))
    return int(sample[what])


def verdict(rows: list[tuple[str, dict[str, Any]]], warmup_samples: int) -> list[str]:
    """What grew after the warm-up (empty: nothing)."""
    after = [s for _, s in rows[warmup_samples:]]
    if len(after) < 4:
        return [f"only {len(after)} samples after the warm-up"]
    first, last = after[0], after[-1]
    problems = []
    if last["rss_kib"] - first["rss_kib"] > 10 * 1024:
        problems.append(f"RSS grew {(last['rss_kib'] - first['rss_kib']) / 1024:.1f} MiB")
    for what in ("other_fds", "tasks"):  # medians of 5: a sample may catch sends in flight
        early = statistics.median(other(s, what) for s in after[:5])
        late = statistics.median(other(s, what) for s in after[-5:])
        if late - early > 5:
            problems.append(f"{what} grew from {early:g} to {late:g} (medians of 5 samples)")
    half = after[: len(after) // 2]
    if "live_sst_kib" in last:
        problems += table_file_problems(after, half)
    for name in last["held"]:
        peak = max(s["held"].get(name, 0) for s in half)
        if last["held"][name] > 2 * peak + 100:
            problems.append(f"{name} holds {last['held'][name]} items (peak {peak} before)")
    return problems


# Level 0 is compacted at 4 files (RocksDB's default, which Faust keeps); data this small
# fits one file in each level below, and a compaction writes its output before it deletes
# its inputs: 6 open table files per database at most.
SST_FILES_PER_DATABASE = 6


def table_file_problems(after: list[dict[str, Any]], half: list[dict[str, Any]]) -> list[str]:
    """RocksDB's open table files rise with flushes and fall with compactions (a sawtooth,
    not flat), so they are held to what RocksDB bounds them by: no fd kept on a deleted table
    file (a leak of them), at most ``SST_FILES_PER_DATABASE`` per database, and the live
    table data (60 customers and a few limiters: bounded) not growing."""
    problems = []
    deleted = statistics.median(s["sst_deleted_fds"] for s in after[-5:])
    if deleted > 0:
        problems.append(f"{deleted:g} fds on deleted table files (median of the last 5)")
    over = [s for s in after if s["sst_fds"] > SST_FILES_PER_DATABASE * s["dbs"]]
    if over:
        problems.append(f"{over[0]['sst_fds']} open table files for {over[0]['dbs']} "
                        f"databases (at most {SST_FILES_PER_DATABASE} each)")
    peak = max(s["live_sst_kib"] for s in half)
    if after[-1]["live_sst_kib"] > 2 * peak + 1024:
        problems.append(f"live table data {after[-1]['live_sst_kib']} KiB at the end, "
                        f"{peak} KiB at most in the first half after the warm-up")
    return problems


def table_file_peaks(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The open table files' peaks in each half after the warm-up (the criterion before
    RocksDB's bounds: shown, not judged)."""
    after = [s for _, s in rows]
    if len(after) < 4 or "sst_fds" not in after[-1]:
        return []
    half = len(after) // 2
    return ["", f"Open table files after the warm-up, peak in the first half "
            f"{max(s['sst_fds'] for s in after[:half])}, in the second "
            f"{max(s['sst_fds'] for s in after[half:])}; fds on deleted table files at most "
            f"{max(s.get('sst_deleted_fds', 0) for s in after)}.", ""]


def growers(log: Path) -> list[str]:
    """The types of object that grew the most from the end of the warm-up to the last
    census (bench/soak_census.py), and the allocation sites if tracemalloc ran."""
    found = [(at, c) for at, c in samples(log, CENSUS) if "grown" in c]
    if not found:
        return [""]
    at, last = found[-1]
    lines = ["", f"Objects by type, growth since the end of the warm-up (census at {at}; net "
             f"{last['net']:+,}; in generations 0 and 1: {last['young']}): "
             + ", ".join(f"{name} {n:+,}" for name, n in last["grown"]) + ".", ""]
    if last.get("clients"):
        lines += ["aiokafka clients (client id, topics it asks metadata for, 0 meaning all; "
                  "topics its metadata holds): "
                  + "; ".join(f"{c} {asked} {held}" for c, asked, held in last["clients"])
                  + ".", ""]
    if last.get("sites"):
        lines += ["Allocation sites by growth (tracemalloc): "
                  + "; ".join(f"{w} {kib:+,} KiB ({n:+,} blocks)" for w, kib, n in last["sites"])
                  + ".", ""]
    return lines


def report(args: argparse.Namespace, logs: dict[str, Path], count: int, lost: int,
           commit: str, loads: tuple[float, float]) -> tuple[str, bool]:
    warmup = int(args.warmup * 60 / 10)
    lines = [f"# Soak: {args.minutes:g} minutes, 2 workers, every feature at once", "",
             f"Date: {datetime.now().strftime('%Y-%m-%d %H:%M')} UTC; commit {commit}; "
             f"{os.cpu_count()} cores; load average (1 min) {loads[0]:.2f} before, "
             f"{loads[1]:.2f} after; command `PYTHONPATH=. .venv/bin/python bench/soak.py "
             f"--minutes {args.minutes:g} --rate {args.rate:g} --limit {args.limit:g}"
             f"{' --faust-table-defaults' if args.faust_table_defaults else ''}"
             f"{f' --warmup {args.warmup:g}' if args.warmup != 5 else ''}"
             f"{f' --tracemalloc {args.tracemalloc}' if args.tracemalloc else ''}"
             f"{' --collect' if args.collect else ''}"
             f" --output {args.output}`.", "",
             f"Orders: {count:,} sent, {lost} unaccounted for (in neither the billed topic "
             "nor the DLQ once nothing new arrived for 60 s).",
             ""]
    ok = lost == 0
    for name, log in logs.items():
        rows = samples(log)
        problems = verdict(rows, warmup)
        ok = ok and not problems
        lines += [f"## {name}: {'nothing grew' if not problems else '; '.join(problems)}", "",
                  "| at | RSS, MiB | RocksDB memtables, MiB | block caches, MiB "
                  "| Python objects | Python blocks | fds (SST files, databases) "
                  "| live table data, KiB | tasks | items held (largest three) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for at, s in rows[::6]:  # one a minute
            top = sorted(s["held"].items(), key=lambda kv: -kv[1])[:3]
            lines.append(f"| {at} | {s['rss_kib'] / 1024:.1f} | "
                         f"{s.get('memtable_kib', 0) / 1024:.1f} | "
                         f"{s.get('block_cache_kib', 0) / 1024:.1f} | {s.get('objects', '')} | "
                         f"{s.get('py_blocks', '')} | {s['fds']} ({s.get('sst_fds', '?')}, "
                         f"{s.get('dbs', '?')}) | {s.get('live_sst_kib', '?')} | "
                         f"{s['tasks']} | "
                         + ", ".join(f"{k} {v}" for k, v in top) + " |")
        lines += table_file_peaks(rows[warmup:])
        lines += growers(log)
    lines.append(f"Verdict: {'PASS' if ok else 'FAIL'} (after a {args.warmup:g}-minute warm-up: "
                 "RSS within +10 MiB, fds other than RocksDB table files and tasks within +5 "
                 "(medians of 5), no fd on a deleted table file, at most "
                 f"{SST_FILES_PER_DATABASE} open table files per database, live table data "
                 "within 2x its first-half peak + 1 MiB, no component "
                 "holding more than 2x its earlier peak + 100 items; nothing lost).")
    return "\n".join(lines) + "\n", ok


async def run(args: argparse.Namespace, bootstrap: str) -> int:
    run_id = uuid.uuid4().hex[:8]
    topics = {k: f"soak-{k}-{run_id}" for k in ("orders", "priced", "billed", "dlq")}
    await create_topics(bootstrap, {t: 4 if k != "dlq" else 1 for k, t in topics.items()})
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "FBP_APP_ID": f"soak-{run_id}",
           "FBP_SOURCE": topics["orders"], "FBP_SINK": topics["priced"],
           "FBP_BILLED": topics["billed"], "FBP_DLQ": topics["dlq"],
           "FBP_RATE": f"{args.limit:g}", "FBP_GUARANTEE": args.guarantee,
           "FBP_SOAK_FAUST_TABLE_DEFAULTS": "1" if args.faust_table_defaults else "",
           "FBP_SOAK_WARMUP": f"{args.warmup * 60:g}",
           "FBP_SOAK_TRACEMALLOC": f"{args.tracemalloc or ''}",
           "FBP_SOAK_COLLECT": "1" if args.collect else ""}
    keep = Path(tempfile.gettempdir()) / f"fbp-{args.output}"
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir(parents=True)
    workers = [FaustWorker("bench.soak_app", name=f"w{i}", env=env, cwd=REPO) for i in (1, 2)]
    loads = os.getloadavg()[0]
    # the code the workers run: read now, not after the run (a checkout may change meanwhile)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                            text=True, cwd=REPO).stdout.strip()
    sent = [0]
    try:
        for worker in workers:
            worker.start().wait_ready()
        print(f"soak: 2 workers ready; feeding {args.rate:g}/s for {args.minutes:g} min",
              flush=True)
        await feed(bootstrap, topics["orders"], args.rate, args.minutes * 60, sent)
        ids = await accounted(bootstrap, [topics["billed"], topics["dlq"]], sent[0], 60)
    finally:
        for worker in workers:
            worker.stop()
            shutil.copy(worker.log_path, keep / f"{worker.name}.log")
            worker.cleanup()
    lost = sent[0] - len(ids & set(range(sent[0])))
    text, ok = report(args, {w.name: keep / f"{w.name}.log" for w in workers}, sent[0], lost,
                      commit, (loads, os.getloadavg()[0]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.output}.md").write_text(text)
    print(text)
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0, help="minutes")
    parser.add_argument("--rate", type=float, default=60.0, help="orders/s fed (3x for "
                        "10 s of each minute: 80/s on average)")
    parser.add_argument("--limit", type=float, default=150.0, help="the shared limit, /s")
    parser.add_argument("--guarantee", default="at_least_once",
                        choices=["at_least_once", "exactly_once"])
    parser.add_argument("--output", default="soak")
    parser.add_argument("--faust-table-defaults", action="store_true",
                        help="open the library's tables with Faust's RocksDB sizes (64 MiB "
                        "write buffers, 2 GiB cache), as before ba80a94: the A/B of the RSS")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                        help="trace allocations in the workers (costs CPU) and report the "
                        "sites that grew")
    parser.add_argument("--collect", action="store_true", help="a full garbage collection "
                        "before each census (once a minute): live objects only, and what it "
                        "freed")
    args = parser.parse_args()
    with kafka_bootstrap() as bootstrap:
        return asyncio.run(run(args, bootstrap))


if __name__ == "__main__":
    sys.exit(main())
