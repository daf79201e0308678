#!/usr/bin/env python3
"""Where a Faust per-event pipeline's CPU goes (issue 23: the profile behind docs/batching.md).

Run from the project root:

    PYTHONPATH=. .venv/bin/python bench/profile_faust_path.py [--records 20000] \
        [--modes cython,pure] [--timer cpu|wall] [--top 25] [--dump DIR]

(``--dump DIR`` also writes each thread's raw profile, for ``python -m pstats``; a run at the
default size takes about a minute.)

Uses ``$KAFKA_BOOTSTRAP_SERVERS`` or starts its own broker
(``faust_backpressure.testing.broker.kafka_bootstrap``). It fills a 4-partition topic with N
records (200-byte values) once, then for each mode runs a child interpreter (a clean import of
Faust: ``pure`` sets ``NO_CYTHON=1`` so that Faust's Cython stream iterator and conductor are
replaced by their Python twins and their time becomes attributable; ``cython`` is Faust as
deployed). Each child runs an in-process Faust app whose agent forwards every event to a sink
topic (``async for event in stream.events(): await sink.send(...)``) twice, with a fresh
consumer group each time:

1. unprofiled: events/s and CPU µs/event of the process, of the main thread (the event loop:
   conductor, streams, agent, producer) and of Faust's consumer thread (aiokafka's fetcher);
2. under ``cProfile`` in both threads (a profiler per thread, enabled and disabled inside its
   own thread; clock ``time.thread_time`` by default: CPU, not wall, so neither idle waits nor
   waits for the GIL count; ``--timer wall`` to compare).

A window runs from the first event the agent sees until N events went through the agent and the
producer was flushed (every output acked by Kafka: "all N in the sink", checked afterwards with
the sink's end offsets). Startup and the group join are outside it.

Each function's own time (``tottime``) goes into one bucket: aiokafka fetch/decode, Faust
consumer/conductor/channel queues, Faust stream/event/ack bookkeeping, Faust sensors (the
default ``Monitor``), Faust producer/send path, serialization, the event loop, other (the
agent's body, other libraries). "Event loop" is the loop's own machinery (``_run_once``,
``Handle._run``, ``Context.run``, polling); neutral code (builtins, the standard library,
asyncio's scheduling API, mode's and Faust's helpers) goes to the buckets of its callers, in
proportion to the time spent for each (a fixed point, so cycles of neutral callers resolve).
aiokafka code counts as fetch in the consumer thread and as producer in the main thread. Shares
are printed as shares of the profiled time and as µs/event scaled per thread to the unprofiled
run (cProfile inflates call-heavy code: read the shares, not the absolute profiled time).

Prints a markdown report and writes it to ``bench/results/profile-faust-path.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import cProfile
import datetime as dt
import json
import logging
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import faust

RESULTS = Path(__file__).resolve().parent / "results" / "profile-faust-path.md"
ROOT = Path(__file__).resolve().parent.parent

BUCKETS = (
    "aiokafka fetch/decode",
    "Faust consumer/conductor/channel queues",
    "Faust stream/event/ack bookkeeping",
    "Faust sensors (Monitor)",
    "Faust producer/send path",
    "serialization",
    "event loop",
    "other",
)
FETCH, CONSUMER, STREAM, SENSORS, PRODUCER, SERIAL, LOOP, OTHER = BUCKETS
MAIN, FETCHER = "main", "consumer thread"

# pstats' key of a function: (file name, first line, function name); builtins have file "~".
Func = tuple[str, int, str]

# -- which bucket a function's own time belongs to ------------------------------------------

# Functions of mixed modules that belong to the producer path (by function name).
_PRODUCER_FUNCS = {
    "send", "send_soon", "_send_now", "as_future_message", "publish_message", "_publish",
    "prepare_key", "prepare_value", "_prepare_key", "_prepare_value", "_finalize_message",
    "on_published", "_on_published", "_on_send_completed", "set_result", "maybe_declare",
    "_get_producer", "_send_on_produce_message", "key_partition", "_partition",
    "send_and_wait", "wait_until_ebb", "flush",
}
# faust/channels.py and faust/topics.py: the rest (decode, put, get, __anext__...) is channels.
_CHANNEL_FILES = ("faust/channels.py", "faust/topics.py")
# faust/types/tuples.py (faust-streaming 0.15.3): PendingMessage and FutureMessage (the
# producer's) are defined on lines 59-141, Message and ConsumerMessage after them.
_TUPLES_PRODUCER_LINES = range(59, 142)
_TUPLES_ACK = {"ack", "incref", "decref", "on_final_ack"}

_FAUST_STREAM = ("faust/streams.py", "faust/events.py", "faust/agents/",
                 "faust/_cython/streams")
_FAUST_CONSUMER = ("faust/transport/consumer.py", "faust/transport/conductor.py",
                   "faust/transport/_cython", "faust/transport/utils.py", "mode/threads.py",
                   "mode/utils/queues.py", "faust/assignor/", "faust/tables/",
                   "faust_backpressure/faust_seam/")
_FAUST_PRODUCER = ("faust/transport/producer.py",)
_SERIAL = ("faust/serializers/", "faust/models/", "faust/utils/json.py")
#: mode's ``Service.wait_first``: ``Consumer._drain_messages`` races each message's delivery
#: against the flow stopping with it (four tasks and an ``asyncio.wait`` per message).
_CONSUMER_FUNCS = {("mode/services.py", "wait_first")}
#: ``App.create_event``: the Event made for each message (a neutral module otherwise).
_STREAM_FUNCS = {("faust/app/base.py", "create_event")}
#: The event loop's own machinery: polling and running callbacks (asyncio's C task step
#: included: it runs inside ``Context.run``). The rest of asyncio (``call_soon``,
#: ``create_task``, futures, ``wait``, ``sleep``, queues, locks) is work done for its caller.
_LOOP_CORE = {("asyncio/base_events.py", "_run_once"), ("asyncio/base_events.py", "run_forever"),
              ("asyncio/base_events.py", "run_until_complete"), ("asyncio/events.py", "_run"),
              ("asyncio/selector_events.py", "_process_events"), ("selectors.py", "select")}
_LOOP_BUILTINS = ("select.epoll", "select.select", "'_contextvars.Context' objects>")
#: The rest of mode and Faust (services, futures, locks, utils, settings, the app object) and
#: the standard library work for whoever calls them: charged to their callers' buckets.
_NEUTRAL = ("mode/", "faust/")


def _bucket_of(func: Func, thread: str) -> str | None:
    """The bucket of a function's own time, or None: neutral, charged to its callers."""
    path, line, name = func
    text = path.replace("\\", "/")
    if path == "~":  # a builtin: the loop's polling and callback runner, else its callers'
        if any(marker in name for marker in _LOOP_BUILTINS):
            return LOOP
        if "_crecords" in name or "crc32c" in name:
            return FETCH if thread == FETCHER else PRODUCER
        return None
    if "site-packages/" in text:
        text = text.split("site-packages/", 1)[1]
    elif "/lib/python3" in text:  # the standard library: keep "asyncio/...", "selectors.py"
        text = text.split("/lib/python3", 1)[1].split("/", 1)[1]
    if any(text.endswith(f) and name == n for f, n in _LOOP_CORE):
        return LOOP
    if any(text.endswith(f) and name == n for f, n in _CONSUMER_FUNCS):
        return CONSUMER
    if any(text.endswith(f) and name == n for f, n in _STREAM_FUNCS):
        return STREAM
    if text.startswith("aiokafka/"):
        return FETCH if thread == FETCHER else PRODUCER
    if text.startswith("faust/sensors/"):
        return SENSORS
    if text == "faust/transport/drivers/aiokafka.py":
        # Consumer._to_message, the thread's getmany/_fetch_records vs Producer.send
        if thread == MAIN and name in _PRODUCER_FUNCS:
            return PRODUCER
        return CONSUMER
    if text in _CHANNEL_FILES:
        return PRODUCER if name in _PRODUCER_FUNCS else CONSUMER
    if text == "faust/types/tuples.py":
        if name in _TUPLES_ACK:
            return STREAM
        if line in _TUPLES_PRODUCER_LINES:
            return PRODUCER
        return CONSUMER  # Message/ConsumerMessage construction (Consumer._to_message)
    for prefixes, bucket in ((_FAUST_PRODUCER, PRODUCER), (_SERIAL, SERIAL),
                             (_FAUST_STREAM, STREAM), (_FAUST_CONSUMER, CONSUMER)):
        if any(f in text for f in prefixes):
            return bucket
    stdlib = "/lib/python3" in path and "site-packages" not in path
    if stdlib or not path.startswith("/") or text.startswith(_NEUTRAL):
        return None
    return OTHER  # other libraries, and the agent's own body


