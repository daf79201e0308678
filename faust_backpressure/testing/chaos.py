"""A chaos scenario: rate-limited pipelines on real workers through crashes and a broker outage.

One scenario for both sizes: the CI test (``tests/integration/chaos/``, :meth:`ChaosPlan.ci`) and
``make chaos`` (``bench/chaos.py``, :meth:`ChaosPlan.full`). docs/reliability.md describes the
scenario, its report and its results.

What runs: ``plan.workers`` real ``faust worker`` processes of
:mod:`faust_backpressure.testing.chaos_app`, each with one ``bp.pipeline`` IN -> OUT, DLQ per
entry of ``plan.pipelines`` (``event``: ``process=``; ``batch``: ``process_batch=``, batches of
``plan.batch_size``), every pipeline under the same distributed limiter at ``plan.rate``/s, burst
``plan.burst``, ``max_retries``. Each IN has ``plan.partitions`` partitions and
``plan.per_pipeline`` records with unique ids (every ``fail_every``-th marked to fail in
``process``, ``not_json`` not JSON). Records are fed to every IN alike so that about
``lead_seconds`` of the limit is always waiting: every fault meets a backlog.

Faults, each when its fraction of all the ids has come out (an OUT or a DLQ), one after the
other (a fault waits until the previous one has recovered, or ``recover_timeout``):

* ``kill``: SIGKILL of a worker, restarted at once with the same data dir (``wipe``: its RocksDB
  dir deleted first);
* ``outage``: the broker stopped (SIGTERM, or SIGKILL with ``broker_kill``), started again
  ``seconds`` later on the same ports with the same data.

A worker that exits by itself is restarted (as a supervisor would) and counted.

The run ends when the group's committed offsets on every IN reach its end offsets (nothing more
can come out) or nothing has come out for ``stall_timeout``. Then each pipeline's OUT and DLQ are
read from the start (``read_committed`` in exactly_once) and every id of its IN is accounted for
there (:class:`PipelineResult`); the limiter's bound is checked over every pipeline's admissions
together (:class:`ChaosResult`). The plan and result types are in
:mod:`~faust_backpressure.testing.chaos_plan`, the report in
:mod:`~faust_backpressure.testing.chaos_report`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from faust_backpressure.agents import headers as h
from faust_backpressure.testing.broker import LocalKafkaBroker
from faust_backpressure.testing.chaos_plan import (
    BOUND_SPANS,
    GUARANTEES,
    PIPELINES,
    ChaosPlan,
    ChaosResult,
    Fault,
    FaultReport,
    Guarantee,
    LostId,
    PipelineResult,
    topic_names,
)
from faust_backpressure.testing.chaos_report import (
    GUARD_OVERDRAFT,
    GUARD_PAUSE,
    format_table,
    git_commit,
    read_worker_log,
)
from faust_backpressure.testing.kafka_io import (
    Record,
    committed_offsets,
    create_topics,
    end_offsets,
    offset_commits,
    produce,
    read_to_end,
    wait_partitions,
)
from faust_backpressure.testing.quota_client import QuotaServiceProcess
from faust_backpressure.testing.workers import FaustWorker, wait_until_settled
from faust_backpressure.wire.topics import pressure_topic

# The plan, result and report types are re-exported: tests and bench/chaos.py import them here.
__all__ = ["APP", "GUARANTEES", "PIPELINES", "ChaosPlan", "ChaosResult", "Fault", "FaultReport",
           "Guarantee", "LostId", "PipelineResult", "format_table", "git_commit", "run_chaos",
           "worst_window"]

APP = "faust_backpressure.testing.chaos_app"


# ---- the run ----------------------------------------------------------------------------------

class _Tracker:
    """Reads OUT and the DLQ (uncommitted: every admission shows) while the scenario runs."""

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.seen: set[bytes] = set()
        #: (time of admission, worker) of every output and dead letter seen, duplicates included.
        self.admissions: list[tuple[float, str]] = []
        self.changed = asyncio.Event()

    async def run(self) -> None:
        async with AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                    enable_auto_commit=False,
                                    auto_offset_reset="earliest") as consumer:
            tps = [TopicPartition(t, p) for t in self.topics
                   for p in sorted(await wait_partitions(consumer, t))]
            consumer.assign(tps)
            await consumer.seek_to_beginning()
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        self._add(record)
                if batch:
                    self.changed.set()

    def _add(self, record: Record) -> None:
        if record.key is not None:
            self.seen.add(record.key)
        admitted = _admission(record)
        if admitted is not None:
            self.admissions.append(admitted)

    def first_admission(self, worker: str | None, after: float) -> float | None:
        times = [t for t, w in self.admissions if t > after and (worker is None or w == worker)]
        return min(times, default=None)


def _admission(record: Record) -> tuple[float, str] | None:
    """When the gate let this record's event through (an OUT's ``at``; a DLQ's first failure)."""
    headers = dict(record.headers)
    if h.FIRST_FAILURE in headers:
        return datetime.fromisoformat(headers[h.FIRST_FAILURE].decode()).timestamp(), ""
    try:
        body = json.loads(record.value or b"")
        return float(body["at"]), str(body["worker"])
    except (ValueError, KeyError, TypeError):
        return None


