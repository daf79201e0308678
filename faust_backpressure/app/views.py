"""What a worker shows operators: a JSON overview and Prometheus metrics, on Faust's web server.

``GET /backpressure/``: limiters, gates, pipelines and control loops of this worker as JSON.
``GET /backpressure/?history=1`` adds this worker's recent compact snapshots (the dashboard's).
``GET /backpressure/ui``: the live dashboard (see :mod:`.dashboard`).
``GET /backpressure/metrics``: the same as Prometheus text (exposition format 0.0.4), every
series labelled with the app id; scrape each worker (counts are per process).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable
from typing import Any

from faust.types import TopicT
from faust.web import Request, Response, View

from faust_backpressure.agents.batch_pipeline import BatchRunner
from faust_backpressure.agents.downstream import LATENCY_BUCKETS, DownstreamStats
from faust_backpressure.agents.gate_base import KeyedGateStats, RateLimitGateStats
from faust_backpressure.agents.pipeline import PipelineStats
from faust_backpressure.app.admin_api import register_admin
from faust_backpressure.app.dashboard import history_of, register_dashboard
from faust_backpressure.app.registry import Installation, configured_rate
from faust_backpressure.control.loop import ControlLoop
from faust_backpressure.faust_seam import source_backlog
from faust_backpressure.limiters import RateLimiterStats, RateLimitingStrategy

__all__ = ["register_views", "render_prometheus", "snapshot"]

CONTENT_TYPE = "text/plain; version=0.0.4"  # aiohttp adds the charset


def _limiters(bp: Installation) -> dict[str, RateLimitingStrategy]:
    """Every limiter the app uses, by a unique label (its id, or class name #n)."""
    found: list[RateLimitingStrategy] = [
        *bp.registered_limiters, *(g.limiter for g in bp.all_gates()),
        *(loop.limiter for loop in bp.control_loops.values())]
    labelled: dict[str, RateLimitingStrategy] = {}
    for limiter in {id(limiter): limiter for limiter in found}.values():  # each once, in order
        label, n = limiter.name, 1
        while label in labelled:
            n += 1
            label = f"{limiter.name}#{n}"
        labelled[label] = limiter
    return labelled


RECENT = 10  # control decisions shown per loop


def _agent_topics(bp: Installation, agent_name: str) -> list[str]:
    """Topics the agent named ``agent_name`` consumes (empty if it is not an app agent)."""
    pipeline = bp.pipelines.get(agent_name.removeprefix("pipeline:"))
    if agent_name.startswith("pipeline:") and pipeline is not None:
        return [pipeline.source_topic_name]
    # Faust names an agent module.function; the gate knows the function's qualified name
    short = agent_name.rsplit(".", 1)[-1]
    for agent in bp.app.agents.values():
        if agent.name == agent_name or agent.name.rsplit(".", 1)[-1] == short:
            channel = agent.channel
            topics = channel.topics if isinstance(channel, TopicT) else ()
            return [t for t in topics if isinstance(t, str)]
    return []


def _control_view(loop: ControlLoop, label: str) -> dict[str, Any]:
    """One control loop: its settings, last decision and sample, recent decisions."""
    decision = loop.last_decision
    return {
        "limiter": label,
        "baseline_rate": loop.controller.baseline_rate, "interval": loop.interval,
        "max_consumer_lag": loop.controller.thresholds.max_consumer_lag,
        "decisions": loop.decided,
        "severity": None if decision is None else decision.severity.name,
        "circuit": None if decision is None else decision.circuit.value,
        "decided_rate": None if decision is None else decision.rate,
        "shed": None if decision is None else decision.shed,
        "reason": None if decision is None else decision.reason,
        "policy": loop.controller.policy,
        "downstream_rate": None if decision is None else decision.downstream_rate,
        "lag_seconds": (None if decision is None or decision.lag_seconds is None
                        or not math.isfinite(decision.lag_seconds)
                        else decision.lag_seconds),
        "recommended_workers": None if decision is None else decision.recommended_workers,
        "shed_threshold": loop.shedder.threshold if loop.shed_on_critical else None,
        "override": loop.override,
        # a missing topic or a group with no commits (not throttled on until it commits)
        "input_warning": loop.input_warning,
        "recent_decisions": [{"rate": d.rate, "severity": d.severity.name,
                              "reason": d.reason}
                             for d in list(loop.decisions)[-RECENT:]],
        "last_sample": None if loop.last_sample is None else {
            "lag": loop.last_sample.lag, "utilization": loop.last_sample.utilization,
            "cpu": loop.last_sample.cpu, "at": loop.last_sample.at},
    }


def snapshot(bp: Installation) -> dict[str, Any]:
    """This worker's state, JSON-ready."""
    limiters = _limiters(bp)
    label_of = {id(limiter): label for label, limiter in limiters.items()}
    limiter_view = {label: {**dataclasses.asdict(limiter.stats()),
                            "configured_rate": configured_rate(limiter)}
                    for label, limiter in limiters.items()}
    control = {name: _control_view(loop, label_of.get(id(loop.limiter), name))
               for name, loop in bp.control_loops.items()}
    gates = bp.all_gates()
    sources = {g.agent_name: _agent_topics(bp, g.agent_name) for g in gates}
    backlog = source_backlog(bp.app, {
        *(t for ts in sources.values() for t in ts),
        *(p.source_topic_name for p in bp.pipelines.values())}) or {}
    return {
        "app": bp.app.conf.id,
        "at": time.time(),
        "limiters": limiter_view,
        "gates": [{**dataclasses.asdict(g.stats()),
                   "limiter": label_of.get(id(g.limiter), g.name),
                   "source_lag": (sum(backlog[t] for t in sources[g.agent_name])
                                  if backlog and sources[g.agent_name] else None)}
                  for g in gates],
        "pipelines": {name: {"source": p.source_topic_name, "dlq": p.dlq_topic_name,
                             **dataclasses.asdict(p.stats),
                             "limiter": None if p.gate is None else label_of.get(
                                 id(p.gate.limiter), p.gate.name),
                             "paused": p.paused, "paused_by": p.paused_by,
                             "source_lag": backlog.get(p.source_topic_name),
                             "batch": None if p.batch is None else _batch_view(p.batch)}
                      for name, p in bp.pipelines.items()},
        "control": control,
        "rejected": bp.rejections,
        "keyed": {name: dataclasses.asdict(gate.stats())
                  for name, gate in bp.keyed_limits.items()},
        "downstreams": {name: dataclasses.asdict(guard.stats())
                        for name, guard in bp.downstreams.items()},
        "cluster": ([] if bp.ops_follower is None
                    else bp.ops_follower.cluster.rows(time.time())),
    }


def _batch_view(runner: BatchRunner) -> dict[str, Any]:
    return {"size": runner.queues.batch_size, "batches": runner.batches,
            "abandoned": runner.abandoned,
            # seconds, over the last batches done (see LatencySummary)
            "latency": dataclasses.asdict(runner.latency.summary()),
            "processing": dataclasses.asdict(runner.processing.summary())}


# name, type, help, rows of (labels, value) taken from the snapshot; a row's _SUFFIX label
# (not printed) extends the name, as a histogram's _bucket, _sum and _count
_Metric = tuple[str, str, str, list[tuple[dict[str, str], float]]]
_SUFFIX = "__suffix__"


def _metrics(state: dict[str, Any]) -> Iterable[_Metric]:
    yield from _stats_metrics("limiter", RateLimiterStats,
                              [({"limiter": k}, v) for k, v in state["limiters"].items()])
    gates = state["gates"]
    yield from _stats_metrics("gate", RateLimitGateStats, [
        ({"agent": g["agent"], "limiter": g["limiter"]}, g) for g in gates])
    pipelines = state["pipelines"].items()
    for field in dataclasses.fields(PipelineStats):  # every one a counter
        yield (f"pipeline_{field.name}_total", "counter", f"Pipeline records {field.name}.",
               [({"pipeline": k}, v[field.name]) for k, v in pipelines])
    # no per-key label: keys are unbounded
    yield from _stats_metrics("keyed", KeyedGateStats,
                              [({"limit": k}, v) for k, v in state.get("keyed", {}).items()])
    yield from _downstream_metrics(state.get("downstreams", {}))
    yield from _control_metrics(state["control"])
    yield ("agent_source_lag", "gauge",
           "Records not yet processed on this worker's partitions of a rate-limited agent's "
           "source topics (sum over workers for the whole backlog).",
           [({"agent": g["agent"], "limiter": g["limiter"]}, g["source_lag"]) for g in gates
            if g.get("source_lag") is not None])
    yield ("pipeline_source_lag", "gauge",
           "Records not yet processed on this worker's partitions of the pipeline's source "
           "(sum over workers for the whole backlog).",
           [({"pipeline": k, "topic": v["source"]}, v["source_lag"]) for k, v in pipelines
            if v.get("source_lag") is not None])
    yield ("pipeline_paused", "gauge", "1 while the pipeline is paused by an operator.",
           [({"pipeline": k}, 1.0 if v.get("paused") else 0.0) for k, v in pipelines])
    batched = [(k, v["batch"]) for k, v in pipelines if v.get("batch")]
    yield ("pipeline_batches_total", "counter",
           "Batches of a batch pipeline done (outputs acked, offsets committed).",
           [({"pipeline": k}, b["batches"]) for k, b in batched])
    yield ("pipeline_batches_abandoned_total", "counter",
           "Batches given up at a revoke or stop (their records are read again).",
           [({"pipeline": k}, b["abandoned"]) for k, b in batched])
    yield ("pipeline_batch_latency_seconds", "histogram",
           "Batches done: from their first record handed over to their offsets acked "
           "(at_least_once) or committed (exactly_once).",
           [row for k, b in batched for row in _histogram({"pipeline": k}, b["latency"])])
    yield ("pipeline_batch_processing_seconds", "histogram",
           "Batches done: time in their process_batch calls.",
           [row for k, b in batched for row in _histogram({"pipeline": k}, b["processing"])])
    yield ("rejected_records_total", "counter",
           "Internal records rejected (forged, replayed, malformed, out of range).",
           [({"topic": topic, "reason": reason}, n)
            for topic, reasons in state["rejected"].items() for reason, n in reasons.items()])


def _stats_metrics(prefix: str, stats: type[Any],
                   rows: list[tuple[dict[str, str], dict[str, Any]]]) -> Iterable[_Metric]:
    """A metric for each field of the ``stats`` dataclass that declares one (its metadata,
    see ``agents.gate_base.counter``), from ``rows`` of (labels, that dataclass as a dict)."""
    for field in dataclasses.fields(stats):
        kind = field.metadata.get("metric")
        if kind is not None:
            yield (f"{prefix}_{field.name}" + ("_total" if kind == "counter" else ""), kind,
                   field.metadata["help"], [(labels, row[field.name]) for labels, row in rows])


def _control_metrics(loops: dict[str, dict[str, Any]]) -> Iterable[_Metric]:
    control = [(k, v) for k, v in loops.items() if v["severity"] is not None]
    severities = {"NORMAL": 0, "WARNING": 1, "CRITICAL": 2, "EMERGENCY": 3}
    yield ("control_severity", "gauge", "0 normal, 1 warning, 2 critical, 3 emergency.",
           [({"limiter": k}, severities[v["severity"]]) for k, v in control])
    yield ("control_decided_rate", "gauge", "Rate the control loop last decided.",
           [({"limiter": k}, v["decided_rate"]) for k, v in control])
    yield ("control_recommended_workers", "gauge",
           "Downstream workers that would hold the lag at the set point at the base rate.",
           [({"limiter": k}, v["recommended_workers"]) for k, v in control
            if v.get("recommended_workers") is not None])
    yield ("control_max_consumer_lag", "gauge",
           "The loop's max_consumer_lag threshold (downstream lag above it is critical).",
           [({"limiter": k}, v["max_consumer_lag"]) for k, v in loops.items()
            if v.get("max_consumer_lag") is not None])
    sampled = [(k, v["last_sample"]) for k, v in loops.items() if v["last_sample"]]
    yield ("control_downstream_lag", "gauge", "Downstream consumer lag last sampled here.",
           [({"limiter": k}, s["lag"]) for k, s in sampled])
    yield ("control_downstream_lag_seconds", "gauge",
           "How far behind the downstream is in time (lag over its measured pace).",
           [({"limiter": k}, v["lag_seconds"]) for k, v in control
            if v.get("lag_seconds") is not None])
    yield ("control_override", "gauge", "1 while an operator holds the limiter (decider).",
           [({"limiter": k}, 0.0 if v.get("override") is None else 1.0)
            for k, v in loops.items()])


_BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2, "forced_open": 3,
                   "forced_closed": 4}


