"""Faust settings that make group joins and rebalances take seconds, not a minute."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["fast_faust_settings"]


def fast_faust_settings(**overrides: Any) -> dict[str, Any]:
    """Settings for tests and demos on one machine.

    Faust's defaults (60 s session timeout) make a killed worker's partitions wait a minute or
    more before another worker takes them; these keep a rebalance to a few seconds.
    """
    settings: dict[str, Any] = {
        "broker": "kafka://" + os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        "broker_session_timeout": 6.0,
        "broker_heartbeat_interval": 1.0,
        "broker_rebalance_timeout": 20.0,
        "broker_commit_interval": 0.5,
        "consumer_auto_offset_reset": "earliest",
        "topic_replication_factor": 1,
        "topic_partitions": 4,
        "web_enabled": False,
        "producer_linger": 0.005,
        "broker_max_poll_records": 500,
    }
    settings.update(overrides)
    return settings
