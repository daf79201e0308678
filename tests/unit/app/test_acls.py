"""The ACL lists: what each role gets, and the kafka-acls lines printed for them."""

from __future__ import annotations

from faust_backpressure.app.acls import Acl, app_acls, kafka_acls_arguments, operator_acls


def _ops(acls: list[Acl], resource: str, name: str) -> set[str]:
    return {op for a in acls if (a.resource_type, a.name) == (resource, name)
            for op in a.operations}


def test_app_principal_owns_its_prefix_group_and_topics() -> None:
    acls = app_acls("orders", "orders-app", sources=["in"], sinks=["out"], dlqs=["in-dlq"],
                    downstream_groups=["billing"], downstream_topics=["out", "billed"])
    assert {a.principal for a in acls} == {"User:orders-app"}
    assert {"Read", "Write", "Create", "Describe"} <= _ops(acls, "topic", "orders-")
    assert next(a for a in acls if a.name == "orders-").pattern == "prefixed"
    assert _ops(acls, "group", "orders") == {"Read", "Describe"}
    assert _ops(acls, "group", "billing") == {"Describe"}
    assert _ops(acls, "topic", "billed") == {"Describe"}
    assert "Write" not in _ops(acls, "topic", "in")
    assert not [a for a in acls if a.resource_type in ("transactional-id", "cluster")]
    eos = app_acls("orders", "User:orders-app", exactly_once=True)
    assert _ops(eos, "transactional-id", "orders-") == {"Write", "Describe"}
    assert _ops(eos, "cluster", "kafka-cluster") == {"IdempotentWrite"}


def test_operator_cannot_write_internal_topics() -> None:
    acls = operator_acls("orders", "ops", sources=["in"], dlqs=["in-dlq"])
    assert "Write" not in _ops(acls, "topic", "orders-")
    assert _ops(acls, "topic", "in") == {"Write", "Describe"}
    assert _ops(acls, "topic", "in-dlq") == {"Read", "Describe"}


def test_commands() -> None:
    acl = Acl("User:a", "topic", "orders-", ("Read", "Write"), "prefixed")
    assert acl.command("b:9093", "admin.properties") == (
        "kafka-acls.sh --bootstrap-server b:9093 --command-config admin.properties --add "
        "--allow-principal User:a --operation Read --operation Write --topic orders- "
        "--resource-pattern-type prefixed")
    cluster = Acl("User:a", "cluster", "kafka-cluster", ("IdempotentWrite",))
    assert kafka_acls_arguments([cluster]) == [
        ["--add", "--force", "--allow-principal", "User:a", "--operation", "IdempotentWrite",
         "--cluster"]]


def test_the_test_broker_sends_every_operation_and_resource_the_roles_use() -> None:
    # SecureKafkaBroker.add_acls sends Kafka's codes in one CreateAcls request: a name the
    # roles use and the code table lacks would fail only on the real broker.
    from faust_backpressure.testing.secure import _OPERATION, _PATTERN, _RESOURCE

    acls = [*app_acls("orders", "app", sources=["in"], sinks=["out"], dlqs=["d"],
                      downstream_groups=["g"], downstream_topics=["t"], exactly_once=True),
            *operator_acls("orders", "ops", sources=["in"], dlqs=["d"])]
    assert {op for a in acls for op in a.operations} <= set(_OPERATION)
    assert {a.resource_type for a in acls} <= set(_RESOURCE)
    assert {a.pattern for a in acls} <= set(_PATTERN)