def _downstream_metrics(guards: dict[str, Any]) -> Iterable[_Metric]:
    rows = guards.items()
    yield from _stats_metrics("downstream", DownstreamStats,
                              [({"dependency": k}, v) for k, v in rows])
    yield ("downstream_breaker_state", "gauge",
           "0 closed, 1 half-open, 2 open, 3 forced open, 4 forced closed.",
           [({"dependency": k}, _BREAKER_STATES.get(v["breaker"], -1)) for k, v in rows])
    yield ("downstream_calls_total", "counter", "Calls and waits by outcome.",
           [({"dependency": k, "outcome": outcome}, n) for k, v in rows
            for outcome, n in sorted(v["outcomes"].items())])
    yield ("downstream_latency_seconds", "histogram", "Latency of successful calls.",
           [row for k, v in rows for row in _histogram(
               {"dependency": k}, {"buckets": v["latency_buckets"], "sum": v["latency_sum"]})])


def _histogram(labels: dict[str, str], figures: dict[str, Any]
               ) -> list[tuple[dict[str, str], float]]:
    """A histogram's rows from per-bucket counts over ``LATENCY_BUCKETS`` then +Inf (not
    cumulative) and their ``sum``: cumulative ``_bucket``s, ``_sum``, ``_count``."""
    rows: list[tuple[dict[str, str], float]] = []
    cumulative = 0
    for bound, count in zip([*LATENCY_BUCKETS, math.inf], figures["buckets"], strict=True):
        cumulative += count
        rows.append(({**labels, "le": _number(bound), _SUFFIX: "_bucket"}, cumulative))
    rows.append(({**labels, _SUFFIX: "_sum"}, figures["sum"]))
    rows.append(({**labels, _SUFFIX: "_count"}, cumulative))
    return rows


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return "NaN" if math.isnan(value) else repr(float(value))


