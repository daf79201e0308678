"""The wire: what the Faust-facing layers put on Kafka and read back, below ``tables``.

``topics`` names every internal topic, table and consumer group of an app, in one place.
"""

from faust_backpressure.wire.topics import (
    CONTROL_TABLE,
    LIMITER_TABLE,
    app_prefix,
    changelog,
    client_id,
    control_changelog,
    dlq_replay_group,
    dlq_replay_group_prefix,
    keyed_deferral_topic,
    keyed_overrides_table,
    keyed_table,
    limiter_changelog,
    limiter_grants,
    limiter_requests,
    ops_topic,
    pressure_topic,
)

__all__ = [
    "CONTROL_TABLE",
    "LIMITER_TABLE",
    "app_prefix",
    "changelog",
    "client_id",
    "control_changelog",
    "dlq_replay_group",
    "dlq_replay_group_prefix",
    "keyed_deferral_topic",
    "keyed_overrides_table",
    "keyed_table",
    "limiter_changelog",
    "limiter_grants",
    "limiter_requests",
    "ops_topic",
    "pressure_topic",
]
