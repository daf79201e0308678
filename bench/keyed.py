#!/usr/bin/env python3
"""A plain Faust agent against the same agent under a keyed limit that binds for a share of
keys: several events per key, levels written to a RocksDB table and its changelog.

Run: ``PYTHONPATH=. python bench/keyed.py [--keys K] [--events-per-key E] [--hot-share H]
[--rounds R]``. Uses ``$KAFKA_BOOTSTRAP_SERVERS`` or starts its own broker.

The workload (one topic, 4 partitions, filled once): K distinct keys, E events each, in E
passes over all keys, each pass in its own shuffled order, so a key's events are spread
through the topic (on average K records apart; some closer). A share H of the keys (the hot
ones) get ``--hot-extra`` (default E) more events right after their first one: a burst. The
keyed agent runs ``@bp.rate_limit_per_key(..., tokens_per_second=--key-rate,
burst_capacity=E)`` with the default ``on_limit="defer"``:

* an ordinary key's E events all fit its burst: never refused, but each one leaves a level
  that is full again only ``1/rate`` s later (1 s by default, far above the 10 ms write-behind),
  so it is written to the table (RocksDB, on disk) and its changelog, and removed (a second
  table write, a tombstone) once full;
* a hot key's burst of ``1 + hot-extra`` events has E admitted and the rest deferred: each is
  sent to the deferral topic with its not-before time (1/rate s apart), the key's level
  counts it, and it comes back through the deferral agent a second or so later. The burst
  comes in the first pass, so the deferrals drain while the other passes run (as long as a
  pass takes longer than a deferral's round trip: at the default sizes, tens of seconds).

A deferred event comes back through Kafka: the gate's send waited in Faust's producer buffer
(busy with the table's changelog writes, before they were batched), and the consumer hands out
what it has already fetched from the source before the deferral topic's records. With Faust's
default ``consumer_max_fetch_size`` (1 MiB per partition, tens of thousands of these small
records) the deferred events came back only once the source was drained; so the default here is
64 KiB (``--fetch-bytes``, the same in both ways). A key whose events keep coming while one is
deferred has them deferred too, and deferred events that come back later than reserved shift
the key's next ones: such a record, back before its shifted time, goes back to the deferral
agent's heap until then (``held_back`` in the report; the gate used to sleep for the shift in
the agent's stream, holding every key's events: ``waits``). ``--hot-extra`` above E, or a pass
shorter than the deferrals' round trip (few keys), measures the deferral round trips more than
the per-event cost.

Then, round-robin in one process (plain, keyed; keyed, plain; ...), a fresh in-process app (new
consumer group, fresh data dir) forwards every record to a sink topic. The body of both agents
is the same: it sends the record on and marks its sequence number as seen; a run ends when
every input's number has been seen (every input forwarded once the deferrals drained). Rate:
``(inputs - 1) / (last output - first output)``, both as seen by the body just before the
send (deferral tails included); CPU: this process's CPU time (all threads: RocksDB's
included, the broker's not) over the same span, per input. Each run is checked after its app
stopped: no input missing, the sink grew by exactly the inputs (duplicates reported). After a
keyed run: the gate's counters, records in the table's changelog and the deferral topic, the
size of the data dir (the keyed table's RocksDB files) and the process RSS.

Optional, in the first ``--peer-rounds`` rounds (default 0): a Redis-backed peer, the same
agent calling a per-key ``limits`` MovingWindowRateLimiter (async RedisStorage, redis-py) once
per event against a local ``redis-server``, that never refuses.

Then recovery (``--recovery-keys N``, default K; 0 skips it): a keyed run over N records of N
distinct keys whose limit binds for every key (burst 1, one token per 1,000 s: each key's one
event empties its bucket, so the table holds N entries), then a fresh app (fresh data dir,
same app id) in its place: seconds from its start until Faust has restored the table from the
changelog (the table's recovery callback), entries restored, changelog records.

Prints a markdown report and writes ``bench/results/keyed-<K>x<E>.md`` (``--output NAME``:
``bench/results/NAME.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import platform
import random
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
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
ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4
KINDS = ("plain", "keyed", "redis")
SEED = 25
#: Seconds a run may take before the benchmark gives up on it (an input never came out).
RUN_TIMEOUT = 1800.0


@dataclass(frozen=True)
class Workload:
    keys: int
    per_key: int
    hot_share: float
    hot_extra: int
    key_rate: float
    fetch_bytes: int

    @property
    def hot(self) -> int:
        return round(self.keys * self.hot_share)

    @property
    def inputs(self) -> int:
        return self.keys * self.per_key + self.hot * self.hot_extra

    @property
    def deferred_at_least(self) -> int:
        """Deferred per run if no token comes back during a hot key's burst."""
        return self.hot * max(0, 1 + self.hot_extra - self.per_key)

    def records(self) -> Iterator[tuple[bytes, bytes]]:
        """E passes over the keys, each shuffled; a hot key's extra events follow its first.
        Values are the sequence numbers (``%09d``)."""
        rng = random.Random(SEED)
        ids = list(range(self.keys))
        hot = set(rng.sample(ids, self.hot))
        seq = 0
        for p in range(self.per_key):
            rng.shuffle(ids)
            for i in ids:
                key = b"customer-%07d" % i
                for _ in range(1 + self.hot_extra if p == 0 and i in hot else 1):
                    yield key, b"%09d" % seq
                    seq += 1