@dataclass
class ThreadProfile:
    """One thread's profile, reduced to what the report needs (JSON-able)."""

    thread: str
    total: float  # profiled seconds (sum of own times)
    buckets: dict[str, float]
    #: per bucket, the functions charged most to it: (function, seconds)
    by_bucket: dict[str, list[tuple[str, float]]]
    top_tottime: list[tuple[str, int, float, float]]  # (function, calls, tottime, cumtime)
    top_cumtime: list[tuple[str, int, float, float]]
    #: calls of a few event-loop functions (callbacks run, tasks and futures made)
    counters: dict[str, int]


#: (file suffix, function) -> what its call count tells
COUNTERS = {
    ("asyncio/events.py", "_run"): "callbacks run by the loop",
    ("asyncio/base_events.py", "_run_once"): "loop iterations",
    ("asyncio/base_events.py", "create_task"): "tasks created",
    ("asyncio/base_events.py", "create_future"): "futures created (loop.create_future)",
    ("asyncio/base_events.py", "call_soon"): "call_soon",
    ("aiokafka/producer/sender.py", "create_request"): "produce requests sent (aiokafka)",
}


def _label(func: Func) -> str:
    path, line, name = func
    if path == "~":
        return name
    text = path.replace("\\", "/")
    for marker in ("site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        if marker in text:
            text = text.split(marker, 1)[1]
            break
    return f"{text}:{line}({name})"


def reduce_profile(stats: dict[Func, Any], thread: str, top: int) -> ThreadProfile:
    """Buckets and top functions of one thread's profile (``pstats.Stats(...).stats``)."""
    # A neutral function's share of each bucket is the weighted mean of its callers' (by the
    # time it spent for each; by calls if none was measured). Neutral callers can form cycles
    # (getattr -> a settings descriptor -> getattr): solved by iterating to the fixed point,
    # what never reaches a bucket is "other".
    fixed: dict[Func, dict[str, float]] = {}
    weights: dict[Func, dict[Func, float]] = {}
    for func, entry in stats.items():
        bucket = _bucket_of(func, thread)
        if bucket is not None:
            fixed[func] = {bucket: 1.0}
            continue
        callers = {c: e for c, e in entry[4].items() if c != func and c in stats}
        raw = {c: float(e[2]) for c, e in callers.items()}
        if sum(raw.values()) <= 0:
            raw = {c: float(e[0]) for c, e in callers.items()}
        total = sum(raw.values())
        weights[func] = {c: w / total for c, w in raw.items()} if total > 0 else {}
    neutral: dict[Func, dict[str, float]] = {func: {} for func in weights}
    for _ in range(200):
        step: dict[Func, dict[str, float]] = {}
        for func, callers_w in weights.items():
            acc: dict[str, float] = {}
            for caller, w in callers_w.items():
                for name, part in (fixed.get(caller) or neutral[caller]).items():
                    acc[name] = acc.get(name, 0.0) + w * part
            step[func] = acc
        settled = all(abs(sum(step[f].values()) - sum(neutral[f].values())) < 1e-9
                      for f in weights)
        neutral = step
        if settled:
            break
    shares = dict(fixed)
    for func, acc in neutral.items():
        unresolved = max(0.0, 1.0 - sum(acc.values()))
        shares[func] = {**acc, OTHER: acc.get(OTHER, 0.0) + unresolved}

    def share_of(func: Func) -> dict[str, float]:
        return shares[func]

    buckets = dict.fromkeys(BUCKETS, 0.0)
    charged: dict[str, list[tuple[str, float]]] = {name: [] for name in BUCKETS}
    for func, (_, _, tottime, _, _) in stats.items():
        for name, part in share_of(func).items():
            buckets[name] += tottime * part
            charged[name].append((_label(func), tottime * part))
    rows = [(_label(func), int(calls), float(tt), float(ct))
            for func, (_, calls, tt, ct, _) in stats.items()]
    counters = {label: 0 for label in COUNTERS.values()}
    for (path, _, name), (_, calls, _, _, _) in stats.items():
        for (suffix, function), label in COUNTERS.items():
            if name == function and path.replace("\\", "/").endswith(suffix):
                counters[label] += int(calls)
    return ThreadProfile(
        thread=thread, total=sum(buckets.values()), buckets=buckets,
        by_bucket={name: sorted(items, key=lambda r: -r[1])[:6]
                   for name, items in charged.items()},
        top_tottime=sorted(rows, key=lambda r: -r[2])[:top],
        top_cumtime=sorted(rows, key=lambda r: -r[3])[:top], counters=counters)


# -- one run of the forwarding app (in the child interpreter) --------------------------------


@dataclass
class Window:
    """CPU and wall time of one run, from the first event to the flushed N-th."""

    events: int = 0
    wall: float = 0.0
    cpu_process: float = 0.0
    cpu_main: float = 0.0
    cpu_fetcher: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.wall if self.wall else 0.0

    def per_event_us(self, seconds: float) -> float:
        return seconds / self.events * 1e6 if self.events else 0.0


@dataclass
class _Probe:
    """Counts events in the agent; opens and closes the measuring window in both threads."""

    app: faust.App
    records: int
    profile: bool
    started: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    seen: int = 0
    begin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # wall, process CPU, main CPU
    fetcher_begin: concurrent.futures.Future[float] = field(
        default_factory=concurrent.futures.Future)
    main_profiler: cProfile.Profile | None = None
    fetcher_profiler: cProfile.Profile | None = None
    #: the profilers' clock: ``time.thread_time`` (CPU of the thread) or ``time.perf_counter``
    timer: Callable[[], float] = time.thread_time

    def _thread_loop(self) -> asyncio.AbstractEventLoop:
        loop: asyncio.AbstractEventLoop = self.app.consumer._thread.thread_loop  # type: ignore
        return loop

    def tick(self) -> None:
        self.seen += 1
        if self.seen == 1:
            self._open()
        if self.seen >= self.records:
            self.done.set()

    def _open(self) -> None:
        self.begin = (time.perf_counter(), time.process_time(), time.thread_time())
        if self.profile:
            self.main_profiler = cProfile.Profile(self.timer)
            self.fetcher_profiler = cProfile.Profile(self.timer)
        fetcher_profiler, began = self.fetcher_profiler, self.fetcher_begin

        def in_fetcher_thread() -> None:
            began.set_result(time.thread_time())
            if fetcher_profiler is not None:
                fetcher_profiler.enable()

        self._thread_loop().call_soon_threadsafe(in_fetcher_thread)
        if self.main_profiler is not None:
            self.main_profiler.enable()
        self.started.set()

    async def close(self) -> Window:
        """Called after the N-th event and the producer's flush: the window ends."""
        ended: concurrent.futures.Future[float] = concurrent.futures.Future()
        fetcher_profiler = self.fetcher_profiler

        def in_fetcher_thread() -> None:
            if fetcher_profiler is not None:
                fetcher_profiler.disable()
            ended.set_result(time.thread_time())

        self._thread_loop().call_soon_threadsafe(in_fetcher_thread)
        fetcher_end = await asyncio.wrap_future(ended)
        wall, cpu, main = time.perf_counter(), time.process_time(), time.thread_time()
        if self.main_profiler is not None:
            self.main_profiler.disable()
        fetcher_start = await asyncio.wrap_future(self.fetcher_begin)
        return Window(events=self.seen, wall=wall - self.begin[0],
                      cpu_process=cpu - self.begin[1], cpu_main=main - self.begin[2],
                      cpu_fetcher=fetcher_end - fetcher_start)


async def one_run(bootstrap: str, source: str, sink: str, records: int, datadir: str,
                  profile: bool, timer: Callable[[], float] = time.thread_time
                  ) -> tuple[Window, _Probe]:
    import faust

    from faust_backpressure.testing.inprocess import running_app
    from faust_backpressure.testing.kafka_io import end_offsets
    from faust_backpressure.testing.settings import fast_faust_settings

    app = faust.App(f"profile-{uuid.uuid4().hex[:8]}", datadir=datadir,
                    **fast_faust_settings(broker=f"kafka://{bootstrap}"))
    src = app.topic(source, key_type=bytes, value_type=bytes,
                    key_serializer="raw", value_serializer="raw")
    dst = app.topic(sink, key_type=bytes, value_type=bytes,
                    key_serializer="raw", value_serializer="raw")
    probe = _Probe(app, records, profile, timer=timer)

    async def forward(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            await dst.send(key=event.key, value=event.value)
            probe.tick()

    app.agent(src, name="forward")(forward)
    before = sum((await end_offsets(bootstrap, sink)).values())
    async with running_app(app):
        await asyncio.wait_for(probe.started.wait(), timeout=120)
        await asyncio.wait_for(probe.done.wait(), timeout=900)
        await app.producer.flush()  # every output acked by Kafka: all N are in the sink
        window = await probe.close()
    landed = sum((await end_offsets(bootstrap, sink)).values()) - before
    if landed < records:
        raise RuntimeError(f"only {landed} of {records} records reached the sink")
    return window, probe


TIMERS: dict[str, Callable[[], float]] = {"cpu": time.thread_time, "wall": time.perf_counter}


async def child(bootstrap: str, source: str, sink: str, records: int, top: int, timer: str,
                dump: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as datadir:
        plain, _ = await one_run(bootstrap, source, sink, records, datadir, profile=False)
        profiled, probe = await one_run(bootstrap, source, sink, records, datadir, profile=True,
                                        timer=TIMERS[timer])
    assert probe.main_profiler is not None and probe.fetcher_profiler is not None
    mode = "pure" if os.environ.get("NO_CYTHON") else "cython"
    threads = []
    for profiler, thread in ((probe.main_profiler, MAIN), (probe.fetcher_profiler, FETCHER)):
        stats = pstats.Stats(profiler)
        if dump is not None:  # for `python -m pstats FILE`
            dump.mkdir(parents=True, exist_ok=True)
            stats.dump_stats(dump / f"{mode}-{thread.replace(' ', '-')}.pstats")
        threads.append(reduce_profile(stats.stats, thread, top))  # type: ignore[attr-defined]
    import aiokafka
    import faust

    return {
        "timer": timer,
        "cython": mode == "cython",
        "faust": faust.__version__, "aiokafka": aiokafka.__version__,
        "plain": asdict(plain), "profiled": asdict(profiled),
        "threads": [asdict(t) for t in threads],
    }


# -- the parent: broker, records, one child per mode, the report ----------------------------


async def fill(bootstrap: str, records: int, value_size: int) -> tuple[str, str]:
    from faust_backpressure.testing.kafka_io import create_topics, produce

    run = uuid.uuid4().hex[:6]
    source, sink = f"profile-src-{run}", f"profile-sink-{run}"
    await create_topics(bootstrap, {source: 4, sink: 4})
    await produce(bootstrap, source,
                  ((b"k%07d" % i, b"v" * value_size) for i in range(records)), linger_ms=20)
    return source, sink


def run_child(mode: str, bootstrap: str, source: str, sink: str, records: int, top: int,
              timer: str, dump: Path | None) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("NO_CYTHON", None)
    if mode == "pure":
        env["NO_CYTHON"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, "--child", "--bootstrap", bootstrap,
                   "--source", source, "--sink", sink, "--records", str(records),
                   "--top", str(top), "--timer", timer, "--json", out.name]
        if dump is not None:
            command += ["--dump", str(dump)]
        subprocess.run(command, env=env, check=True)
        result: dict[str, Any] = json.loads(Path(out.name).read_text())
    result["mode"] = mode
    return result


def _window(data: dict[str, Any]) -> Window:
    return Window(**data)


def _row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def bucket_table(results: list[dict[str, Any]]) -> list[str]:
    """Bucket shares of profiled time and µs/event scaled to the unprofiled run, per mode."""
    head = ["bucket"]
    for r in results:
        head += [f"{r['mode']}: share", f"{r['mode']}: µs/event"]
    lines = [_row(head), _row(["---"] + ["---:"] * (len(head) - 1))]
    est: dict[str, dict[str, float]] = {}
    share: dict[str, dict[str, float]] = {}
    for r in results:
        plain = _window(r["plain"])
        scale = {MAIN: plain.per_event_us(plain.cpu_main),
                 FETCHER: plain.per_event_us(plain.cpu_fetcher)}
        total = sum(t["total"] for t in r["threads"])
        est[r["mode"]] = dict.fromkeys(BUCKETS, 0.0)
        share[r["mode"]] = dict.fromkeys(BUCKETS, 0.0)
        for t in r["threads"]:
            for name, seconds in t["buckets"].items():
                share[r["mode"]][name] += seconds / total if total else 0.0
                if t["total"]:
                    est[r["mode"]][name] += seconds / t["total"] * scale[t["thread"]]
    for name in BUCKETS:
        cells: list[object] = [name]
        for r in results:
            cells += [f"{share[r['mode']][name]:.1%}", f"{est[r['mode']][name]:.1f}"]
        lines.append(_row(cells))
    cells = ["**total (main + consumer thread)**"]
    for r in results:
        cells += ["100%", f"**{sum(est[r['mode']].values()):.1f}**"]
    lines.append(_row(cells))
    return lines


def _function_rows(rows: list[list[Any]], events: int, total: float) -> list[str]:
    lines = [_row(["function", "calls", "calls/event", "own s", "cumulative s",
                   "own % of thread"]),
             _row(["---", "---:", "---:", "---:", "---:", "---:"])]
    for name, calls, tt, ct in rows:
        lines.append(_row([f"`{name}`", f"{calls:,}", f"{calls / events:.2f}", f"{tt:.3f}",
                           f"{ct:.3f}", f"{tt / total:.1%}" if total else "-"]))
    return lines


def report(results: list[dict[str, Any]], records: int, command: str) -> str:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    first = results[0]
    clock = ("`time.thread_time` (each thread's CPU)" if first["timer"] == "cpu"
             else "`time.perf_counter` (wall: idle waits in `epoll` count as event loop)")
    lines = [
        "# Where a Faust per-event pipeline's CPU goes (issue 23)",
        "",
        f"Command: `{command}`, {when}; Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
        f"faust-streaming {first['faust']}, aiokafka {first['aiokafka']}, local Kafka broker; "
        f"profiler clock {clock}.",
        "",
        f"One in-process Faust app forwards {records:,} records (4 partitions, 200-byte values) "
        "topic to topic: `async for event in stream.events(): await sink.send(key=event.key, "
        "value=event.value)`, `fast_faust_settings` (`broker_max_poll_records=500`, "
        "`producer_linger=0.005`), at_least_once. Window: first event to the N-th event with "
        "the producer flushed. `cython` is Faust as deployed (its Cython stream iterator and "
        "conductor: their own time shows up in their nearest profiled caller, e.g. "
        "`Context.run` of the loop for the conductor's per-message task); `pure` runs with "
        "`NO_CYTHON=1` so that every step is a Python function. Calls of a coroutine count "
        "each resumption.",
        "",
        "## Unprofiled",
        "",
        _row(["mode", "events/s", "CPU µs/event (process)", "main thread", "consumer thread",
              "other threads"]),
        _row(["---", "---:", "---:", "---:", "---:", "---:"]),
    ]
    for r in results:
        w = _window(r["plain"])
        lines.append(_row([
            r["mode"], f"{w.rate:,.0f}", f"{w.per_event_us(w.cpu_process):.1f}",
            f"{w.per_event_us(w.cpu_main):.1f}", f"{w.per_event_us(w.cpu_fetcher):.1f}",
            f"{w.per_event_us(w.cpu_process - w.cpu_main - w.cpu_fetcher):.1f}"]))
    lines += [
        "",
        "## Buckets",
        "",
        "Share: of the profiled time of both threads (each function's own time; builtins and "
        "neutral code, i.e. the standard library, asyncio's scheduling API and mode/Faust "
        "helpers, charged to their callers' buckets in proportion to the time spent for each "
        "caller). \"event loop\" is what is left to the loop itself: polling and running "
        "callbacks (`_run_once`, `Handle._run`, `Context.run` with asyncio's C task step). "
        "µs/event: each thread's shares times that thread's unprofiled CPU per event "
        "(cProfile's per-call cost inflates call-heavy code: estimates).",
        "",
        *bucket_table(results),
        "",
        "Event-loop work per event (main thread, profiled run):",
        "",
        _row(["counter", *(r["mode"] for r in results)]),
        _row(["---", *("---:" for _ in results)]),
    ]
    for label in COUNTERS.values():
        cells: list[object] = [label]
        for r in results:
            main_thread = next(t for t in r["threads"] if t["thread"] == MAIN)
            cells.append(f"{main_thread['counters'][label] / _window(r['profiled']).events:.2f}")
        lines.append(_row(cells))
    lines.append("")
    for r in results:
        p = _window(r["profiled"])
        lines += [
            f"## {r['mode']}: what each bucket is made of",
            "",
            f"Profiled run: {p.rate:,.0f} events/s, {p.per_event_us(p.cpu_process):.1f} µs "
            "CPU/event (profiler included). Functions charged most to each bucket, in ms over "
            "the window (a neutral function is listed under its callers' buckets).",
            "",
            _row(["bucket", "thread", "functions (ms)"]),
            _row(["---", "---", "---"]),
        ]
        for name in BUCKETS:
            for t in r["threads"]:
                items = [(f, sec) for f, sec in t["by_bucket"][name] if sec >= 0.0005]
                if items:
                    lines.append(_row([name, t["thread"], "; ".join(
                        f"`{f}` {sec * 1000:.0f}" for f, sec in items)]))
        lines.append("")
        for t in r["threads"]:
            for key, title in (("top_tottime", "own time"), ("top_cumtime", "cumulative")):
                rows = t[key] if t["thread"] == MAIN else t[key][:12]
                lines += [f"### {r['mode']}, {t['thread']}, top functions by {title}", "",
                          *_function_rows(rows, p.events, t["total"]), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--value-size", type=int, default=200)
    parser.add_argument("--modes", default="cython,pure",
                        help="comma-separated: cython (Faust as deployed), pure (NO_CYTHON=1)")
    parser.add_argument("--timer", choices=sorted(TIMERS), default="cpu",
                        help="the profilers' clock: cpu (thread CPU time, default) or wall")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--dump", type=Path, default=None,
                        help="also write each thread's raw profile (<mode>-<thread>.pstats)")
    # internal: one child interpreter per mode
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--sink", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.child:
        result = asyncio.run(child(args.bootstrap, args.source, args.sink, args.records,
                                   args.top, args.timer, args.dump))
        Path(args.json).write_text(json.dumps(result))
        return 0

    from faust_backpressure.testing.broker import kafka_bootstrap

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - {"cython", "pure"}
    if unknown:
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    command = ("PYTHONPATH=. .venv/bin/python bench/profile_faust_path.py "
               f"--records {args.records} --modes {','.join(modes)} --timer {args.timer}")
    with kafka_bootstrap() as bootstrap:
        source, sink = asyncio.run(fill(bootstrap, args.records, args.value_size))
        results = [run_child(mode, bootstrap, source, sink, args.records, args.top,
                             args.timer, args.dump) for mode in modes]
    text = report(results, args.records, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
