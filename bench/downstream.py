#!/usr/bin/env python3
"""Protecting a called system (issue 22): five ways of calling a quota'd HTTP service from a
Faust pipeline, on real ``faust worker`` processes, side by side.

Run (one command; starts its own Kafka broker, or uses ``$KAFKA_BOOTSTRAP_SERVERS``)::

    PYTHONPATH=. .venv/bin/python bench/downstream.py [--events 30000] [--rounds 5]
        [--workers 3] [--quota 300] [--servers 16] [--service-time 0.02]
        [--ways none,fixed,backoff,guard,guard+rate] [--phases steady,quota,outage]

Per round, per phase, per way (the ways interleaved within a round): a fresh quota service
(``QuotaServiceProcess``: quota Q/s, burst Q/10, ``--servers`` servers holding a call
``--service-time`` s), fresh topics (source and sink with 4 partitions, 6 beyond 4 workers;
a 1-partition DLQ), a fresh app id and ``--workers`` workers of ``bench/downstream_app.py``
(the ways are described there). ``--events`` events are produced; the run ends when every
event is in the sink or the DLQ (or at a timeout). With T = events / Q (the run time at Q):

* ``steady``: quota Q all along;
* ``quota``: Q/2 from T/3, 2Q from 2T/3 (``admin(quota=...)``);
* ``outage``: every call answered 503 (no ``Retry-After``) from T/10 for T/5 s.

Measured, from the service's per-second timeline and the sink and DLQ topics: goodput (median
ok/s over seconds 5 to end-2, as % of the quota then in force; the outage and the 5 s after
it left out), 429s as % of calls after the first 5 s, p99 latency of ok calls (server side,
whole run) vs the unloaded latency (service time), events lost (in neither topic) and
dead-lettered (of which for a 429); ``quota``: seconds from each change to the first whole
second with ok/s within 10% of the new quota; ``outage``: seconds until every worker's
breaker opened (guards, from the worker logs), until the calls dropped to <= 1/s per worker,
the calls per second per worker during the outage, and seconds from its end to the first
second at >= 90% of Q. Medians over rounds with min-max. Writes ``bench/results/
downstream.md`` and, for round 1, ``bench/results/downstream-<phase>.png``; worker logs are
kept in ``$TMPDIR/fbp-bench-downstream/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from faust_backpressure.testing.broker import kafka_bootstrap
from faust_backpressure.testing.chaos_report import git_commit
from faust_backpressure.testing.kafka_io import create_topics, produce, wait_partitions
from faust_backpressure.testing.quota_client import QuotaServiceProcess
from faust_backpressure.testing.workers import FaustWorker, wait_until_settled

REPO = Path(__file__).resolve().parents[1]
APP = "bench.downstream_app"
RESULTS = REPO / "bench" / "results"
LOGS = Path(tempfile.gettempdir()) / "fbp-bench-downstream"
OUTPUT = "downstream"  # --output: the results files' name
WAYS = ("none", "fixed", "backoff", "guard", "guard+rate")
PHASES = ("steady", "quota", "outage")
GUARDS = ("guard", "guard+rate")
WARMUP = 5  # seconds left out at the start
BREAKER_OPEN = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\].*breaker api: open \(",
                          re.MULTILINE)
Change = tuple[float, dict[str, Any]]  # (seconds from the start, settings for admin())


@dataclass(frozen=True)
class Config:
    events: int
    rounds: int
    workers: int
    quota: float
    servers: int
    service_time: float
    ways: tuple[str, ...]
    phases: tuple[str, ...]
    announce: bool = False  # the service says its quota in every answer (RateLimit-Policy)

    @property
    def nominal(self) -> float:
        """T: seconds the run takes at exactly the quota."""
        return self.events / self.quota

    @property
    def partitions(self) -> int:
        return 4 if self.workers <= 4 else 6

    def plan(self, phase: str) -> list[Change]:
        t, q = self.nominal, self.quota
        if phase == "quota":
            return [(t / 3, {"quota": q / 2}), (2 * t / 3, {"quota": 2 * q})]
        if phase == "outage":
            return [(t / 10, {"fail": True}), (t / 10 + t / 5, {"fail": False})]
        return []

    def timeout(self, phase: str) -> float:
        return 3 * self.nominal + 60 + (self.nominal / 5 if phase == "outage" else 0)


@dataclass
class Run:
    """One measured run: a way, a phase, a round."""

    way: str
    phase: str
    round: int
    timeline: dict[int, dict[str, Any]] = field(default_factory=dict)  # second -> counts
    p99_ms: float | None = None
    end: float = 0.0  # seconds from the start until every event was out (or the timeout)
    done: bool = False
    lost: int = 0
    dead: int = 0
    dead_429: int = 0
    applied: list[Change] = field(default_factory=list)
    breaker_open: float | None = None  # s from the outage until the last worker's opened
    load: tuple[float, float] = (0.0, 0.0)
    totals: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # crashed workers, tracebacks


# -- one run -----------------------------------------------------------------------------------

async def collect(bootstrap: str, topics: dict[str, str], ids: set[bytes],
                  deadline: float) -> tuple[set[bytes], dict[bytes, str]]:
    """Read the sink and the DLQ until every id is in one of them (or the deadline):
    the ids in the sink, and per dead-lettered id its error message."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    sink: set[bytes] = set()
    dead: dict[bytes, str] = {}
    missing = set(ids)
    try:
        tps = [TopicPartition(topics[name], p) for name in ("sink", "dlq")
               for p in sorted(await wait_partitions(consumer, topics[name]))]
        consumer.assign(tps)
        await consumer.seek_to_beginning()
        while missing and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for record in records:
                    missing.discard(record.value or b"")
                    if tp.topic == topics["sink"]:
                        sink.add(record.value or b"")
                    else:
                        headers = dict(record.headers)
                        dead[record.value or b""] = headers.get(
                            "bp.error.message", b"").decode(errors="replace")
    finally:
        await consumer.stop()
    return sink, dead


