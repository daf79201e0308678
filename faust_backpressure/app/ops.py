"""What ``faust -A app backpressure status`` and ``lag`` read: the cluster, from Kafka alone.

No worker's web port is needed: every worker writes what matters to topics of the app:

* the limiter table's changelog: each distributed limiter's persisted rate, burst, tokens,
  epoch and counters (the owner writes it with every grant and command);
* the control table's changelog: each control loop's decided rate, emergency flag, severity
  and reason (the deciding worker writes it with every decision);
* the pressure topic: every worker's recent samples (downstream lag, utilization, CPU);
* consumer group offsets: each pipeline's source backlog, DLQ sizes; whether each control
  loop's and credit flow's downstream group has committed on its topics (and they exist);
* the ops topic: operators' pauses, breakers and key overrides, each worker's keyed-limit
  status (see :mod:`.keyed_ops`) and summary (a batch pipeline's p99, see :mod:`.cluster`).

The app module itself (imported by ``faust -A``) says what is declared: limiters with their
configured rates, control loops, pipelines.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from aiokafka import TopicPartition

from faust_backpressure.agents.gate_base import KEYED_COUNTERS, KEYED_COUNTS
from faust_backpressure.app.cluster import STALE_AFTER, WorkerStatusRecord
from faust_backpressure.app.keyed_ops import KeyedStatusRecord, KeyOverrideCommand
from faust_backpressure.app.pause import pauses
from faust_backpressure.app.registry import Installation, configured_rate
from faust_backpressure.control.loop import ControlLoop
from faust_backpressure.control.override import Override
from faust_backpressure.control.probe import no_commits_warning
from faust_backpressure.control.samples import WorkerSample
from faust_backpressure.limiters import RateLimitingStrategy
from faust_backpressure.tables.limiter_commands import (
    CommandTimeout,
    group_offsets,
    read_compacted,
    read_limiter_states,
)
from faust_backpressure.wire.kafka_clients import (
    KafkaClientSettings,
    batches_to_end,
    kafka_consumer,
    kafka_producer,
    topic_partitions,
)
from faust_backpressure.wire.signing import RejectedRecord, canonical
from faust_backpressure.wire.topics import control_changelog, ops_topic, pressure_topic

__all__ = ["GroupLag", "PartitionLag", "breaker_state", "cluster_status", "group_lag",
           "input_warning", "keyed_overrides", "keyed_status", "send_override", "signed_records"]


@dataclass
class PartitionLag:
    topic: str
    partition: int
    committed: int
    end: int
    lag: int
    #: seconds since the oldest unprocessed record was written (0 when caught up)
    time_lag: float


@dataclass
class GroupLag:
    group: str
    partitions: list[PartitionLag] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def max_time_lag(self) -> float:
        return max((p.time_lag for p in self.partitions), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "lag": self.total, "max_time_lag": self.max_time_lag,
                "partitions": [asdict(p) for p in self.partitions]}


async def _committed(kafka: KafkaClientSettings | str, group: str
                     ) -> dict[TopicPartition, int]:
    offsets = await group_offsets(kafka, group)
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def group_lag(kafka: KafkaClientSettings | str, group: str,
                    topics: list[str] | None = None, *, time_lag: bool = True) -> GroupLag:
    """Per-partition lag (end minus committed offset) of ``group`` on every topic it has
    committed offsets for (or on ``topics``: their uncommitted partitions count from 0), and
    how old the oldest unprocessed record of each partition is."""
    committed = await _committed(kafka, group)
    if not committed and not topics:
        return GroupLag(group)
    async with kafka_consumer(kafka, "ops-lag") as consumer:
        tps = set(tp for tp in committed if topics is None or tp.topic in topics)
        for topic in topics or []:
            tps |= {TopicPartition(topic, p) for p in await topic_partitions(consumer, topic, 2.0)}
        ordered = sorted(tps)
        end = await consumer.end_offsets(ordered) if ordered else {}
        result = GroupLag(group)
        now = time.time()
        waiting: dict[TopicPartition, PartitionLag] = {}  # the rows whose time-lag is read
        for tp in ordered:
            start = committed.get(tp, 0)
            lag = max(0, end[tp] - start)
            result.partitions.append(PartitionLag(tp.topic, tp.partition, start, end[tp],
                                                  lag, 0.0))
            if lag and time_lag:
                waiting[tp] = result.partitions[-1]
        if waiting:
            consumer.assign(list(waiting))
            for tp, row in waiting.items():
                consumer.seek(tp, row.committed)
            deadline = time.monotonic() + 5.0
            while waiting and time.monotonic() < deadline:
                batch = await consumer.getmany(*waiting, timeout_ms=300, max_records=1)
                for tp, records in batch.items():
                    if records and tp in waiting:
                        waiting.pop(tp).time_lag = max(0.0, now - records[0].timestamp / 1000)
                        consumer.pause(tp)
        return result


async def _recent_samples(kafka: KafkaClientSettings | str, topic: str, horizon: float,
                          secret: bytes | None) -> dict[str, dict[str, WorkerSample]]:
    """Latest sample per limiter and worker written in the last ``horizon`` seconds."""
    out: dict[str, dict[str, WorkerSample]] = {}
    async with kafka_consumer(kafka, "ops-status") as consumer:
        tps = sorted(TopicPartition(topic, p) for p in await topic_partitions(consumer, topic, 2.0))
        if not tps:
            return out
        consumer.assign(tps)
        since = int((time.time() - horizon) * 1000)
        found = await consumer.offsets_for_times(dict.fromkeys(tps, since))
        end = await consumer.end_offsets(tps)
        todo = set()
        for tp in tps:
            at = found.get(tp)
            if at is None:
                continue
            consumer.seek(tp, at.offset)
            todo.add(tp)
        async for batch in batches_to_end(consumer, end, todo):
            for records in batch.values():
                for record in records:
                    try:
                        sample = WorkerSample.decode(record.value, record.key, secret)
                    except RejectedRecord:
                        continue
                    out.setdefault(sample.limiter, {})[sample.worker] = sample
        return out


async def _topic_size(kafka: KafkaClientSettings | str, topic: str) -> int | None:
    async with kafka_consumer(kafka, "ops-status") as consumer:
        tps = sorted(TopicPartition(topic, p) for p in await topic_partitions(consumer, topic, 2.0))
        if not tps:
            return None
        first = await consumer.beginning_offsets(tps)
        last = await consumer.end_offsets(tps)
        return int(sum(last[tp] - first[tp] for tp in tps))


async def input_warning(kafka: KafkaClientSettings | str, group: str, topics: list[str], *,
                        counted: bool) -> str | None:
    """What is wrong with a loop's or credit flow's input now: topics that do not exist, or a
    group that has committed nothing on them (None: nothing)."""
    async with kafka_consumer(kafka, "ops-status") as consumer:
        missing = [t for t in topics if not await topic_partitions(consumer, t, 2.0)]
    if missing:
        return f"topics {sorted(missing)} do not exist"
    if any(tp.topic in topics for tp in await _committed(kafka, group)):
        return None
    backlog = (await group_lag(kafka, group, topics, time_lag=False)).total
    return no_commits_warning(group, topics, backlog, counted=counted)


def signed_records(ops: dict[str, Any], prefix: str, decode: Any, secret: bytes | None, *,
                   fresh_at: float | None = None) -> list[Any]:
    """The ops records under ``prefix`` that pass ``decode`` (the compacted topic's values
    were written as canonical JSON, so they are re-encoded byte for byte); with ``fresh_at``,
    only the status records not stale then (:data:`~.cluster.STALE_AFTER`)."""
    out = []
    for key, value in ops.items():
        if key.startswith(prefix) and isinstance(value, dict):
            try:
                record = decode(canonical(value), key.encode(), secret)
            except (RejectedRecord, ValueError, TypeError):
                continue
            if fresh_at is None or fresh_at - record.at <= STALE_AFTER:
                out.append(record)
    return out


def keyed_overrides(ops: dict[str, Any], limit: str,
                    secret: bytes | None) -> list[KeyOverrideCommand]:
    """The keys of ``limit`` an operator has set limits for (signed records only)."""
    found = signed_records(ops, f"keyed/{limit}/", KeyOverrideCommand.decode, secret)
    return sorted((c for c in found if c.rate is not None), key=lambda c: c.shown_key)


def keyed_status(bp: Installation, ops: dict[str, Any], now: float) -> list[dict[str, Any]]:
    """Each keyed limit summed over the workers whose status is fresh (3 intervals)."""
    secret = bp.settings.secret_key
    records = signed_records(ops, "keyed-status/", KeyedStatusRecord.decode, secret,
                             fresh_at=now)
    out = []
    for name, gate in sorted(bp.keyed_limits.items()):
        mine = [r.body for r in records if r.limit == name]
        row: dict[str, Any] = {
            "name": name, "agent": gate.agent_name, "on_limit": gate.on_limit,
            "rate": gate.default.tokens_per_second, "burst": gate.default.burst_capacity,
            "workers": len(mine), "key_overrides": len(keyed_overrides(ops, name, secret))}
        for count in KEYED_COUNTS:
            if count != "overrides":  # key_overrides: the operators', from the ops records
                row[count] = sum(b[count] for b in mine) if mine else None
        for counter in KEYED_COUNTERS:
            rates = [b[f"{counter}_per_s"] for b in mine if b[f"{counter}_per_s"] is not None]
            row[f"{counter}_per_s"] = sum(rates) if rates else None
        top: dict[str, dict[str, Any]] = {}
        for body in mine:
            for entry in body["top_limited"]:
                seen = top.setdefault(f"{entry['type']}:{entry['key']}",
                                      {**entry, "refused": 0})
                seen["refused"] += entry["refused"]
        row["top_limited"] = sorted(top.values(), key=lambda t: -t["refused"])[:10]
        row["key_types"] = sorted({t["type"] for t in row["top_limited"]})
        out.append(row)
    return out


def _severity(state: dict[str, Any] | None, lag: int | None, loop: Any) -> str:
    if state and state.get("override"):
        return "OVERRIDE"
    if state and state.get("severity"):
        return str(state["severity"])
    if state and state.get("emergency"):
        return "EMERGENCY"
    if lag is None or loop is None:
        return "-"
    t = loop.controller.thresholds
    return ("CRITICAL" if lag > t.max_consumer_lag else "WARNING" if lag > t.scaling_threshold
            else "NORMAL")


async def cluster_status(bp: Installation, kafka: KafkaClientSettings | str
                         ) -> dict[str, Any]:
    """Every limiter, control loop, pipeline and credit flow of the app, as seen in Kafka
    now (a credit flow's credits: its window minus the downstream backlog measured now)."""
    app_id = str(bp.app.conf.id)
    secret = bp.settings.secret_key
    loops = bp.control_loops
    horizon = max([3 * loop.interval for loop in loops.values()] + [15.0])
    states, control, samples = await asyncio.gather(
        read_limiter_states(kafka, app_id),
        read_compacted(kafka, control_changelog(app_id)),
        _recent_samples(kafka, pressure_topic(app_id), horizon, secret))
    declared = {limiter.name: limiter for limiter in bp.registered_limiters}
    limiters = [await _limiter_status(kafka, name, states.get(name, {}), loops.get(name),
                                      control.get(name), samples.get(name, {}),
                                      name in states or name in declared, declared.get(name))
                for name in sorted(set(states) | set(declared) | set(loops))]
    ops = (await read_compacted(kafka, ops_topic(app_id))
           if bp.pipelines or bp.downstreams or bp.keyed_limits else {})
    pipelines = await _pipelines_status(bp, kafka, app_id, ops)
    credit_flows = await _credit_flows_status(bp, kafka)
    # what the workers' pressure samples say of the called systems (None: no loop sampled)
    errors = [s.error_rate for seen in samples.values() for s in seen.values()
              if s.error_rate is not None]
    downstreams = [_downstream_status(name, ops, max(errors, default=None))
                   for name in sorted(bp.downstreams)]
    warnings = [f"control loop {x['id']}: {x['input_warning']}" for x in limiters
                if x["input_warning"]]
    warnings += [f"credit flow {f['name']}: {f['input_warning']}" for f in credit_flows
                 if f["input_warning"]]
    return {"app": app_id, "at": time.time(), "limiters": limiters, "pipelines": pipelines,
            "credit_flows": credit_flows, "downstreams": downstreams,
            "keyed": keyed_status(bp, ops, time.time()), "warnings": warnings}


async def _limiter_status(kafka: KafkaClientSettings | str, name: str, state: dict[str, Any],
                          loop: ControlLoop | None, decided: object,
                          seen: dict[str, WorkerSample], distributed: bool,
                          limiter: RateLimitingStrategy | None) -> dict[str, Any]:
    """One limiter's row: its persisted state, its control loop's last decision, the lag and
    utilization the workers' latest samples report."""
    decided = decided if isinstance(decided, dict) else None
    lag = max((s.lag for s in seen.values()), default=None)
    stats = state.get("stats", {}) if isinstance(state.get("stats"), dict) else {}
    limiter = limiter or (loop.limiter if loop is not None else None)
    configured = configured_rate(limiter)
    if configured is None and limiter is not None:
        configured = limiter.current_rate_limit
    return {
        "id": name,
        "distributed": distributed,
        # a distributed limiter's persisted rate; a per-worker limiter's is what its loop
        # last applied (this process's copy only knows the configured one)
        "rate": state.get("rate") if state else (
            (decided.get("override") or {}).get("rate", decided.get("rate"))
            if decided else None),
        "configured_rate": configured,
        "burst": state.get("burst"),
        "tokens": state.get("tokens"),
        "epoch": state.get("epoch"),
        "workers": len(state.get("workers", {}) or {}),
        "granted": stats.get("granted"), "denied": stats.get("denied"),
        "control_loop": loop is not None,
        "downstream_group": None if loop is None else loop.probe.group,
        "decided_rate": None if decided is None else decided.get("rate"),
        "emergency": None if decided is None else bool(decided.get("emergency")),
        "reason": None if decided is None else decided.get("reason"),
        "override": None if decided is None else decided.get("override"),
        "decided_at": None if decided is None else decided.get("decided_at"),
        "severity": _severity(decided, lag, loop),
        "downstream_lag": lag,
        "utilization": max((s.utilization for s in seen.values()), default=None),
        "sampling_workers": sorted(seen),
        "input_warning": None if loop is None else await input_warning(
            kafka, loop.probe.group, loop.probe.topics,
            counted=loop.probe.count_uncommitted),
    }


async def _pipelines_status(bp: Installation, kafka: KafkaClientSettings | str, app_id: str,
                            ops: dict[str, Any]) -> list[dict[str, Any]]:
    paused = pauses(ops)
    workers = [r.body["pipelines"] for r in signed_records(
        ops, "worker-status/", WorkerStatusRecord.decode, bp.settings.secret_key,
        fresh_at=time.time())]
    pipelines = []
    for name, pipe in sorted(bp.pipelines.items()):
        pause = paused.get(name) or {}
        backlog = await group_lag(kafka, app_id, [pipe.source_topic_name], time_lag=False)
        pipelines.append({
            "name": name, "source": pipe.source_topic_name,
            "sinks": [s.get_topic_name() for s in pipe.sinks], "dlq": pipe.dlq_topic_name,
            "limiter": None if pipe.gate is None else pipe.gate.name,
            "batch_size": None if pipe.batch is None else pipe.batch.queues.batch_size,
            # percentiles of workers do not add up: the worst worker's, who is heard from
            "batch_p99": max((w[name]["batch_p99"] for w in workers
                              if w.get(name, {}).get("batch_p99") is not None), default=None),
            "source_lag": backlog.total,
            "dlq_records": await _topic_size(kafka, pipe.dlq_topic_name),
            "paused": bool(pause.get("paused")),
            "paused_by": pause.get("by") if pause.get("paused") else None,
        })
    return pipelines


async def _credit_flows_status(bp: Installation, kafka: KafkaClientSettings | str
                               ) -> list[dict[str, Any]]:
    credit_flows = []
    for flow in bp.credit_flows:
        backlog = await group_lag(kafka, flow.probe.group, list(flow.probe.topics),
                                  time_lag=False)
        window = flow.controller.window
        credit_flows.append({
            "name": flow.name, "window": window,
            "downstream_group": flow.probe.group, "downstream_topics": list(flow.probe.topics),
            "downstream_lag": backlog.total, "credits": max(0, window - backlog.total),
            "input_warning": await input_warning(kafka, flow.probe.group,
                                                 list(flow.probe.topics), counted=True)})
    return credit_flows


def breaker_state(ops: dict[str, Any], name: str) -> dict[str, Any]:
    """A downstream guard's breaker as the operators set it and its last slow-down, from the
    ops records (``breaker status``; ``status`` without the reason)."""
    forced = ops.get(f"breaker/{name}")
    slowed = ops.get(f"downstream/{name}")
    forced = forced if isinstance(forced, dict) else {}
    slowed = slowed if isinstance(slowed, dict) else {}
    return {"operator": forced.get("state", "auto"), "by": forced.get("by"),
            "reason": forced.get("reason"), "last_slow_down_until": slowed.get("until"),
            "last_slow_down_by": slowed.get("by")}


def _downstream_status(name: str, ops: dict[str, Any], error_rate: float | None
                       ) -> dict[str, Any]:
    state = breaker_state(ops, name)
    del state["reason"]
    return {"name": name, **state, "error_rate": error_rate,
            "slowed_down_now": float(state["last_slow_down_until"] or 0) > time.time()}


async def send_override(kafka: KafkaClientSettings | str, app_id: str, override: Override, *,
                        secret: bytes | None, timeout: float = 30.0) -> dict[str, Any]:
    """Send an operator hold/release to the limiter's decider; return the control state once
    the decider has persisted it (:class:`CommandTimeout` if it does not in time)."""
    topic = pressure_topic(app_id)
    changelog = control_changelog(app_id)
    async with kafka_producer(kafka, "ops-override") as producer:
        await producer.send_and_wait(topic, override.encode(secret),
                                     key=override.limiter.encode())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = (await read_compacted(kafka, changelog)).get(override.limiter)
        if isinstance(state, dict) and state.get("last_override") == override.override_id:
            return state
        await asyncio.sleep(0.5)
    raise CommandTimeout(f"the {override.action} of {override.limiter!r} was not applied "
                         f"within {timeout:g} s: is a worker of {app_id!r} running, and does "
                         "it run a control loop for that limiter?")
