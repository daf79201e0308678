"""Every internal topic, table and group name, pinned byte for byte for app ``orders``.

The names are the wire: workers of two versions, operators' commands and the ACLs that grant
them must agree on them. The first test pins what ``wire.topics`` builds; the others pin what
the workers, the commands and the ACLs actually use (written before they used the module)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from click.testing import CliRunner

from faust_backpressure.app import Backpressure, acls, cli, ops
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.control.override import Override
from faust_backpressure.tables import DistributedRateLimiterFactory, limiter_commands
from faust_backpressure.tables.service import find_channel
from faust_backpressure.wire import topics
from faust_backpressure.wire.kafka_clients import client_settings

APP = "orders"
PINNED = {
    "limiter_requests": "orders-fbp-limiter-requests",
    "limiter_grants": "orders-fbp-limiter-grants",
    "pressure_topic": "orders-fbp-pressure",
    "ops_topic": "orders-fbp-ops",
    "limiter_changelog": "orders-fbp-limiters-changelog",
    "control_changelog": "orders-fbp-control-changelog",
    "dlq_replay_group_prefix": "orders-bp-dlq-replay-",
    "app_prefix": "orders-",
}


def test_the_module_builds_the_pinned_names() -> None:
    assert {name: getattr(topics, name)(APP) for name in PINNED} == PINNED
    assert (topics.LIMITER_TABLE, topics.CONTROL_TABLE) == ("fbp-limiters", "fbp-control")
    assert topics.changelog(APP, "fbp-limiters") == "orders-fbp-limiters-changelog"
    assert topics.keyed_table("per-user") == "bp-keyed-per-user"
    assert topics.keyed_overrides_table("per-user") == "bp-keyed-per-user-overrides"
    assert topics.keyed_deferral_topic(APP, "per-user", "-deferred") == "orders-per-user-deferred"
    assert topics.dlq_replay_group(APP, "billing") == "orders-bp-dlq-replay-billing"
    assert topics.client_id("orders-client", "grants") == "orders-client-fbp-grants"


@pytest.fixture
def bp(tmp_path: Path) -> Backpressure:
    app = faust.App(APP, broker="kafka://127.0.0.1:1", datadir=str(tmp_path),
                    broker_client_id="orders-client", topic_replication_factor=1,
                    store="memory://")
    return Backpressure(app, BackpressureSettings())


def test_a_worker_declares_the_pinned_topics_and_tables(bp: Backpressure) -> None:
    limiter = DistributedRateLimiterFactory.create_distributed(bp.app, "api", 10, 10)
    bp.pipeline("billing", source="src", sink="out", process=lambda v: v, limiter=limiter)
    bp.control_loop(limiter, downstream_group="g", downstream_topics=["out"])
    keyed = bp.rate_limit_per_key("per-user", tokens_per_second=5, store="memory://")
    channel, control = find_channel(bp.app), bp._control
    assert channel is not None and control is not None
    assert {
        "requests": channel.request_topic.get_topic_name(),
        "grants": channel.grant_topic.get_topic_name(),
        "limiter changelog": channel.table.changelog_topic.get_topic_name(),
        "limiter changelog (ours)": channel.changelog_topic_name,
        "pressure": control.pressure_topic.get_topic_name(),
        "control changelog": control.table.changelog_topic.get_topic_name(),
        "keyed changelog": keyed.table.changelog_topic.get_topic_name(),
        "keyed overrides changelog": keyed.overrides.changelog_topic.get_topic_name(),
        "keyed deferral": keyed.deferral_topic_name,
    } == {
        "requests": "orders-fbp-limiter-requests",
        "grants": "orders-fbp-limiter-grants",
        "limiter changelog": "orders-fbp-limiters-changelog",
        "limiter changelog (ours)": "orders-fbp-limiters-changelog",
        "pressure": "orders-fbp-pressure",
        "control changelog": "orders-fbp-control-changelog",
        "keyed changelog": "orders-bp-keyed-per-user-changelog",
        "keyed overrides changelog": "orders-bp-keyed-per-user-overrides-changelog",
        "keyed deferral": "orders-per-user-deferred",
    }
    assert client_settings(bp.app, "grants")["client_id"] == "orders-client-fbp-grants"


def test_the_operator_commands_read_and_write_the_pinned_topics(
        bp: Backpressure, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []

    async def read_compacted(kafka: Any, topic: str) -> dict[str, Any]:
        read.append(topic)
        return {}

    async def no_samples(kafka: Any, topic: str, *args: Any) -> dict[str, Any]:
        read.append(topic)
        return {}

    for module in (limiter_commands, cli, ops):
        monkeypatch.setattr(module, "read_compacted", read_compacted)
    monkeypatch.setattr(ops, "_recent_samples", no_samples)
    asyncio.run(limiter_commands.read_limiter_states("kafka:9092", APP))
    cli.ops_records(bp)  # key-status, key-override --list, breaker status
    asyncio.run(ops.cluster_status(bp, "kafka:9092"))
    assert sorted(read) == sorted(["orders-fbp-limiters-changelog", "orders-fbp-ops",
                                   "orders-fbp-limiters-changelog",
                                   "orders-fbp-control-changelog", "orders-fbp-pressure"])

    sent: list[str] = []

    class Producer:  # started and stopped as aiokafka's: an async context manager
        async def __aenter__(self) -> Producer:
            return self

        async def __aexit__(self, *exc: object) -> None: ...

        async def send_and_wait(self, topic: str, *args: Any, **kwargs: Any) -> None:
            sent.append(topic)

    override = Override.release("api", by="alice")

    async def applied(kafka: Any, topic: str) -> dict[str, Any]:
        read.append(topic)
        return {"api": {"last_override": override.override_id}}

    monkeypatch.setattr(ops, "kafka_producer", lambda *args: Producer())
    monkeypatch.setattr(ops, "read_compacted", applied)
    read.clear()
    asyncio.run(ops.send_override("kafka:9092", APP, override, secret=None))
    assert (sent, read) == (["orders-fbp-pressure"], ["orders-fbp-control-changelog"])


def test_dlq_replay_commits_in_the_pinned_group(bp: Backpressure,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    bp.pipeline("billing", source="src", sink="out", process=lambda v: v)
    groups: list[str] = []

    async def replay_dlq(kafka: Any, *, group_id: str, **kwargs: Any) -> Any:
        groups.append(group_id)
        return SimpleNamespace(summary=lambda: "replayed")

    monkeypatch.setattr(cli, "replay_dlq", replay_dlq)
    result = CliRunner().invoke(cli.backpressure, ["dlq-replay", "billing"],
                                obj=SimpleNamespace(app=bp.app))
    assert result.exit_code == 0, result.output
    assert groups == ["orders-bp-dlq-replay-billing"]


def test_the_acls_grant_the_pinned_names() -> None:
    granted = {(a.resource_type, a.name, a.pattern)
               for a in [*acls.app_acls(APP, "app"), *acls.operator_acls(APP, "ops", steer=True)]}
    assert {("topic", "orders-", "prefixed"), ("group", "orders-bp-dlq-replay-", "prefixed"),
            ("topic", "orders-fbp-limiter-requests", "literal"),
            ("topic", "orders-fbp-pressure", "literal"),
            ("topic", "orders-fbp-ops", "literal")} <= granted
