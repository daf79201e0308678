"""``deploy/``: the Prometheus alert rules pass ``promtool`` (syntax and their unit tests), and
every metric the rules and the Grafana dashboard query is one the workers export."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from faust_backpressure.agents.downstream import build_downstream
from faust_backpressure.agents.latency import LatencyWindow
from faust_backpressure.app.views import render_prometheus

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
PROMTOOL = shutil.which("promtool")
METRIC = re.compile(r"\bfaust_backpressure_[a-z_]+")


def _exported() -> set[str]:
    """Every metric name the views can emit, from a snapshot with one of everything."""
    guard = build_downstream("d", max_concurrency=4)
    guard.outcomes["success"] = 1
    latency = LatencyWindow()
    latency.observe(0.1)
    state = {
        "app": "a",
        "limiters": {"l": {"rate": 1.0, "utilization": 0.5, "granted": 1, "denied": 1,
                           "waits": 1, "sleeps": 0, "tokens": 1.0, "configured_rate": 1.0}},
        "gates": [{"agent": "g", "limiter": "l", "on_limit": "wait", "waits": 1, "shed": 1,
                   "overdrafts": 0, "source_lag": 3, "shed_by_priority": 0,
                   "shed_threshold": None}],
        "pipelines": {"p": {"source": "s", "dlq": "s-dlq", "consumed": 1, "produced": 1,
                            "filtered": 0, "retries": 0, "dead_lettered": 1, "requeued": 0,
                            "limiter": "l",
                            "paused": False, "paused_by": None, "source_lag": 2,
                            "batch": {"size": 10, "batches": 1, "abandoned": 0,
                                      "latency": dataclasses.asdict(latency.summary()),
                                      "processing": dataclasses.asdict(latency.summary())}}},
        "control": {"l": {"limiter": "l", "severity": "EMERGENCY", "decided_rate": 1.0,
                          "recommended_workers": 2, "lag_seconds": 4.0, "override": None,
                          "max_consumer_lag": 10,
                          "last_sample": {"lag": 5, "utilization": 1.0, "cpu": 0.1, "at": 0}}},
        "rejected": {"requests": {"signature": 1}},
        "keyed": {"k": {"limit": "k", "rate": 10.0, "burst": 10.0, "overrides": 1,
                        "keys_tracked": 1, "keys_limited": 0,
                        "deferred_backlog": 0, "admitted": 1, "deferred": 1, "readmitted": 1,
                        "held_back": 0, "shed": 0, "waits": 1, "overdrafts": 0}},
        "downstreams": {"d": dataclasses.asdict(guard.stats())},
    }
    text = render_prometheus(state)
    return {line.split("{")[0] for line in text.splitlines() if not line.startswith("#")}


def test_dashboard_and_alerts_query_only_exported_metrics() -> None:
    exported = _exported()
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    alerts = (DEPLOY / "prometheus-alerts.yml").read_text()
    used = {m for e in exprs for m in METRIC.findall(e)} | set(METRIC.findall(alerts))
    assert used and used <= exported, sorted(used - exported)
    # every exported series is on the dashboard, except the raw per-call counters
    assert exported - used <= {"faust_backpressure_limiter_waits_total",
                                "faust_backpressure_gate_overdrafts_total",
                                "faust_backpressure_keyed_overdrafts_total",
                                "faust_backpressure_pipeline_produced_total",
                                "faust_backpressure_pipeline_filtered_total",
                                "faust_backpressure_pipeline_retries_total",
                                "faust_backpressure_control_recommended_workers"}, \
        sorted(exported - used)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed "
                    "(Debian: apt-get install -y prometheus)")
def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    assert PROMTOOL is not None
    for args in (["check", "rules", "prometheus-alerts.yml"],
                 ["test", "rules", "prometheus-alerts.test.yml"]):
        done = subprocess.run([PROMTOOL, *args], cwd=DEPLOY, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
