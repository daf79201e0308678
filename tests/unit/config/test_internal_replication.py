"""``internal_replication_factor``: validated, read from the env, given to every topic of ours."""

from __future__ import annotations

from pathlib import Path

import faust
import pytest

from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.faust_seam import context_of
from faust_backpressure.tables import DistributedRateLimiterFactory
from faust_backpressure.tables.service import find_channel


def test_default_is_none_meaning_fausts_topic_replication_factor() -> None:
    assert BackpressureSettings().internal_replication_factor is None


def test_from_env() -> None:
    env = {"FAUST_BP_INTERNAL_REPLICATION_FACTOR": "3"}
    assert BackpressureSettings.from_env(environ=env).internal_replication_factor == 3
    env = {"FAUST_BP_INTERNAL_REPLICATION_FACTOR": "none"}
    assert BackpressureSettings.from_env(environ=env).internal_replication_factor is None


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5"])
def test_invalid_env_names_the_variable(raw: str) -> None:
    env = {"FAUST_BP_INTERNAL_REPLICATION_FACTOR": raw}
    with pytest.raises(ValueError,
                       match=r"^FAUST_BP_INTERNAL_REPLICATION_FACTOR must be an integer >= 1"):
        BackpressureSettings.from_env(environ=env)


@pytest.mark.parametrize("value", [0, True, 2.0])
def test_invalid_field_names_the_field(value: object) -> None:
    with pytest.raises(ValueError, match=r"^internal_replication_factor must be an integer >= 1"):
        BackpressureSettings(internal_replication_factor=value)  # type: ignore[arg-type]


def _app(name: str, tmp_path: Path) -> faust.App:
    return faust.App(name, broker="kafka://127.0.0.1:1", datadir=str(tmp_path),
                     topic_replication_factor=1, store="memory://")


def test_every_internal_topic_gets_the_factor(tmp_path: Path) -> None:
    app = _app("irf-set", tmp_path)
    bp = Backpressure(app, BackpressureSettings(internal_replication_factor=3))
    assert context_of(app).settings is bp.settings
    assert context_of(app).settings.internal_replication_factor == 3
    limiter = DistributedRateLimiterFactory.create_distributed(app, "api", 10, 10)
    bp.pipeline("p", source="src", sink="out", process=lambda v: v, limiter=limiter)
    bp.control_loop(limiter, downstream_group="g", downstream_topics=["out"])
    channel = find_channel(app)
    assert channel is not None
    control = bp._control
    assert control is not None
    ours = {
        "requests": channel.request_topic, "grants": channel.grant_topic,
        "limiter changelog": channel.table.changelog_topic,
        "pressure": control.pressure_topic, "control changelog": control.table.changelog_topic,
        "dlq": bp.pipelines["p"].dlq,
    }
    assert {name: topic.replicas for name, topic in ours.items()} == dict.fromkeys(ours, 3)
    # the user's sink keeps Faust's default
    assert not bp.pipelines["p"].sinks[0].replicas


def test_unset_leaves_faust_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAUST_BP_INTERNAL_REPLICATION_FACTOR", raising=False)
    app = _app("irf-unset", tmp_path)
    DistributedRateLimiterFactory.create_distributed(app, "api", 10, 10)
    channel = find_channel(app)
    assert channel is not None
    # None: Topic.declare() falls back to app.conf.topic_replication_factor
    assert channel.request_topic.replicas is None
    assert channel.table.changelog_topic.replicas is None


def test_without_backpressure_the_env_counts(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAUST_BP_INTERNAL_REPLICATION_FACTOR", "2")
    app = _app("irf-env", tmp_path)
    DistributedRateLimiterFactory.create_distributed(app, "api", 10, 10)
    channel = find_channel(app)
    assert channel is not None and channel.grant_topic.replicas == 2