async def apply_plan(service: QuotaServiceProcess, plan: list[Change], began: float,
                     applied: list[Change]) -> None:
    """Change the service's settings at the planned times; ``applied`` gets the real ones."""
    for at, change in plan:
        await asyncio.sleep(max(0.0, began + at - time.monotonic()))
        await asyncio.to_thread(service.admin, **change)
        applied.append((time.monotonic() - began, change))


async def measure(cfg: Config, bootstrap: str, service: QuotaServiceProcess,
                  topics: dict[str, str], run: Run) -> float:
    """Produce the events and wait until they are all out; fills ``run``; returns the wall
    clock time of the start."""
    ids = [b"e-%07d" % i for i in range(cfg.events)]
    began, wall = time.monotonic(), time.time()
    await asyncio.to_thread(service.reset_stats)  # the timeline's second 0
    plan = asyncio.ensure_future(apply_plan(service, cfg.plan(run.phase), began, run.applied))
    collector = asyncio.ensure_future(
        collect(bootstrap, topics, set(ids), began + cfg.timeout(run.phase)))
    try:
        await produce(bootstrap, topics["source"], ((i, i) for i in ids))
        sink, dead = await collector
    finally:
        plan.cancel()
        collector.cancel()
    run.end = time.monotonic() - began
    stats = await asyncio.to_thread(service.stats)
    run.timeline = {entry["second"]: entry for entry in stats["timeline"]}
    run.p99_ms = stats["latency_ms"]["p99"]
    run.totals = {"ok": stats["ok"], "429": stats["rejected_429"], "503": stats["failed_503"]}
    run.lost = len(set(ids) - sink - dead.keys())
    run.done = run.lost == 0
    run.dead = len(dead)
    run.dead_429 = sum("429" in reason for reason in dead.values())
    return wall


