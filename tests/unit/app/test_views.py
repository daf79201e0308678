"""The overview and Prometheus text of a configured (not started) app."""

from __future__ import annotations

import re

import faust

from faust_backpressure.agents import GateStats, KeyedGateStats, RateLimitGateStats
from faust_backpressure.app import Backpressure
from faust_backpressure.app.views import render_prometheus, snapshot
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.limiters import TokenBucketRateLimiter

SAMPLE_LINE = re.compile(r'^faust_backpressure_[a-z_]+\{(?:[a-z_]+="(?:[^"\\]|\\.)*",?)+\} '
                         r"(?:-?[0-9.e+-]+|NaN|[+-]Inf)$")


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def _app() -> tuple[faust.App, Backpressure]:
    app = faust.App("views-unit", broker="kafka://127.0.0.1:1")
    return app, Backpressure(app, settings=BackpressureSettings())


def test_every_limiter_gate_and_pipeline_is_shown_and_labelled_uniquely() -> None:
    _, bp = _app()
    first = TokenBucketRateLimiter(100, 10, clock=Clock())
    assert first.try_acquire(4) and not first.try_acquire(7)

    async def agent(stream: faust.StreamT[bytes]) -> None: ...

    bp.rate_limit(first)(agent)
    bp.pipeline("price", source="orders", sink="priced", process=lambda v: v,
                limiter=TokenBucketRateLimiter(5, 5, clock=Clock()))
    state = snapshot(bp)
    assert state["app"] == "views-unit"
    assert state["limiters"]["TokenBucketRateLimiter"]["granted"] == 4
    assert state["limiters"]["TokenBucketRateLimiter"]["denied"] == 1
    assert state["limiters"]["TokenBucketRateLimiter#2"]["rate"] == 5
    assert [g["limiter"] for g in state["gates"]] == ["TokenBucketRateLimiter",
                                                      "TokenBucketRateLimiter#2"]
    assert state["pipelines"]["price"]["dlq"] == "orders-dlq"
    assert state["control"] == {}


def test_prometheus_text_is_well_formed_and_carries_the_counts() -> None:
    _, bp = _app()
    limiter = TokenBucketRateLimiter(100, 10, clock=Clock())
    limiter.try_acquire(3)
    bp.limiter(limiter)

    async def agent(stream: faust.StreamT[bytes]) -> None: ...

    gate = bp.rate_limit(limiter)
    gate(agent)
    gate.agent_name = 'odd "name"\\with\nnewline'
    text = render_prometheus(snapshot(bp))
    assert ('faust_backpressure_limiter_granted_total{app="views-unit",'
            'limiter="TokenBucketRateLimiter"} 3.0') in text.splitlines()
    assert 'agent="odd \\"name\\"\\\\with\\nnewline"' in text
    for line in text.splitlines():
        if line.startswith("# "):
            assert re.match(r"^# (HELP|TYPE) faust_backpressure_[a-z_]+ .+$", line), line
        else:
            assert SAMPLE_LINE.match(line), line
    # Series with no rows (no pipelines, no control loops) are left out, not shown empty.
    assert "pipeline_" not in text and "control_" not in text


def test_the_scale_out_recommendation_is_a_metric() -> None:
    from faust_backpressure.control import PressureDecision
    from faust_backpressure.control.policy import BackpressureSeverity, CircuitState

    _, bp = _app()
    loop = bp.control_loop(TokenBucketRateLimiter(300, 300, clock=Clock()),
                           downstream_group="billing", downstream_topics=["priced"],
                           name="api")
    loop.last_decision = PressureDecision(100.0, BackpressureSeverity.WARNING,
                                          CircuitState.CLOSED, False, "set point",
                                          downstream_rate=100.0, lag_seconds=5.0,
                                          recommended_workers=3)
    state = snapshot(bp)
    assert state["control"]["api"]["recommended_workers"] == 3
    assert ('faust_backpressure_control_recommended_workers{app="views-unit",limiter="api"} '
            '3.0') in render_prometheus(state).splitlines()


def test_priority_shedding_shows_its_level_and_counts() -> None:
    _, bp = _app()
    limiter = TokenBucketRateLimiter(5, 5, clock=Clock())
    pipe = bp.pipeline("jobs", source="jobs", sink="done", process=lambda v: v,
                       limiter=limiter, priority=lambda v: 0)
    loop = bp.control_loop(limiter, downstream_group="billing", downstream_topics=["done"],
                           name="api", shed_on_critical=True)
    assert pipe.gate is not None
    loop.shedder.update(10**6, 0.0)  # far above the critical lag: the first level
    pipe.gate.shed_threshold, pipe.gate.shed, pipe.gate.shed_by_priority = 1, 4, 4
    state = snapshot(bp)
    assert state["control"]["api"]["shed_threshold"] == 1
    assert state["gates"][0]["shed_threshold"] == 1
    assert ('faust_backpressure_gate_shed_by_priority_total{app="views-unit",agent='
            '"pipeline:jobs",limiter="TokenBucketRateLimiter"} 4.0'
            ) in render_prometheus(state).splitlines()
    assert "jobs-shed" in [t.get_topic_name() for t in pipe.topics]  # declared up front


def test_keyed_limits_are_shown_without_per_key_labels() -> None:
    _, bp = _app()
    limit = bp.rate_limit_per_key("per-customer", tokens_per_second=10, partitions=2,
                                  store="memory://")
    limit.admitted, limit.deferred, limit.deferrals.backlog = 7, 3, 2
    state = snapshot(bp)["keyed"]["per-customer"]
    assert (state["admitted"], state["deferred"], state["deferred_backlog"]) == (7, 3, 2)
    assert state["keys_tracked"] == 0 and state["burst"] == 10
    text = render_prometheus(snapshot(bp))
    assert ('faust_backpressure_keyed_deferred_total{app="views-unit",limit="per-customer"} 3.0'
            in text.splitlines())
    assert "faust_backpressure_keyed_keys_limited{" in text
    assert all(SAMPLE_LINE.match(line) for line in text.splitlines() if not line.startswith("#"))