@dataclass
class Run:
    kind: str
    rate: float
    cpu_us: float
    tail: float  # seconds from the last output read from the source to the last output
    duplicates: int
    sink_delta: int
    rss: int = 0
    store: int = 0
    changelog: int = 0
    deferral_records: int = 0
    counters: dict[str, int] = field(default_factory=dict)


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def _total(bootstrap: str, topic: str) -> int:
    return sum((await end_offsets(bootstrap, topic)).values())


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


async def one_run(bootstrap: str, source: str, sink: str, work: Workload, kind: str,
                  redis_port: int | None = None) -> Run:
    app_id = f"bench-keyed-{uuid.uuid4().hex[:8]}"
    records = work.inputs
    keyed = kind == "keyed"
    sink_before = await _total(bootstrap, sink)
    with tempfile.TemporaryDirectory() as datadir:
        app = faust.App(app_id, datadir=datadir, store="rocksdict://",
                        **fast_faust_settings(broker=f"kafka://{bootstrap}",
                                              consumer_max_fetch_size=work.fetch_bytes))
        src = app.topic(source, key_type=bytes, value_type=bytes,
                        key_serializer="raw", value_serializer="raw")
        dst = app.topic(sink, key_type=bytes, value_type=bytes,
                        key_serializer="raw", value_serializer="raw")
        got = bytearray(records)
        unique = seen = duplicates = 0
        first = last = cpu_first = cpu_last = direct_last = 0.0
        done = asyncio.Event()
        hit = limits_peer(redis_port) if kind == "redis" and redis_port else None

        async def forward(stream: faust.StreamT[bytes]) -> None:
            nonlocal unique, seen, duplicates, first, last, cpu_first, cpu_last, direct_last
            async for key, value in stream.items():
                if hit is not None and not await hit(key):
                    raise RuntimeError("the Redis peer refused: the limit is meant not to")
                now = time.perf_counter()
                event = stream.current_event
                if event is not None and event.message.topic == source:
                    direct_last = now
                await dst.send(key=key, value=value)
                seen += 1
                if seen == 1:
                    first, cpu_first = now, time.process_time()
                i = int(value)
                if got[i]:
                    duplicates += 1
                    continue
                got[i] = 1
                unique += 1
                if unique >= records:
                    last, cpu_last = time.perf_counter(), time.process_time()
                    done.set()

        fun: Any = forward
        limit: Any = None
        if keyed:
            bp = Backpressure(app, settings=BackpressureSettings())
            limit = bp.rate_limit_per_key("bench", tokens_per_second=work.key_rate,
                                          burst_capacity=work.per_key, partitions=PARTITIONS)
            fun = limit(forward)
        app.agent(src, name="forward")(fun)
        async with running_app(app):
            try:
                await asyncio.wait_for(done.wait(), timeout=RUN_TIMEOUT)
            except asyncio.TimeoutError:
                raise RuntimeError(f"{kind} run: {records - unique:,} of {records:,} inputs "
                                   f"never came out within {RUN_TIMEOUT:g} s") from None
            rss = psutil.Process().memory_info().rss
            counters: dict[str, int] = {}
            if limit is not None:
                stats = limit.stats()
                counters = {"admitted": stats.admitted, "deferred": stats.deferred,
                            "readmitted": stats.readmitted, "shed": stats.shed,
                            "waits": stats.waits, "overdrafts": stats.overdrafts,
                            "held_back": limit.deferrals.held_back,
                            "expired": sum(b.stats.expired for b in limit._buckets.values())}
        store = _du(Path(datadir)) if keyed else 0
    sink_delta = await _total(bootstrap, sink) - sink_before
    run = Run(kind, (records - 1) / (last - first),
              (cpu_last - cpu_first) / (records - 1) * 1e6, last - direct_last, duplicates,
              sink_delta, rss, store, counters=counters)
    if limit is not None:
        run.changelog = await _total(bootstrap, limit.table.changelog_topic.get_topic_name())
        run.deferral_records = await _total(bootstrap, limit.deferral_topic_name)
    return run