def log_time(stamp: str) -> float:
    """A Faust log line's local timestamp (``2024-05-01 10:00:00,123``) as wall clock."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def breaker_opened(workers: Sequence[FaustWorker], outage_at: float) -> float:
    """Seconds from ``outage_at`` (wall clock) until the breaker had opened on every worker
    (infinite if it did not on one of them)."""
    delays = []
    for worker in workers:
        opened = [log_time(m.group(1)) for m in BREAKER_OPEN.finditer(worker.logs())]
        later = [t for t in opened if t >= outage_at - 0.01]
        delays.append(min(later) - outage_at if later else math.inf)
    return max(delays, default=math.inf)


def run_folder(run: Run) -> Path:
    """Where a run's logs go: the workers' logs, their per-call logs, ``run.json``."""
    return LOGS / f"r{run.round}-{run.phase}-{run.way.replace('+', '-')}"


def keep_logs(workers: Sequence[FaustWorker], run: Run, wall: float) -> None:
    """Copy the worker logs out of their data dirs; note crashes and tracebacks; the run's
    start (wall clock), changes and the service's timeline as ``run.json``."""
    folder = run_folder(run)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps(
        {"began": wall, "applied": run.applied, "end": run.end, "way": run.way,
         "timeline": [run.timeline[s] for s in sorted(run.timeline)]}))
    for worker in workers:
        text = worker.logs()
        (folder / f"{worker.name}.log").write_text(text)
        if not worker.alive:
            run.problems.append(f"{worker.name} exited (code {worker.proc and worker.proc.poll()})")
        if (count := text.count("Traceback")) > 0:
            run.problems.append(f"{worker.name}: {count} tracebacks")


async def start_workers(cfg: Config, env: dict[str, str]) -> list[FaustWorker]:
    workers = [FaustWorker(APP, name=f"w{i}", env=env, cwd=REPO).start()
               for i in range(cfg.workers)]
    try:
        await asyncio.gather(*(asyncio.to_thread(w.wait_ready, 180) for w in workers))
        await asyncio.to_thread(wait_until_settled, workers, 180)
    except BaseException:
        await asyncio.gather(*(asyncio.to_thread(w.cleanup) for w in workers))
        raise
    return workers


async def one_run(cfg: Config, bootstrap: str, way: str, phase: str, round_: int) -> Run:
    """A fresh service, topics, app id and workers; the measured run; everything stopped."""
    run = Run(way, phase, round_)
    tag = f"{os.getpid()}-{time.time_ns()}"
    topics = {name: f"bench-ds-{tag}-{name}" for name in ("source", "sink", "dlq")}
    await create_topics(bootstrap, {topics["source"]: cfg.partitions,
                                    topics["sink"]: cfg.partitions, topics["dlq"]: 1})
    with QuotaServiceProcess(quota=cfg.quota, servers=cfg.servers,
                             service_time=cfg.service_time, announce=cfg.announce) as service:
        env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "FBP_APP_ID": f"bench-ds-{tag}",
               "FBP_SOURCE": topics["source"], "FBP_SINK": topics["sink"],
               "FBP_DLQ": topics["dlq"], "FBP_QUOTA_URL": service.url, "FBP_WAY": way,
               "FBP_QUOTA": f"{cfg.quota:g}", "FBP_PARTITIONS": str(cfg.partitions),
               "FBP_CALL_LOG": str(run_folder(run))}
        workers = await start_workers(cfg, env)
        try:
            before = os.getloadavg()[0]
            wall = await measure(cfg, bootstrap, service, topics, run)
            run.load = (before, os.getloadavg()[0])
            outage = [at for at, change in run.applied if change.get("fail") is True]
            if phase == "outage" and way in GUARDS and outage:
                run.breaker_open = breaker_opened(workers, wall + outage[0])
            keep_logs(workers, run, wall)
        finally:
            await asyncio.gather(*(asyncio.to_thread(w.cleanup) for w in workers))
    return run


# -- figures -----------------------------------------------------------------------------------

def calls(entry: dict[str, Any]) -> int:
    return int(entry["ok"] + entry["429"] + entry["503"])


def quota_at(run: Run, cfg: Config, t: float) -> float:
    quota = cfg.quota
    for at, change in run.applied:
        if at <= t and "quota" in change:
            quota = change["quota"]
    return quota


def outage_window(run: Run) -> tuple[float, float] | None:
    start = [at for at, change in run.applied if change.get("fail") is True]
    end = [at for at, change in run.applied if change.get("fail") is False]
    if not start:
        return None
    return start[0], end[0] if end else math.inf


def first_second(run: Run, since: float, until: float,
                 holds: Callable[[int, dict[str, Any]], bool]) -> float:
    """Seconds from ``since`` to the start of the first whole second in [since, until) where
    ``holds(second, entry)``; infinite if none."""
    for second in range(math.ceil(since), math.floor(min(until, run.end))):
        entry = run.timeline.get(second)
        if entry is not None and holds(second, entry):
            return second - since
    return math.inf