def render_prometheus(state: dict[str, Any], prefix: str = "faust_backpressure_") -> str:
    """Prometheus text exposition of :func:`snapshot`."""
    lines: list[str] = []
    app = {"app": state["app"]}
    for name, kind, text, rows in _metrics(state):
        if not rows:
            continue
        lines += [f"# HELP {prefix}{name} {text}", f"# TYPE {prefix}{name} {kind}"]
        for labels, value in rows:
            suffix = labels.get(_SUFFIX, "")
            body = ",".join(f'{k}="{_escape(str(v))}"' for k, v in {**app, **labels}.items()
                            if k != _SUFFIX)
            lines.append(f"{prefix}{name}{suffix}{{{body}}} {_number(value)}")
    return "\n".join(lines) + "\n"


def register_views(bp: Installation) -> None:
    """Add the two pages to ``bp.app`` (served when the worker runs its web server)."""

    @bp.app.page("/backpressure/")
    async def overview(web: View, request: Request) -> Response:
        state = snapshot(bp)
        if request.query.get("history"):  # the dashboard's charts (see .dashboard)
            state["history"] = history_of(bp.app).to_json()
        return web.json(state)

    @bp.app.page("/backpressure/metrics")
    async def metrics(web: View, request: Request) -> Response:
        return web.text(render_prometheus(snapshot(bp)), content_type=CONTENT_TYPE)

    register_dashboard(bp, snapshot)  # /backpressure/ui
    register_admin(bp)  # POST /backpressure/api/..., behind the admin_token setting