def test_the_gates_typed_stats_keep_the_json_keys_and_metric_names() -> None:
    """The views show the gates' stats dataclasses field by field (and make a metric of each
    field that declares one): renaming a field would rename what users read. Pinned here.
    Both are GateStats: its fields (first) are every gate's, with the same metrics."""
    _, bp = _app()
    gate = bp.rate_limit(TokenBucketRateLimiter(5, 5, clock=Clock()))

    async def agent(stream: faust.StreamT[bytes]) -> None: ...

    gate(agent)
    gate.waits, gate.overdrafts = 2, 1
    assert gate.stats() == RateLimitGateStats(
        agent=gate.agent_name, limiter="TokenBucketRateLimiter", on_limit="wait", waits=2,
        shed=0, overdrafts=1, shed_by_priority=0, shed_threshold=None)
    limit = bp.rate_limit_per_key("per-customer", tokens_per_second=10, partitions=2,
                                  store="memory://")
    limit.waits = 3
    assert isinstance(limit.stats(), KeyedGateStats) and limit.stats().waits == 3
    assert all(isinstance(g.stats(), GateStats) for g in (gate, limit))
    state = snapshot(bp)
    assert list(state["gates"][0]) == ["agent", "on_limit", "waits", "shed", "overdrafts",
                                       "limiter", "shed_by_priority", "shed_threshold",
                                       "source_lag"]
    assert set(state["keyed"]["per-customer"]) == {
        "limit", "agent", "on_limit", "rate", "burst", "keys_tracked", "keys_limited",
        "deferred_backlog", "admitted", "deferred", "readmitted", "held_back", "shed", "waits",
        "overdrafts", "overrides", "top_limited"}
    names = {line.split("{")[0].removeprefix("faust_backpressure_")
             for line in render_prometheus(state).splitlines() if not line.startswith("#")}
    assert {n for n in names if n.startswith(("gate_", "keyed_"))} == {
        "gate_waits_total", "gate_shed_total", "gate_overdrafts_total",
        "gate_shed_by_priority_total", "keyed_rate", "keyed_burst", "keyed_overrides",
        "keyed_keys_tracked", "keyed_keys_limited", "keyed_deferred_backlog",
        "keyed_admitted_total", "keyed_deferred_total", "keyed_readmitted_total",
        "keyed_held_back_total", "keyed_shed_total", "keyed_waits_total",
        "keyed_overdrafts_total"}


def test_batch_latencies_are_percentiles_in_json_and_histograms_in_prometheus() -> None:
    _, bp = _app()
    pipe = bp.pipeline("bulk", source="orders", sink="priced", process_batch=list,
                       batch_size=10)
    assert pipe.batch is not None
    for seconds in (0.004, 0.02, 0.02, 0.3, 12.0):
        pipe.batch.latency.observe(seconds)
        pipe.batch.processing.observe(seconds / 4)
    pipe.batch.batches = 5
    batch = snapshot(bp)["pipelines"]["bulk"]["batch"]
    assert batch["latency"]["count"] == batch["processing"]["count"] == 5
    assert (batch["latency"]["p50"], batch["latency"]["p95"], batch["latency"]["p99"]) == (
        0.02, 12.0, 12.0)
    assert batch["processing"]["p50"] == 0.005
    lines = render_prometheus(snapshot(bp)).splitlines()
    name = "faust_backpressure_pipeline_batch_latency_seconds"
    assert f"# TYPE {name} histogram" in lines
    labels = 'app="views-unit",pipeline="bulk"'
    assert f'{name}_bucket{{{labels},le="0.005"}} 1.0' in lines
    assert f'{name}_bucket{{{labels},le="0.025"}} 3.0' in lines
    assert f'{name}_bucket{{{labels},le="10.0"}} 4.0' in lines
    assert f'{name}_bucket{{{labels},le="+Inf"}} 5.0' in lines
    assert f"{name}_count{{{labels}}} 5.0" in lines
    assert any(line.startswith(f"{name}_sum{{{labels}}} 12.34") for line in lines)
    processing = "faust_backpressure_pipeline_batch_processing_seconds"
    assert f"{processing}_count{{{labels}}} 5.0" in lines
    for line in lines:
        if not line.startswith("# "):
            assert SAMPLE_LINE.match(line), line


def test_the_downstream_guards_metric_names_are_pinned() -> None:
    """A guard's gauges come from the fields of DownstreamStats that declare one."""
    _, bp = _app()
    guard = bp.downstream("payments", learn_quota=False)
    guard.outcomes["success"] += 2
    text = render_prometheus(snapshot(bp))
    names = {line.split("{")[0].removeprefix("faust_backpressure_")
             for line in text.splitlines() if not line.startswith("#")}
    assert {n for n in names if n.startswith("downstream_")} == {
        "downstream_limit", "downstream_in_flight", "downstream_queued",
        "downstream_failure_rate", "downstream_paused_for", "downstream_breaker_state",
        "downstream_calls_total", "downstream_latency_seconds_bucket",
        "downstream_latency_seconds_sum", "downstream_latency_seconds_count"}
    assert "# TYPE faust_backpressure_downstream_queued gauge" in text.splitlines()
    assert ('faust_backpressure_downstream_calls_total{app="views-unit",dependency="payments",'
            'outcome="success"} 2.0') in text.splitlines()