def steady_figures(run: Run, cfg: Config) -> dict[str, float | None]:
    last = int(run.end)
    outage = outage_window(run)
    skip = (-1.0, -1.0) if outage is None else (outage[0], outage[1] + WARMUP)
    shares = [100 * e["ok"] / quota_at(run, cfg, s + 0.5)
              for s in range(WARMUP, last - 1) if (e := run.timeline.get(s)) is not None
              and not (skip[0] - 1 < s < skip[1])]
    after = [e for s, e in run.timeline.items() if WARMUP <= s <= last]
    total = sum(calls(e) for e in after)
    unloaded = cfg.service_time * 1000
    return {"goodput": statistics.median(shares) if shares else None,
            "rate_429": 100 * sum(e["429"] for e in after) / total if total else None,
            "p99": run.p99_ms, "p99_x": None if run.p99_ms is None else run.p99_ms / unloaded,
            "lost": run.lost, "dead": run.dead, "dead_429": run.dead_429, "seconds": run.end}


def within(quota: float) -> Callable[[int, dict[str, Any]], bool]:
    """Whether a second's ok count is within 10% of ``quota``."""
    return lambda _second, entry: abs(entry["ok"] - quota) <= 0.1 * quota


def quota_figures(run: Run, cfg: Config) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    changes = [(at, change["quota"]) for at, change in run.applied if "quota" in change]
    for key, (at, quota) in zip(("follow_half", "follow_double"), changes, strict=False):
        out[key] = first_second(run, at, math.inf, within(quota))
    for key in ("follow_half", "follow_double"):
        out.setdefault(key, None)  # the run was over before that change
    return out


def outage_figures(run: Run, cfg: Config) -> dict[str, float | None]:
    window = outage_window(run)
    if window is None:
        return {"breaker": None, "drop": None, "during": None, "recovery": None}
    start, end = window
    inside = [run.timeline[s] for s in range(math.ceil(start), math.floor(end))
              if s in run.timeline]
    during = (sum(calls(e) for e in inside) / (len(inside) * cfg.workers)) if inside else None
    recovery = (None if end >= run.end else
                first_second(run, end, math.inf, lambda _s, e: e["ok"] >= 0.9 * cfg.quota))
    return {"breaker": run.breaker_open,
            "drop": first_second(run, start, end, lambda _s, e: calls(e) <= cfg.workers),
            "during": during, "recovery": recovery}


def figures(run: Run, cfg: Config) -> dict[str, float | None]:
    out = steady_figures(run, cfg)
    if run.phase == "quota":
        out.update(quota_figures(run, cfg))
    if run.phase == "outage":
        out.update(outage_figures(run, cfg))
    return out


# -- report ------------------------------------------------------------------------------------

def spread(values: Sequence[float | None], digits: int = 1, unit: str = "") -> str:
    """Median (min-max) over rounds; 'never' for an infinite value, 'n/a' for none."""
    known = sorted(v for v in values if v is not None)
    if not known:
        return "n/a"

    def one(v: float) -> str:
        return "never" if math.isinf(v) else f"{v:,.{digits}f}{unit}"

    median = statistics.median_low(known) if math.isinf(known[-1]) else statistics.median(known)
    if len(known) == 1 or known[0] == known[-1]:
        return one(median)
    return f"{one(median)} ({one(known[0])}-{one(known[-1])})"


COLUMNS: dict[str, list[tuple[str, str, int, str]]] = {  # header, figure, digits, unit
    "steady": [("goodput, % of quota", "goodput", 1, "%"), ("429s, % of calls", "rate_429", 2,
               "%"), ("p99 ok latency, ms", "p99", 1, ""), ("p99 / unloaded", "p99_x", 2, "x"),
               ("lost", "lost", 0, ""), ("dead-lettered", "dead", 0, ""),
               ("of which 429", "dead_429", 0, ""), ("run, s", "seconds", 0, "")],
    "quota": [("to follow Q/2, s", "follow_half", 1, ""),
              ("to follow 2Q, s", "follow_double", 1, "")],
    "outage": [("breaker open on all workers, s", "breaker", 1, ""),
               ("calls <= 1/s/worker after, s", "drop", 1, ""),
               ("calls/s/worker in outage", "during", 2, ""),
               ("back to >= 90% Q after, s", "recovery", 1, "")],
}
TARGETS = {
    "goodput": ">= 95%", "rate_429": "<= 1%", "p99_x": "<= 2x", "lost": "0",
    "dead_429": "0", "follow_half": "<= 5", "follow_double": "<= 5", "breaker": "<= 2",
    "drop": "<= 2", "during": "<= 1", "recovery": "<= 5",
}


