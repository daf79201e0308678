"""The Kafka ACLs an app's principal and an operator's principal need.

The app reads and writes its sources, sinks, DLQs and every ``<app_id>-*`` topic (Faust's and
ours), joins its group and the ``dlq-replay`` groups, and only Describes the downstream groups
its probes read; our internal consumers use no group. An operator reads everything and replays
DLQs, but gets **no write access to the internal topics**: whoever can write
``<app_id>-fbp-*`` can ask a limiter for tokens or change its rate. The list, resource by
resource: docs/acls.md; why and how it is tested: docs/deploy.md, "Kafka ACLs".

Example::

    for acl in app_acls("orders", "User:orders-app", sources=["orders"], sinks=["billed"],
                        dlqs=["orders-dlq"]):
        print(acl.command("broker:9093", "admin.properties"))   # a kafka-acls.sh line
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from faust.types import AppT
from faust.types.enums import ProcessingGuarantee

from faust_backpressure.app.registry import installed
from faust_backpressure.wire.topics import (
    app_prefix,
    dlq_replay_group_prefix,
    limiter_requests,
    ops_topic,
    pressure_topic,
)

__all__ = ["Acl", "acls_for_app", "app_acls", "kafka_acls_arguments", "operator_acls"]

ResourceType = Literal["topic", "group", "transactional-id", "cluster"]
PatternType = Literal["literal", "prefixed"]


@dataclass(frozen=True)
class Acl:
    """Allow ``principal`` the ``operations`` on a resource (a name or a name prefix)."""

    principal: str
    resource_type: ResourceType
    name: str
    operations: tuple[str, ...]
    pattern: PatternType = "literal"
    why: str = ""

    def arguments(self) -> list[str]:
        """``kafka-acls.sh`` / ``kafka.admin.AclCommand`` arguments after ``--add``."""
        args = ["--allow-principal", self.principal]
        for op in self.operations:
            args += ["--operation", op]
        if self.resource_type == "cluster":
            return [*args, "--cluster"]
        return [*args, f"--{self.resource_type}", self.name,
                "--resource-pattern-type", self.pattern]

    def command(self, bootstrap: str = "$BOOTSTRAP",
                command_config: str = "admin.properties") -> str:
        """A shell line creating this ACL with Kafka's ``kafka-acls.sh``."""
        return shlex.join(["kafka-acls.sh", "--bootstrap-server", bootstrap,
                           "--command-config", command_config, "--add", *self.arguments()])


def _user(principal: str) -> str:
    return principal if ":" in principal else f"User:{principal}"


def _each(principal: str, kind: ResourceType, names: Iterable[str],
          operations: tuple[str, ...], why: str) -> list[Acl]:
    """One literal ACL per name (each name once, in order)."""
    return [Acl(principal, kind, name, operations, why=why) for name in dict.fromkeys(names)]


def app_acls(app_id: str, principal: str, *, sources: Iterable[str] = (),
             sinks: Iterable[str] = (), dlqs: Iterable[str] = (),
             downstream_groups: Iterable[str] = (), downstream_topics: Iterable[str] = (),
             exactly_once: bool = False) -> list[Acl]:
    """What the app's workers need (``principal``: ``User:name`` or a bare user name)."""
    p = _user(principal)
    acls = [
        Acl(p, "topic", app_prefix(app_id),
            ("Read", "Write", "Create", "Describe", "DescribeConfigs"),
            "prefixed", "changelogs, assignor topic, fbp request/grant/pressure topics"),
        Acl(p, "group", app_id, ("Read", "Describe"), why="the app's consumer group"),
        Acl(p, "group", dlq_replay_group_prefix(app_id), ("Read", "Describe"), "prefixed",
            "dlq-replay's groups (when the app's principal runs it)"),
    ]
    acls += _each(p, "topic", sources, ("Read", "Describe", "Create"), "source")
    # a DLQ is read back by dlq-replay; its records go back to a source (Write)
    acls += _each(p, "topic", sinks, ("Write", "Describe", "Create"), "sink")
    acls += _each(p, "topic", dlqs, ("Read", "Write", "Describe", "Create"), "DLQ")
    acls += _each(p, "group", downstream_groups, ("Describe",),
                  "lag/credit probe: committed offsets")
    acls += _each(p, "topic", [t for t in downstream_topics if t not in {*sources, *sinks, *dlqs}],
                  ("Describe",), "lag/credit probe: end offsets")
    if exactly_once:
        acls += [
            Acl(p, "transactional-id", f"{app_id}-", ("Write", "Describe"), "prefixed",
                "exactly_once: Faust's <app_id>-<group>-<partition> producers"),
            Acl(p, "cluster", "kafka-cluster", ("IdempotentWrite",),
                why="idempotent producers (implied by topic Write on Kafka >= 2.8)"),
        ]
    return acls


def operator_acls(app_id: str, principal: str, *, sources: Iterable[str] = (),
                  dlqs: Iterable[str] = (), steer: bool = False) -> list[Acl]:
    """What an operator needs to watch the app and replay its DLQs, and nothing that can
    steer a limiter (no Write on ``<app_id>-*``). ``steer=True`` adds what ``set-rate``,
    ``reset``, ``emergency-stop``/``restore`` and ``pause``/``resume`` write (the request,
    pressure and ops topics): give it to on-call engineers only (docs/operations.md)."""
    p = _user(principal)
    steering = [Acl(p, "topic", topic, ("Write", "Describe"), why=why)
                for topic, why in ((limiter_requests(app_id), "set-rate/reset commands"),
                                   (pressure_topic(app_id), "emergency-stop/restore holds"),
                                   (ops_topic(app_id), "pause/resume"))] if steer else []
    acls = [
        Acl(p, "topic", app_prefix(app_id), ("Read", "Describe", "DescribeConfigs"),
            "prefixed", "read-only view of the internal topics"),
        Acl(p, "group", app_id, ("Describe",), why="the app's lag (kafka-consumer-groups)"),
        Acl(p, "group", dlq_replay_group_prefix(app_id), ("Read", "Describe"), "prefixed",
            "dlq-replay's groups"),
    ]
    acls += _each(p, "topic", dlqs, ("Read", "Describe"), "DLQ to replay")
    acls += _each(p, "topic", sources, ("Write", "Describe"), "replay target (a source)")
    return acls + steering


def acls_for_app(app: AppT, principal: str) -> list[Acl]:
    """:func:`app_acls` for an app with ``Backpressure`` installed: its pipelines' topics and
    its control loops' downstream groups and topics."""
    bp = installed(app)
    pipelines = list(bp.pipelines.values())
    probes = [loop.probe for loop in bp.control_loops.values()]
    probes += [flow.probe for flow in bp.credit_flows]
    # a ProcessingGuarantee member: Faust's setting decorator types it as the enum's class
    guarantee = cast(ProcessingGuarantee, app.conf.processing_guarantee)
    return app_acls(
        str(app.conf.id), principal,
        sources=[p.source_topic_name for p in pipelines],
        sinks=[s.get_topic_name() for p in pipelines for s in p.sinks],
        dlqs=[p.dlq_topic_name for p in pipelines],
        downstream_groups=[probe.group for probe in probes],
        downstream_topics=[t for probe in probes for t in probe.topics],
        exactly_once=guarantee is ProcessingGuarantee.EXACTLY_ONCE)


def kafka_acls_arguments(acls: Sequence[Acl]) -> list[list[str]]:
    """One ``--add ...`` argument list per ACL (for ``kafka.admin.AclCommand``)."""
    return [["--add", "--force", *acl.arguments()] for acl in acls]
