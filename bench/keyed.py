#!/usr/bin/env python3
"""A plain Faust agent against the same agent under a keyed limit that never refuses, over many
distinct keys (one event per key).

Run: ``PYTHONPATH=. python bench/keyed.py [--keys N] [--rounds R]``. Uses
``$KAFKA_BOOTSTRAP_SERVERS`` or starts its own broker. One topic is filled once (N records,
N distinct keys, 4 partitions); then, in one process and round-robin (plain, keyed, keyed,
plain, ...), a fresh in-process app (new consumer group, fresh data dir) forwards all of it to a
sink topic. The rate is ``(N - 1) / (last event - first event)`` seen by the body. After each
keyed run: the process RSS and the size of the keyed table's RocksDB files.

In the same rounds, a Redis-backed peer: the same agent calling a per-key ``limits``
MovingWindowRateLimiter (async RedisStorage, redis-py) once per event against a local
``redis-server`` (skipped with a note when it or the packages are missing).

Then recovery: a keyed run whose limit binds for every key (burst 1, one token per 1,000 s:
each key's one event empties its bucket, so the table holds N entries), then a fresh app
(fresh data dir, same app id) in its place: seconds from its start until Faust has restored
the table from the changelog (the table's recovery callback), entries restored, changelog
records. Prints a markdown report and writes ``bench/results/keyed-<N>.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
import psutil

from bench.redis_local import redis_missing, redis_server, redis_version
from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.testing.broker import kafka_bootstrap
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import create_topics, end_offsets, produce
from faust_backpressure.testing.settings import fast_faust_settings

RESULTS = Path(__file__).resolve().parent / "results"
PARTITIONS = 4
KINDS = ("plain", "keyed", "redis")


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def limits_peer(port: int) -> Callable[[bytes], Awaitable[bool]]:
    """One ``limits`` call per event: a per-key moving window in Redis that never refuses."""
    from limits import RateLimitItemPerSecond
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import MovingWindowRateLimiter

    limiter = MovingWindowRateLimiter(
        RedisStorage(f"async+redis://127.0.0.1:{port}", implementation="redispy"))
    item = RateLimitItemPerSecond(10**9, 1)

    async def hit(key: bytes) -> bool:
        return await limiter.hit(item, key.decode())

    return hit


async def one_run(bootstrap: str, source: str, sink: str, records: int, kind: str,
                  redis_port: int | None = None) -> tuple[float, float, int, int]:
    """events/s, CPU µs per event, RSS after, bytes of the keyed table's store."""
    app_id = f"bench-keyed-{uuid.uuid4().hex[:8]}"
    keyed = kind == "keyed"
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
        hit = limits_peer(redis_port) if kind == "redis" and redis_port else None

        async def forward(stream: faust.StreamT[bytes]) -> None:
            nonlocal seen, first, last, cpu_first, cpu_last
            async for key, value in stream.items():
                if hit is not None and not await hit(key):
                    raise RuntimeError("the Redis peer refused: the limit is meant not to")
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


async def recovery(bootstrap: str, source: str, records: int) -> tuple[float, int, int, float]:
    """A keyed run that leaves every key's bucket empty, then a fresh app (fresh data dir, same
    app id) in its place: seconds from its start until the table is restored, entries
    restored, changelog records, seconds to list the restored keys."""
    app_id = f"bench-keyed-rec-{uuid.uuid4().hex[:8]}"

    def make(datadir: str) -> tuple[faust.App, Any, asyncio.Event]:
        app = faust.App(app_id, datadir=datadir, store="rocksdict://",
                        **fast_faust_settings(broker=f"kafka://{bootstrap}"))
        src = app.topic(source, key_type=bytes, value_type=bytes,
                        key_serializer="raw", value_serializer="raw")
        bp = Backpressure(app, settings=BackpressureSettings())
        limit = bp.rate_limit_per_key("bench", tokens_per_second=1e-3, burst_capacity=1,
                                      on_limit="shed", partitions=PARTITIONS)
        seen = 0
        done = asyncio.Event()

        async def count(stream: faust.StreamT[bytes]) -> None:
            nonlocal seen
            async for _ in stream:
                seen += 1
                if seen >= records:
                    done.set()

        app.agent(src, name="count")(limit(count))
        return app, limit, done

    with tempfile.TemporaryDirectory() as datadir:
        app, limit, done = make(datadir)
        async with running_app(app):
            await asyncio.wait_for(done.wait(), timeout=1800)
            await asyncio.sleep(2.0)  # the table's last changelog writes
        changelog = limit.table.changelog_topic.get_topic_name()
    with tempfile.TemporaryDirectory() as datadir:
        app, limit, _ = make(datadir)
        recovered = asyncio.Event()
        limit.table.on_recover(lambda: _set(recovered))
        began = time.perf_counter()
        async with running_app(app):
            await asyncio.wait_for(recovered.wait(), timeout=1800)
            seconds = time.perf_counter() - began
            # what the gate's index of stored keys does once after each recovery
            listing = time.perf_counter()
            restored = sum(1 for _ in limit.table.data)
            listing = time.perf_counter() - listing
    records_in = sum((await end_offsets(bootstrap, changelog)).values())
    return seconds, restored, records_in, listing