def phase_table(phase: str, runs: list[Run], cfg: Config) -> list[str]:
    columns = COLUMNS["steady"] + (COLUMNS[phase] if phase != "steady" else [])
    lines = ["| way | " + " | ".join(h for h, *_ in columns) + " |",
             "| --- |" + " ---: |" * len(columns),
             "| *issue 22 target* | " + " | ".join(TARGETS.get(k, "") for _, k, _, _ in columns)
             + " |"]
    for way in cfg.ways:
        mine = [figures(r, cfg) for r in runs if r.way == way and r.phase == phase]
        if mine:
            cells = [spread([f.get(key) for f in mine], digits, unit)
                     for _, key, digits, unit in columns]
            lines.append(f"| {way} | " + " | ".join(cells) + " |")
    return lines


PHASE_TEXT = {
    "steady": "quota Q all along.",
    "quota": "quota Q, then Q/2 from T/3, then 2Q from 2T/3 (T = events / Q).",
    "outage": "every call answered 503 (no Retry-After) from T/10 for T/5 s.",
}


def render(cfg: Config, runs: list[Run], command: str, load: tuple[float, float]) -> str:
    t = cfg.nominal
    lines = [
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {git_commit(REPO)}; "
        f"{os.cpu_count()} cores (nproc); load average (1 min) {load[0]:.2f} before, "
        f"{load[1]:.2f} after; command `{command}`.", "",
        f"{cfg.workers} real `faust worker` processes of `bench/downstream_app.py` per run "
        f"(64 events in progress per worker in every way) call a quota service of Q = "
        f"{cfg.quota:g}/s (burst Q/10, {cfg.servers} servers, {cfg.service_time * 1000:g} ms "
        f"each: the unloaded latency) once per event; {cfg.events:,} events per run (T = "
        f"{t:.0f} s at Q), {cfg.rounds} round(s), ways interleaved within a round. Figures: "
        "median over rounds (min-max). Definitions in the module docstring of "
        "`bench/downstream.py`; 'n/a': nothing to measure (e.g. goodput when the run was "
        "over before second 7), 'never': not within the run.", ""]
    for phase in cfg.phases:
        lines += [f"## {phase}: {PHASE_TEXT[phase]}", "", *phase_table(phase, runs, cfg), ""]
        if (RESULTS / f"{OUTPUT}-{phase}.png").exists():
            lines += [f"![{phase}]({OUTPUT}-{phase}.png)", ""]
    lines += ["## Runs", ""]
    for r in runs:
        lines.append(
            f"- round {r.round}, {r.phase}, {r.way}: {r.end:.1f} s"
            f"{'' if r.done else ' (TIMEOUT)'}; calls ok {r.totals.get('ok', 0):,}, "
            f"429 {r.totals.get('429', 0):,}, 503 {r.totals.get('503', 0):,}; lost {r.lost}, "
            f"DLQ {r.dead} ({r.dead_429} for 429); load {r.load[0]:.2f} -> {r.load[1]:.2f}"
            + (f"; PROBLEMS: {', '.join(r.problems)}" if r.problems else ""))
    lines += ["", f"Worker logs: `{LOGS}`."]
    return "\n".join(lines) + "\n"


