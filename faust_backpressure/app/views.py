"""What a worker shows operators: a JSON overview and Prometheus metrics, on Faust's web server.

``GET /backpressure/``: limiters, gates, pipelines and control loops of this worker as JSON.
``GET /backpressure/metrics``: the same as Prometheus text (exposition format 0.0.4), every
series labelled with the app id; scrape each worker (counts are per process).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from faust.web import Request, Response, View

from faust_backpressure.app.registry import Installation
from faust_backpressure.limiters import RateLimitingStrategy

__all__ = ["register_views", "render_prometheus", "snapshot"]

CONTENT_TYPE = "text/plain; version=0.0.4"  # aiohttp adds the charset


def _limiters(bp: Installation) -> dict[str, RateLimitingStrategy]:
    """Every limiter the app uses, by a unique label (its id, or class name #n)."""
    found: list[RateLimitingStrategy] = [
        *bp.registered_limiters, *(g.limiter for g in bp.all_gates()),
        *(loop.limiter for loop in bp.control_loops.values())]
    labelled: dict[str, RateLimitingStrategy] = {}
    seen: set[int] = set()
    for limiter in found:
        if id(limiter) in seen:
            continue
        seen.add(id(limiter))
        label, n = limiter.name, 1
        while label in labelled:
            n += 1
            label = f"{limiter.name}#{n}"
        labelled[label] = limiter
    return labelled


def snapshot(bp: Installation) -> dict[str, Any]:
    """This worker's state, JSON-ready."""
    limiters = _limiters(bp)
    label_of = {id(limiter): label for label, limiter in limiters.items()}
    limiter_view = {}
    for label, limiter in limiters.items():
        stats = limiter.stats()
        limiter_view[label] = {"rate": stats.rate, "utilization": stats.utilization,
                               "granted": stats.granted, "denied": stats.denied,
                               "waits": stats.waits, "sleeps": stats.sleeps,
                               "tokens": stats.tokens}
    control = {}
    for name, loop in bp.control_loops.items():
        decision = loop.last_decision
        control[name] = {
            "limiter": label_of.get(id(loop.limiter), name),
            "baseline_rate": loop.controller.baseline_rate, "interval": loop.interval,
            "decisions": len(loop.decisions),
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
            "last_sample": None if loop.last_sample is None else {
                "lag": loop.last_sample.lag, "utilization": loop.last_sample.utilization,
                "cpu": loop.last_sample.cpu, "at": loop.last_sample.at},
        }
    return {
        "app": bp.app.conf.id,
        "limiters": limiter_view,
        "gates": [{"agent": g.agent_name, "limiter": label_of.get(id(g.limiter), g.name),
                   "on_limit": g.on_limit, "waits": g.waits, "shed": g.shed,
                   "overdrafts": g.overdrafts, "shed_by_priority": g.shed_by_priority,
                   "shed_threshold": g.shed_threshold}
                  for g in bp.all_gates()],
        "pipelines": {name: {"source": p.source_topic_name, "dlq": p.dlq_topic_name,
                             "consumed": p.stats.consumed, "produced": p.stats.produced,
                             "filtered": p.stats.filtered, "retries": p.stats.retries,
                             "dead_lettered": p.stats.dead_lettered}
                      for name, p in bp.pipelines.items()},
        "control": control,
        "rejected": bp.rejections,
        "keyed": {name: gate.stats() for name, gate in bp.keyed_limits.items()},
    }


# name, type, help, rows of (labels, value) taken from the snapshot
_Metric = tuple[str, str, str, list[tuple[dict[str, str], float]]]


def _metrics(state: dict[str, Any]) -> Iterable[_Metric]:
    limiters = state["limiters"].items()
    yield ("limiter_rate", "gauge", "Permits per second the limiter allows now.",
           [({"limiter": k}, v["rate"]) for k, v in limiters])
    yield ("limiter_utilization", "gauge", "Share of the allowed permits taken recently.",
           [({"limiter": k}, v["utilization"]) for k, v in limiters])
    for field, text in (("granted", "Permits granted."), ("denied", "try_acquire refusals."),
                        ("waits", "acquire calls that had to wait.")):
        yield (f"limiter_{field}_total", "counter", text,
               [({"limiter": k}, v[field]) for k, v in limiters])
    gates = state["gates"]
    yield ("gate_waits_total", "counter", "Events that waited for permits.",
           [({"agent": g["agent"], "limiter": g["limiter"]}, g["waits"]) for g in gates])
    yield ("gate_shed_total", "counter", "Events sent to the shed topic.",
           [({"agent": g["agent"], "limiter": g["limiter"]}, g["shed"]) for g in gates])
    yield ("gate_overdrafts_total", "counter",
           "Events let through without permits when a rebalance or stop stopped the flow.",
           [({"agent": g["agent"], "limiter": g["limiter"]}, g["overdrafts"]) for g in gates])
    yield ("gate_shed_by_priority_total", "counter",
           "Events shed because their priority was below the shed level.",
           [({"agent": g["agent"], "limiter": g["limiter"]}, g["shed_by_priority"])
            for g in gates])
    pipelines = state["pipelines"].items()
    for field in ("consumed", "produced", "filtered", "retries", "dead_lettered"):
        yield (f"pipeline_{field}_total", "counter", f"Pipeline records {field}.",
               [({"pipeline": k}, v[field]) for k, v in pipelines])
    keyed = state.get("keyed", {}).items()  # no per-key label: keys are unbounded
    for field, kind, text in (
            ("keys_tracked", "gauge", "Keys whose bucket is not full (stored)."),
            ("keys_limited", "gauge", "Keys refused whose next token has not come yet."),
            ("deferred_backlog", "gauge", "Deferred records held until due."),
            ("admitted", "counter", "Events admitted at once."),
            ("deferred", "counter", "Events sent to the deferral topic."),
            ("readmitted", "counter", "Deferred events handed back when due."),
            ("shed", "counter", "Events sent to the shed topic.")):
        yield (f"keyed_{field}" + ("_total" if kind == "counter" else ""), kind, text,
               [({"limit": k}, v[field]) for k, v in keyed])
    control = [(k, v) for k, v in state["control"].items() if v["severity"] is not None]
    severities = {"NORMAL": 0, "WARNING": 1, "CRITICAL": 2, "EMERGENCY": 3}
    yield ("control_severity", "gauge", "0 normal, 1 warning, 2 critical, 3 emergency.",
           [({"limiter": k}, severities[v["severity"]]) for k, v in control])
    yield ("control_decided_rate", "gauge", "Rate the control loop last decided.",
           [({"limiter": k}, v["decided_rate"]) for k, v in control])
    yield ("control_recommended_workers", "gauge",
           "Downstream workers that would hold the lag at the set point at the base rate.",
           [({"limiter": k}, v["recommended_workers"]) for k, v in control
            if v.get("recommended_workers") is not None])
    sampled = [(k, v["last_sample"]) for k, v in state["control"].items() if v["last_sample"]]
    yield ("control_downstream_lag", "gauge", "Downstream consumer lag last sampled here.",
           [({"limiter": k}, s["lag"]) for k, s in sampled])
    yield ("rejected_records_total", "counter",
           "Internal records rejected (forged, replayed, malformed, out of range).",
           [({"topic": topic, "reason": reason}, n)
            for topic, reasons in state["rejected"].items() for reason, n in reasons.items()])


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
            body = ",".join(f'{k}="{_escape(str(v))}"' for k, v in {**app, **labels}.items())
            lines.append(f"{prefix}{name}{{{body}}} {_number(value)}")
    return "\n".join(lines) + "\n"


def register_views(bp: Installation) -> None:
    """Add the two pages to ``bp.app`` (served when the worker runs its web server)."""

    @bp.app.page("/backpressure/")
    async def overview(web: View, request: Request) -> Response:
        return web.json(snapshot(bp))

    @bp.app.page("/backpressure/metrics")
    async def metrics(web: View, request: Request) -> Response:
        return web.text(render_prometheus(snapshot(bp)), content_type=CONTENT_TYPE)