async def _set(event: asyncio.Event) -> None:
    event.set()


async def measure(bootstrap: str, keys: int, rounds: int, peer_rounds: int,
                  recovery_keys: int) -> str:
    run = uuid.uuid4().hex[:6]
    source, sink = f"bench-keyed-src-{run}", f"bench-keyed-sink-{run}"
    await create_topics(bootstrap, {source: PARTITIONS, sink: PARTITIONS})
    await produce(bootstrap, source,
                  ((b"customer-%07d" % i, b"v%07d" % i) for i in range(keys)), linger_ms=20)
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    cpu: dict[str, list[float]] = {kind: [] for kind in KINDS}
    rss: list[int] = []
    stores: list[int] = []
    missing = redis_missing("limits", "redis")
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(redis_server()) if missing is None else None
        kinds = KINDS if port is not None else KINDS[:2]
        for r in range(rounds):
            now = kinds if r < peer_rounds else tuple(k for k in kinds if k != "redis")
            for kind in now if r % 2 == 0 else now[::-1]:
                rate, cpu_us, mem, store = await one_run(bootstrap, source, sink, keys, kind,
                                                         port)
                rates[kind].append(rate)
                cpu[kind].append(cpu_us)
                if kind == "keyed":
                    rss.append(mem)
                    stores.append(store)
                print(f"round {r + 1}: {kind} {rate:,.0f} events/s, "
                      f"{cpu_us:.1f} us CPU/event", flush=True)
    rec_s, restored, changelog_records, index_s = await recovery(bootstrap, source, recovery_keys)
    print(f"recovery: {rec_s:.1f} s, {restored:,} entries, {changelog_records:,} changelog "
          f"records, listing {index_s:.2f} s", flush=True)
    plain, keyed_rate = statistics.median(rates["plain"]), statistics.median(rates["keyed"])
    ratios = [k / p for p, k in zip(rates["plain"], rates["keyed"], strict=True)]
    if rates["redis"]:
        redis_row = (f"| `limits` MovingWindow, async RedisStorage (Redis {redis_version()}), one "
                     f"call per event | {statistics.median(rates['redis']):,.0f} | "
                     f"{statistics.median(cpu['redis']):.1f} | "
                     + ", ".join(f"{x:,.0f}" for x in rates["redis"]) + " |")
        redis_note = ("The Redis peer's CPU is this process's only (redis-server's own is not "
                      "counted).")
    else:
        redis_row, redis_note = "", f"Redis peer skipped: {missing}."
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Command: `PYTHONPATH=. python bench/keyed.py --keys {keys} --rounds {rounds} "
        f"--peer-rounds {peer_rounds} --recovery-keys {recovery_keys}`, "
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
        f"| plain Faust agent | {plain:,.0f} | {statistics.median(cpu['plain']):.1f} | "
        + ", ".join(f"{x:,.0f}" for x in rates["plain"]) + " |",
        f"| keyed limit | {keyed_rate:,.0f} | {statistics.median(cpu['keyed']):.1f} | "
        + ", ".join(f"{x:,.0f}" for x in rates["keyed"]) + " |",
        *([redis_row] if redis_row else []),
        "",
        f"Keyed / plain: **{keyed_rate / plain:.1%}** of medians (issue 15's target: >= 95%); "
        f"per-round: {', '.join(f'{x:.1%}' for x in ratios)}. {redis_note}",
        "",
        f"Recovery: a keyed run with a limit that binds for every key (burst 1, 0.001/s) left "
        f"{restored:,} entries in the table ({changelog_records:,} changelog records); a fresh "
        f"app (fresh data dir, same app id) had them restored **{rec_s:.1f} s** after its start "
        f"(group join included); listing the restored keys, as the gate does once after each "
        f"recovery to know which keys have a stored level, takes {index_s:.2f} s.",
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
    parser.add_argument("--peer-rounds", type=int, default=None,
                        help="rounds that also run the Redis peer (default: all)")
    parser.add_argument("--recovery-keys", type=int, default=None,
                        help="entries for the recovery phase (default: --keys)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    peer_rounds = args.rounds if args.peer_rounds is None else args.peer_rounds
    recovery_keys = args.keys if args.recovery_keys is None else args.recovery_keys
    with kafka_bootstrap() as bootstrap:
        report = asyncio.run(measure(bootstrap, args.keys, args.rounds, peer_rounds,
                                     min(recovery_keys, args.keys)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"keyed-{args.keys}.md").write_text(report)
    print()
    print(report)