async def recovery(bootstrap: str, records: int) -> tuple[float, int, int, float]:
    """A keyed run over ``records`` distinct keys that leaves every key's bucket empty, then a
    fresh app (fresh data dir, same app id) in its place: seconds from its start until the
    table is restored, entries restored, changelog records, seconds to list the restored
    keys."""
    source = f"bench-keyed-rec-src-{uuid.uuid4().hex[:6]}"
    await create_topics(bootstrap, {source: PARTITIONS})
    await produce(bootstrap, source,
                  ((b"customer-%07d" % i, b"v%07d" % i) for i in range(records)), linger_ms=20)
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
            await asyncio.wait_for(done.wait(), timeout=RUN_TIMEOUT)
            await asyncio.sleep(2.0)  # the table's last changelog writes
        changelog = limit.table.changelog_topic.get_topic_name()
    with tempfile.TemporaryDirectory() as datadir:
        app, limit, _ = make(datadir)
        recovered = asyncio.Event()
        limit.table.on_recover(lambda: _set(recovered))
        began = time.perf_counter()
        async with running_app(app):
            await asyncio.wait_for(recovered.wait(), timeout=RUN_TIMEOUT)
            seconds = time.perf_counter() - began
            # what the gate's index of stored keys does once after each recovery
            listing = time.perf_counter()
            restored = sum(1 for _ in limit.table.data)
            listing = time.perf_counter() - listing
    return seconds, restored, await _total(bootstrap, changelog), listing


async def _set(event: asyncio.Event) -> None:
    event.set()


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                ":(exclude)bench/results")
    return head + (" (with uncommitted changes)" if dirty else "")


def _spread(xs: Sequence[float], fmt: str) -> str:
    return f"{format(statistics.median(xs), fmt)} ({format(min(xs), fmt)}-{format(max(xs), fmt)})"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


