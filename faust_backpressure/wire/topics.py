"""Every name an app's internal Kafka traffic goes by: topics, tables, changelogs, groups.

Workers (declaring the topics and tables) and operators' commands (reading and writing them
from outside any worker) both build the names here, so they cannot drift apart. Every topic is
the app's own: its name starts with ``<app_id>-``, the prefix the app's ACLs grant (see
``docs/acls.md``). A table's changelog is named as Faust names it:
``<app_id>-<table>-changelog``.

Example::

    limiter_requests("orders")     # "orders-fbp-limiter-requests"
    limiter_changelog("orders")    # "orders-fbp-limiters-changelog"
    dlq_replay_group("orders", "billing")   # "orders-bp-dlq-replay-billing"
"""

from __future__ import annotations

__all__ = ["CONTROL_TABLE", "LIMITER_TABLE", "app_prefix", "changelog", "client_id",
           "control_changelog", "dlq_replay_group", "dlq_replay_group_prefix",
           "keyed_deferral_topic", "keyed_overrides_table", "keyed_table", "limiter_changelog",
           "limiter_grants", "limiter_requests", "ops_topic", "pressure_topic"]

#: The distributed limiters' ledgers (one record per limiter id), keyed by limiter id.
LIMITER_TABLE = "fbp-limiters"
#: The control loops' deciders' state (one record per limiter id).
CONTROL_TABLE = "fbp-control"


def app_prefix(app_id: str) -> str:
    """What every internal topic's name starts with (a prefixed ACL's resource name)."""
    return f"{app_id}-"


def limiter_requests(app_id: str) -> str:
    """Lease requests and operators' set-rate/reset commands, to each limiter's owner."""
    return f"{app_prefix(app_id)}fbp-limiter-requests"


def limiter_grants(app_id: str) -> str:
    """The owners' grants and acknowledgements, to the workers (one partition)."""
    return f"{app_prefix(app_id)}fbp-limiter-grants"


def pressure_topic(app_id: str) -> str:
    """The control loops' samples and operators' holds, to each limiter's decider."""
    return f"{app_prefix(app_id)}fbp-pressure"


def ops_topic(app_id: str) -> str:
    """The compacted ops topic: pauses, slow-downs, breakers, key overrides, statuses."""
    return f"{app_prefix(app_id)}fbp-ops"


def changelog(app_id: str, table: str) -> str:
    """The changelog topic of the app's table ``table`` (Faust's name for it)."""
    return f"{app_prefix(app_id)}{table}-changelog"


def limiter_changelog(app_id: str) -> str:
    """The changelog of :data:`LIMITER_TABLE`."""
    return changelog(app_id, LIMITER_TABLE)


def control_changelog(app_id: str) -> str:
    """The changelog of :data:`CONTROL_TABLE`."""
    return changelog(app_id, CONTROL_TABLE)


def keyed_table(limit: str) -> str:
    """The bucket levels of the keyed limit ``limit``, by key."""
    return f"bp-keyed-{limit}"


def keyed_overrides_table(limit: str) -> str:
    """The per-key limits of the keyed limit ``limit`` (a global table)."""
    return f"{keyed_table(limit)}-overrides"


def keyed_deferral_topic(app_id: str, limit: str, suffix: str) -> str:
    """Where the keyed limit ``limit`` defers records (``suffix``: the settings'
    ``deferral_topic_suffix``)."""
    return f"{app_prefix(app_id)}{limit}{suffix}"


def dlq_replay_group_prefix(app_id: str) -> str:
    """What the consumer groups of ``dlq-replay`` start with (a prefixed ACL's name)."""
    return f"{app_prefix(app_id)}bp-dlq-replay-"


def dlq_replay_group(app_id: str, pipeline: str) -> str:
    """The consumer group ``dlq-replay`` commits ``pipeline``'s replayed DLQ offsets in."""
    return f"{dlq_replay_group_prefix(app_id)}{pipeline}"


def client_id(base: str, role: str) -> str:
    """A Kafka client of ours: the app's ``broker_client_id`` and what the client is for."""
    return f"{base}-fbp-{role}"
