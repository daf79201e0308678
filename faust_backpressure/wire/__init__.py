"""The wire: what the Faust-facing layers put on Kafka and read back, below ``tables``.

- ``topics``: every internal topic, table and consumer group name of an app, in one place
  (exported here);
- ``kafka_clients``: raw-bytes topics, the key -> partition rule and our own aiokafka clients,
  built from the app's broker settings;
- ``signing``: what every internal record shares: HMAC signatures, range checks, replay memory,
  rejections;
- ``limiter_records``: the distributed limiter protocol's records (lease requests, commands,
  grants, acks) and their codecs.

It imports only ``config``, ``errors`` and ``faust_seam``; ``limiters`` sits beside it.
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

__all__ = ["CONTROL_TABLE", "LIMITER_TABLE", "app_prefix", "changelog", "client_id",
           "control_changelog", "dlq_replay_group", "dlq_replay_group_prefix",
           "keyed_deferral_topic", "keyed_overrides_table", "keyed_table", "limiter_changelog",
           "limiter_grants", "limiter_requests", "ops_topic", "pressure_topic"]