async def measure(bootstrap: str, work: Workload, rounds: int, peer_rounds: int,
                  recovery_keys: int, command: str, max_seconds: float | None = None,
                  partial: Path | None = None) -> str:
    load_before = os.getloadavg()
    started = time.monotonic()
    began = dt.datetime.now(dt.timezone.utc)
    commit = _commit()
    run_id = uuid.uuid4().hex[:6]
    source, sink = f"bench-keyed-src-{run_id}", f"bench-keyed-sink-{run_id}"
    await create_topics(bootstrap, {source: PARTITIONS, sink: PARTITIONS})
    produced = await produce(bootstrap, source, work.records(), linger_ms=20)
    if produced != work.inputs:
        raise RuntimeError(f"produced {produced:,} records, expected {work.inputs:,}")
    runs: dict[str, list[Run]] = {kind: [] for kind in KINDS}
    order: list[list[str]] = []
    missing = redis_missing("limits", "redis") if peer_rounds > 0 else "not asked for"
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(redis_server()) if missing is None else None
        kinds = KINDS if port is not None else KINDS[:2]
        longest = 0.0
        for r in range(rounds):
            if max_seconds is not None and r >= 2 \
                    and time.monotonic() - started + longest > max_seconds:
                print(f"round {r + 1}: not started, the time budget ({max_seconds:g} s) would "
                      f"not hold it", flush=True)
                break
            round_began = time.monotonic()
            now = kinds if r < peer_rounds else tuple(k for k in kinds if k != "redis")
            now = now if r % 2 == 0 else now[::-1]
            order.append(list(now))
            for kind in now:
                run = await one_run(bootstrap, source, sink, work, kind, port)
                runs[kind].append(run)
                extra = ""
                if kind == "keyed":
                    extra = (f", deferred {run.counters['deferred']:,}, changelog "
                             f"{run.changelog:,} records, data dir {_mib(run.store)}")
                print(f"round {r + 1}: {kind} {run.rate:,.0f} events/s, {run.cpu_us:.1f} us "
                      f"CPU/event, tail {run.tail:.2f} s, duplicates {run.duplicates}, sink "
                      f"+{run.sink_delta:,}{extra}", flush=True)
            longest = max(longest, time.monotonic() - round_began)
            if partial is not None:  # the rounds so far, should the run be stopped from outside
                partial.write_text(report(
                    work, rounds, runs, order, None, missing, commit, command, began,
                    dt.datetime.now(dt.timezone.utc), load_before, os.getloadavg()))
    rec: tuple[float, int, int, float] | None = None
    if recovery_keys > 0:
        rec = await recovery(bootstrap, recovery_keys)
        print(f"recovery: {rec[0]:.1f} s, {rec[1]:,} entries, {rec[2]:,} changelog records, "
              f"listing {rec[3]:.2f} s", flush=True)
    load_after = os.getloadavg()
    ended = dt.datetime.now(dt.timezone.utc)
    return report(work, rounds, runs, order, rec, missing, commit, command, began, ended,
                  load_before, load_after)