def plot(cfg: Config, runs: list[Run], phase: str) -> Path | None:
    """ok/s, 429/s and p99 over time, one line per way, for round 1 of ``phase``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in runs if r.phase == phase and r.round == 1]
    if not chosen:
        return None
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for r in chosen:
        seconds = sorted(s for s in r.timeline if s <= r.end + 1)
        rejected = ("429", "503") if phase == "outage" else ("429",)
        series = [[r.timeline[s]["ok"] for s in seconds],
                  [sum(r.timeline[s][k] for k in rejected) for s in seconds]]
        p99 = [r.timeline[s]["p99_ms"] or math.nan for s in seconds]
        for ax, values in zip(axes, [*series, p99], strict=True):
            ax.plot(seconds, values, label=r.way, linewidth=1.2)
    span = max(r.end for r in chosen)
    steps = [0.0, *(at for at, c in chosen[0].applied if "quota" in c), span]
    axes[0].step(steps, [quota_at(chosen[0], cfg, t) for t in steps], where="post",
                 color="black", linestyle="--", label="quota")
    axes[2].axhline(cfg.service_time * 1000, color="black", linestyle=":", label="unloaded")
    window = outage_window(chosen[0])
    axes[2].set_yscale("log")
    labels = ("ok / s", "429 + 503 / s" if phase == "outage" else "429 / s", "p99 ok, ms")
    for ax, label in zip(axes, labels, strict=True):
        if window is not None:
            ax.axvspan(window[0], min(window[1], span), color="red", alpha=0.1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[2].set_xlabel("seconds from the start")
    axes[0].set_title(f"downstream, {phase}: {PHASE_TEXT[phase]}")
    out = RESULTS / f"{OUTPUT}-{phase}.png"
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# -- main --------------------------------------------------------------------------------------

def run_all(cfg: Config, done: Callable[[list[Run]], object] = lambda runs: None) -> list[Run]:
    """Every run; ``done(runs so far)`` after each round (the report of the rounds done is
    written then: a long run stopped early still leaves its whole rounds)."""
    runs: list[Run] = []
    with kafka_bootstrap() as bootstrap:  # starts its broker outside any event loop
        for round_ in range(1, cfg.rounds + 1):
            for phase in cfg.phases:
                for way in cfg.ways:
                    run = asyncio.run(one_run(cfg, bootstrap, way, phase, round_))
                    runs.append(run)
                    print(f"round {round_} {phase} {way}: {run.end:.1f} s, lost {run.lost}, "
                          f"DLQ {run.dead}, {run.totals}"
                          + (f", PROBLEMS {run.problems}" if run.problems else ""),
                          file=sys.stderr, flush=True)
            done(runs)
    return runs


def names(text: str, known: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(n.strip() for n in text.split(",") if n.strip())
    if not chosen or set(chosen) - set(known):
        raise argparse.ArgumentTypeError(f"choose among {', '.join(known)}; got {text!r}")
    return chosen


def parse(argv: list[str]) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--events", type=int, default=30_000, help="events per run")
    add("--rounds", type=int, default=5)
    add("--workers", type=int, default=3, help="faust worker processes per run")
    add("--quota", type=float, default=300.0, help="Q: calls per second the service allows")
    add("--servers", type=int, default=16, help="calls the service serves at once")
    add("--service-time", type=float, default=0.02, help="seconds per call (unloaded)")
    add("--ways", type=lambda s: names(s, WAYS), default=WAYS)
    add("--phases", type=lambda s: names(s, PHASES), default=PHASES)
    add("--announce", action="store_true",
        help="the service says its quota in every answer (RateLimit-Policy); the guard reads it")
    add("--output", default="downstream",
        help="results as bench/results/OUTPUT.md and OUTPUT-<phase>.png")
    args = parser.parse_args(argv)
    global OUTPUT
    OUTPUT = args.output
    return Config(args.events, args.rounds, args.workers, args.quota, args.servers,
                  args.service_time, args.ways, args.phases, args.announce)


def main(argv: list[str]) -> str:
    cfg = parse(argv)
    command = " ".join(["PYTHONPATH=. .venv/bin/python bench/downstream.py", *argv])
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(LOGS)
    before = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)

    def report(runs: list[Run]) -> str:
        rounds = max(r.round for r in runs)
        for phase in cfg.phases:
            plot(cfg, runs, phase)
        text = render(replace(cfg, rounds=rounds), runs, command,
                      (before, os.getloadavg()[0]))
        (RESULTS / f"{OUTPUT}.md").write_text("# Protecting a called system (issue 22)\n\n"
                                              + text)
        return text

    return report(run_all(cfg, report))


if __name__ == "__main__":
    sys.stdout.write(main(sys.argv[1:]))