def worst_window(times: Sequence[float], span: float) -> int:
    """Most of the sorted ``times`` in any closed interval ``[t, t + span]``."""
    return max((bisect.bisect_right(times, t + span) - i for i, t in enumerate(times)),
               default=0)


class _Run:
    def __init__(self, plan: ChaosPlan, broker: LocalKafkaBroker, workdir: Path,
                 log: Callable[[str], None], cwd: Path | None) -> None:
        self.plan = plan
        self.broker = broker
        self.bootstrap = broker.bootstrap_servers
        self.workdir = workdir
        self.log = log
        tag = f"{plan.guarantee.replace('_', '-')}-{time.time_ns() % 10**10}"
        self.app_id = f"chaos-{tag}"
        #: pipeline -> its (source, sink, DLQ) topics
        self.topics = {name: topic_names(tag, name) for name in plan.pipelines}
        self.total = plan.per_pipeline * len(plan.pipelines)
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "FBP_APP_ID": self.app_id,
               "FBP_TAG": tag, "FBP_PIPELINES": ",".join(plan.pipelines),
               "FBP_GUARANTEE": plan.guarantee, "FBP_MAX_RETRIES": str(plan.max_retries),
               "FBP_LIMITER": f"chaos:{plan.rate:g}:{plan.burst:g}",
               "FBP_BATCH": str(plan.batch_size),
               "FBP_CONTROL": "1" if plan.control_loop else "0"}
        self.workers = [FaustWorker(APP, name=f"w{i}", env=env, data_dir=workdir / f"w{i}",
                                    cwd=cwd) for i in range(plan.workers)]
        self.tracker = _Tracker(self.bootstrap, [t for _, sink, dlq in self.topics.values()
                                                 for t in (sink, dlq)])
        quota = plan.downstream_quota
        self.service = None if quota is None else QuotaServiceProcess(
            quota=quota, burst=quota / 10, servers=16, service_time=0.002)
        self.result = ChaosResult(plan, git_commit(), workdir=str(workdir))
        self.produced = 0  # per pipeline

    async def commits_at_end(self) -> bool:
        for source, _, _ in self.topics.values():
            try:
                ends = await end_offsets(self.bootstrap, source)
                commits = await committed_offsets(self.bootstrap, self.app_id, source,
                                                  timeout=1.0)
            except Exception:  # broad: the broker may be down on purpose; asked again later
                return False
            if any(commits.get(p, -1) < end for p, end in ends.items()):
                return False
        return True

    async def feed(self, count: int) -> None:
        """The next ``count`` records of every pipeline, to its source."""
        for name, (source, _, _) in self.topics.items():
            batch = [self.plan.record(n, name)
                     for n in range(self.produced, self.produced + count)]
            await produce(self.bootstrap, source, batch)
        self.produced += count

    def supervise(self) -> None:
        for worker in self.workers:
            if worker.proc is not None and not worker.alive:
                code = worker.proc.poll()
                progress = len(self.tracker.seen) / self.total
                self.result.worker_exits.append(
                    f"{worker.name} exit {code} at {progress:.0%} "
                    f"(t={time.time() - self.result.started:.1f} s)")
                self.log(f"chaos: {worker.name} exited with {code}; restarting it")
                worker.start()

    def recovered(self, report: FaultReport) -> bool:
        worker = report.worker or None
        return self.tracker.first_admission(worker, report.restarted_at) is not None

    async def inject(self, fault: Fault) -> FaultReport:
        progress = len(self.tracker.seen) / self.total
        injected = time.time()
        if fault.kind == "kill":
            worker = self.workers[fault.worker]
            self.log(f"chaos: SIGKILL {worker.name} at {progress:.0%}")
            worker.kill()
            if fault.wipe:
                shutil.rmtree(worker.data_dir / "state", ignore_errors=True)
            restarted = time.time()
            worker.start()
            return FaultReport(fault, progress, injected, restarted, worker=worker.name)
        self.log(f"chaos: broker down at {progress:.0%} for {fault.seconds:g} s")
        await asyncio.to_thread(self.broker.halt, kill=self.plan.broker_kill)
        await asyncio.sleep(fault.seconds)  # the outage itself, not a wait for a condition
        await asyncio.to_thread(self.broker.restart)
        self.log("chaos: broker back")
        return FaultReport(fault, progress, injected, time.time())

    async def run(self) -> ChaosResult:
        plan = self.plan
        sizes = {}
        for source, sink, dlq in self.topics.values():
            sizes.update({source: plan.partitions, sink: plan.partitions, dlq: 1})
        await create_topics(self.bootstrap, sizes)
        if self.service is not None:
            url = await asyncio.to_thread(self.service.start)
            for worker in self.workers:
                worker.env["FBP_QUOTA_URL"] = url
        for worker in self.workers:
            worker.start()
        for worker in self.workers:
            await asyncio.to_thread(worker.wait_ready, 120)
        await asyncio.to_thread(wait_until_settled, self.workers, 120)
        self.log(f"chaos: {len(self.workers)} workers settled; feeding {plan.per_pipeline} "
                 f"records to each of {', '.join(plan.pipelines)}")
        tracker = asyncio.ensure_future(self.tracker.run())
        began = time.monotonic()
        self.result.started = time.time()
        try:
            await self._loop()
        finally:
            self.result.seconds = time.monotonic() - began
            tracker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await tracker
        await self._account()
        for report in self.result.faults:
            first = self.tracker.first_admission(report.worker or None, report.restarted_at)
            report.recovery = None if first is None else max(0.0, first - report.restarted_at)
        return self.result

    async def _loop(self) -> None:
        plan, total, width = self.plan, self.total, len(self.plan.pipelines)
        records = plan.per_pipeline
        lead = max(200, int(plan.rate * plan.lead_seconds))
        chunk = max(100, lead // 4) // width
        pending = list(plan.faults)
        last_seen, last_change = 0, time.monotonic()
        next_commit_check = 0.0
        while True:
            self.supervise()
            seen = len(self.tracker.seen)
            now = time.monotonic()
            if seen != last_seen:
                last_seen, last_change = seen, now
            # Faults first: on a loaded machine a feed can take as long as processing it, and a
            # loop that fed first would inject its faults late (docs/lab-notes/testing.md).
            if pending and seen >= pending[0].at * total:
                previous = self.result.faults[-1] if self.result.faults else None
                if (previous is None or self.recovered(previous)
                        or time.time() - previous.restarted_at > plan.recover_timeout):
                    self.result.faults.append(await self.inject(pending.pop(0)))
                    last_change = time.monotonic()
                    continue
            if self.produced < records and self.produced * width - seen < lead:
                await self.feed(min(chunk, records - self.produced))
                continue
            if self.produced == records and now >= next_commit_check:
                next_commit_check = now + 1.0
                if await self.commits_at_end():
                    if pending:
                        self.log(f"chaos: done before {len(pending)} fault(s) could be injected")
                    return
            if now - last_change > plan.stall_timeout:
                self.result.stalled = True
                self.log(f"chaos: stalled at {seen}/{total}")
                await self.dump_stacks()
                return
            self.tracker.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.tracker.changed.wait(), 0.5)

    async def _account(self) -> None:
        plan = self.plan
        for name in plan.pipelines:
            self.result.pipelines[name] = await self._account_pipeline(name)
        times = sorted(t for t, _ in self.tracker.admissions)
        self.result.bound = {span: (worst_window(times, span), plan.rate * span + plan.burst)
                             for span in BOUND_SPANS}
        if plan.control_loop:
            after = max((r.restarted_at for r in self.result.faults), default=0.0)
            samples = await read_to_end(self.bootstrap, pressure_topic(self.app_id), timeout=60)
            self.result.samples_after_faults = sum(r.timestamp / 1000 > after for r in samples)

    async def _account_pipeline(self, name: str) -> PipelineResult:
        """Every id of ``name``'s source in its sink or its DLQ, bad ones with their reason."""
        plan, (source, sink, dlq_topic) = self.plan, self.topics[name]
        isolation = "read_committed" if plan.guarantee == "exactly_once" else "read_uncommitted"
        inputs = await read_to_end(self.bootstrap, source, timeout=120)
        out = await read_to_end(self.bootstrap, sink, isolation_level=isolation, timeout=120)
        dlq = await read_to_end(self.bootstrap, dlq_topic, isolation_level=isolation,
                                timeout=120)
        try:
            commits: dict[int, int] = await committed_offsets(self.bootstrap, self.app_id, source)
        except Exception:  # broad: only the lost ids' report uses them
            commits = {}
        result = PipelineResult(len(inputs), len(out), len(dlq))
        copies = Counter(r.key for r in [*out, *dlq])
        result.duplicates = {k.decode(): c - 1 for k, c in copies.items()
                             if k is not None and c > 1}
        result.lost = sorted(
            (LostId(r.key.decode(), r.partition, r.offset, commits.get(r.partition))
             for r in inputs if r.key is not None and r.key not in copies),
            key=lambda x: (x.partition, x.offset))
        attempts = str(1 + plan.max_retries).encode()
        dead = {r.key: dict(r.headers) for r in dlq if r.key is not None}
        for n in range(plan.per_pipeline):
            key = plan.record(n, name)[0]
            if plan.is_not_json(n) or plan.is_failing(n):
                meta = dead.get(key)
                stage = b"decode" if plan.is_not_json(n) else b"process"
                if meta is None:
                    if key in copies:  # in OUT: cannot happen for a record that always fails
                        result.bad_without_reason.append(key.decode())
                    continue  # otherwise lost, counted above
                ok = (meta.get(h.STAGE) == stage and bool(meta.get(h.ERROR_TYPE))
                      and bool(meta.get(h.ERROR_MESSAGE))
                      and (stage == b"decode" or meta.get(h.ATTEMPTS) == attempts))
                if not ok:
                    result.bad_without_reason.append(key.decode())
            elif key in dead:
                result.misrouted[key.decode()] = (dead[key].get(h.STAGE, b"?").decode() + ": "
                                                  + dead[key].get(h.ERROR_MESSAGE, b"").decode())
        result.duplicate_origins = self._origins(inputs, out, dlq, result.duplicates)
        if result.duplicates and plan.guarantee == "exactly_once":  # where reading resumed
            history = self.workdir / f"offset-commits-{name}.txt"
            history.write_text("".join(f"{c}\n" for c in await offset_commits(
                self.bootstrap, self.app_id) if c[0] == source))
            result.duplicate_origins.append(f"offset commits of {source}: {history}")
        return result

    def _origins(self, inputs: list[Record], out: list[Record], dlq: list[Record],
                 duplicates: dict[str, int]) -> list[str]:
        """Per input partition: the duplicated ids' offsets, who wrote the copies, and when
        (seconds since the run began), to set against the faults' times."""
        where = {r.key: (r.partition, r.offset) for r in inputs if r.key is not None}
        copies: dict[bytes, list[tuple[float, str]]] = {}
        for record in sorted([*out, *dlq], key=lambda r: _admission(r) or (0.0, "")):
            if record.key is not None and record.key.decode() in duplicates:
                copies.setdefault(record.key, []).append(_admission(record) or (0.0, "?"))
        by_partition: dict[int, list[tuple[int, list[tuple[float, str]]]]] = {}
        for key, seen in copies.items():
            partition, offset = where.get(key, (-1, -1))
            by_partition.setdefault(partition, []).append((offset, seen))
        t0 = self.result.started
        lines = []
        for partition, items in sorted(by_partition.items()):
            offsets = [o for o, _ in items]
            first = [c[0][0] - t0 for _, c in items]
            last = [c[-1][0] - t0 for _, c in items]
            writers = sorted({w or "dlq" for _, c in items for _, w in c})
            lines.append(f"p{partition} offsets {min(offsets)}-{max(offsets)} ({len(items)} ids), "
                         f"written by {'+'.join(writers)}, first copies t={min(first):.1f}-"
                         f"{max(first):.1f} s, last copies t={min(last):.1f}-{max(last):.1f} s")
        return lines

    async def dump_stacks(self) -> None:
        """Every live worker writes its threads' and tasks' stacks to its log (mode's SIGUSR1
        handler): what a stalled worker was waiting for."""
        for worker in self.workers:
            if worker.alive:
                os.kill(worker.pid, signal.SIGUSR1)
        await asyncio.sleep(3.0)

    def stop(self) -> None:
        logs = []
        for worker in self.workers:
            worker.stop(timeout=15)
            logs.append(worker.logs())  # read once: every account below comes from it
            read_worker_log(self.result, worker.name, logs[-1])
        if self.service is not None and self.service.url:
            try:
                stats = self.service.stats()
            finally:
                self.service.stop()
            self.result.downstream = {
                "ok": stats["ok"], "rejected_429": stats["rejected_429"],
                "pauses": max(len(GUARD_PAUSE.findall(text)) for text in logs),
                "overdrafts": sum(text.count(GUARD_OVERDRAFT) for text in logs)}


async def run_chaos(plan: ChaosPlan, broker: LocalKafkaBroker, workdir: Path, *,
                    log: Callable[[str], None] = print, cwd: Path | None = None) -> ChaosResult:
    """Run ``plan`` against ``broker`` (which it will stop and restart: not a shared one).

    Worker data dirs and logs are kept under ``workdir``.
    """
    run = _Run(plan, broker, workdir, log, cwd)
    try:
        return await run.run()
    finally:
        await asyncio.to_thread(run.stop)