def report(work: Workload, rounds: int, runs: dict[str, list[Run]], order: list[list[str]],
           rec: tuple[float, int, int, float] | None, missing: str | None, commit: str,
           command: str, began: dt.datetime, ended: dt.datetime,
           load_before: tuple[float, float, float], load_after: tuple[float, float, float]
           ) -> str:
    plain, keyed = runs["plain"], runs["keyed"]
    p_rate = statistics.median(r.rate for r in plain)
    k_rate = statistics.median(r.rate for r in keyed)
    p_cpu = statistics.median(r.cpu_us for r in plain)
    k_cpu = statistics.median(r.cpu_us for r in keyed)
    ratio = k_rate / p_rate
    ratios = [k.rate / p.rate for p, k in zip(plain, keyed, strict=True)]
    # paired by round (the two runs of a round are back to back): the machine's drift
    # between rounds, of the order of the difference itself, cancels out
    cpu_extra = [k.cpu_us - p.cpu_us for p, k in zip(plain, keyed, strict=True)]
    n = work.inputs

    def row(label: str, xs: list[Run]) -> str:
        return (f"| {label} | {_spread([r.rate for r in xs], ',.0f')} | "
                f"{_spread([r.cpu_us for r in xs], '.1f')} | "
                + ", ".join(f"{r.rate:,.0f}" for r in xs) + " |")

    rows = [row("plain Faust agent", plain), row("keyed limit (defer)", keyed)]
    redis_note = f"Redis peer not run: {missing}."
    if runs["redis"]:
        rows.append(row(f"`limits` MovingWindow, async RedisStorage (Redis {redis_version()}), "
                        "one call per event", runs["redis"]))
        redis_note = ("The Redis peer's CPU is this process's only (redis-server's own is not "
                      "counted).")
    verdict = ("**met**" if ratio >= 0.95 else
               "**not met: the keyed limit is below 95% of the plain agent on this workload**")
    problems = [f"{r.kind} run {i + 1}: {r.duplicates:,} duplicates, sink +{r.sink_delta:,}"
                for kind in KINDS for i, r in enumerate(runs[kind])
                if r.duplicates or r.sink_delta != n]
    checked = ("every run forwarded all inputs, none twice (the sink grew by exactly "
               f"{n:,} records each run)" if not problems else
               "every run forwarded all inputs; but " + "; ".join(problems))

    def counter(name: str) -> str:
        return _spread([r.counters[name] for r in keyed], ",.0f")

    def spread_of(get: Callable[[Run], float], fmt: str) -> str:
        return _spread([get(r) for r in keyed], fmt)

    lines = [
        f"Command: `{command}`",
        "",
        f"Commit {commit}; {began:%Y-%m-%d %H:%M}-{ended:%H:%M} UTC; Python "
        f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; load "
        f"(1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)}, after "
        f"{'/'.join(f'{x:.2f}' for x in load_after)}; faust-streaming {faust.__version__}, "
        "local Apache Kafka broker.",
        "",
        f"Workload: {work.keys:,} keys x {work.per_key} events, in {work.per_key} passes over "
        f"the keys (each shuffled), {work.hot:,} hot keys ({work.hot_share:.0%}) with "
        f"{work.hot_extra} more events right after their first: {n:,} records, {PARTITIONS} "
        f"partitions, forwarded topic to topic by one agent. Keyed: "
        f"`@bp.rate_limit_per_key(..., tokens_per_second={work.key_rate:g}, "
        f"burst_capacity={work.per_key})`, `on_limit=\"defer\"`, rocksdict table. Faust's "
        f"`consumer_max_fetch_size` {work.fetch_bytes:,} bytes in both ways. Rounds "
        f"interleaved: " + "; ".join(", ".join(o) for o in order) + ".",
        "",
        f"Rate: (inputs - 1) / (last output - first output), outputs as seen by the agent's "
        f"body just before the send, the deferral tail included; CPU: this process's CPU "
        f"(all its threads, RocksDB's included) over that span per input. Median (min-max) "
        f"of {len(order)} rounds" + ("." if len(order) == rounds else
                                     f" ({rounds} asked for; the time budget held "
                                     f"{len(order)})."),
        "",
        "| agent | events/s | CPU µs/event | runs (events/s) |",
        "| --- | ---: | ---: | --- |",
        *rows,
        "",
        f"Keyed / plain: **{ratio:.1%}** of the medians (issue 15's target >= 95%: {verdict}); "
        f"per round: {', '.join(f'{x:.1%}' for x in ratios)} (min-max "
        f"{min(ratios):.1%}-{max(ratios):.1%}). CPU per event: keyed {k_cpu:.1f} µs vs plain "
        f"{p_cpu:.1f} µs (+{k_cpu - p_cpu:.1f} µs, {k_cpu / p_cpu - 1:+.0%}); paired by "
        f"round, keyed minus plain: {', '.join(f'{x:+.1f}' for x in cpu_extra)} µs (median "
        f"{statistics.median(cpu_extra):+.1f}, min-max {min(cpu_extra):+.1f} to "
        f"{max(cpu_extra):+.1f}). {redis_note}",
        "",
        f"Checks: {checked}.",
        "",
        f"What the keyed runs did (median (min-max) per run): admitted {counter('admitted')}, "
        f"deferred {counter('deferred')} (the workload's bursts defer at least "
        f"{work.deferred_at_least:,}), readmitted {counter('readmitted')}, shed "
        f"{counter('shed')}, waits in the stream {counter('waits')}, deferred records given "
        f"back to the heap (not due yet) {counter('held_back')}, levels removed once "
        f"full {counter('expired')}; "
        f"{spread_of(lambda r: r.changelog, ',.0f')} records in the keyed table's changelog "
        f"(level writes and tombstones), {spread_of(lambda r: r.deferral_records, ',.0f')} in "
        f"the deferral topic; data dir (the keyed table's RocksDB files, after the app "
        f"stopped) {_mib(statistics.median(r.store for r in keyed))} "
        f"({_mib(min(r.store for r in keyed))}-{_mib(max(r.store for r in keyed))}); last "
        f"output {spread_of(lambda r: r.tail, '.2f')} s after the last one read from the "
        f"source (plain: {_spread([r.tail for r in plain], '.2f')} s); process RSS after a "
        f"keyed run {_mib(statistics.median(r.rss for r in keyed))} (plain "
        f"{_mib(statistics.median(r.rss for r in plain))}; the whole benchmark process).",
    ]
    if rec is not None:
        seconds, restored, changelog_records, index_s = rec
        lines += [
            "",
            f"Recovery: a keyed run over as many distinct keys, one event each, with a limit "
            f"that binds for every key (burst 1, 0.001/s) left {restored:,} entries in the "
            f"table ({changelog_records:,} changelog records); a fresh app (fresh data dir, "
            f"same app id) had them restored **{seconds:.1f} s** after its start (group join "
            f"included); listing the restored keys, as the gate does once after each "
            f"recovery to know which keys have a stored level, took {index_s:.2f} s.",
        ]
    else:
        lines += ["", "Recovery not run (`--recovery-keys 0`)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=20_000,
                        help="distinct keys (K); the defaults take about 10 minutes here")
    parser.add_argument("--events-per-key", type=int, default=3,
                        help="events of each key (E), also the keyed limit's burst")
    parser.add_argument("--hot-share", type=float, default=0.1,
                        help="share of keys with a burst beyond their limit")
    parser.add_argument("--hot-extra", type=int, default=None,
                        help="events a hot key has on top of E, right after its first "
                             "(default E: one deferred per hot key)")
    parser.add_argument("--key-rate", type=float, default=1.0,
                        help="the keyed limit's tokens per second per key")
    parser.add_argument("--fetch-bytes", type=int, default=64 * 1024,
                        help="Faust's consumer_max_fetch_size in both ways (Faust: 1 MiB)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peer-rounds", type=int, default=0,
                        help="rounds that also run the Redis peer (default 0)")
    parser.add_argument("--recovery-keys", type=int, default=None,
                        help="distinct keys for the recovery phase (default: --keys; 0 skips it)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no round (after the second) that would end later than "
                             "this after the start, judged by the longest round so far")
    parser.add_argument("--output", default=None,
                        help="results file name under bench/results/ (default keyed-<K>x<E>)")
    args = parser.parse_args()
    if args.keys < 1 or args.events_per_key < 1 or args.rounds < 1:
        parser.error("--keys, --events-per-key and --rounds must be at least 1")
    if not 0 <= args.hot_share <= 1:
        parser.error("--hot-share is a share: 0 to 1")
    recovery_keys = args.keys if args.recovery_keys is None else args.recovery_keys
    hot_extra = args.events_per_key if args.hot_extra is None else args.hot_extra
    work = Workload(args.keys, args.events_per_key, args.hot_share, hot_extra, args.key_rate,
                    args.fetch_bytes)
    command = (f"PYTHONPATH=. python bench/keyed.py --keys {args.keys} --events-per-key "
               f"{args.events_per_key} --hot-share {args.hot_share:g} --hot-extra {hot_extra} "
               f"--key-rate {args.key_rate:g} --fetch-bytes {args.fetch_bytes} --rounds "
               f"{args.rounds} --peer-rounds "
               f"{args.peer_rounds} --recovery-keys {recovery_keys}"
               + (f" --max-minutes {args.max_minutes:g}" if args.max_minutes else "")
               + (f" --output {args.output}" if args.output else ""))
    logging.basicConfig(level=logging.WARNING)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = args.output or f"keyed-{args.keys}x{args.events_per_key}"
    path = RESULTS / f"{name.removesuffix('.md')}.md"
    with kafka_bootstrap() as bootstrap:
        text = asyncio.run(measure(bootstrap, work, args.rounds, args.peer_rounds,
                                   recovery_keys, command,
                                   None if args.max_minutes is None else args.max_minutes * 60,
                                   partial=path))
    path.write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
