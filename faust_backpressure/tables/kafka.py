"""Kafka details the Faust-facing layers share: raw-bytes topics, brokers, key partitioning.

Example::

    dlq = raw_topic(app, "orders-dlq")              # keys and values pass through as bytes
    aiokafka_bootstrap = broker_bootstrap(app)      # "host:port,host:port"
    partition = partition_for_key(b"orders-api", 8) # where the default partitioner puts it
"""

from __future__ import annotations

from typing import Any

from aiokafka.partitioner import murmur2
from faust.types import AppT, TopicT

__all__ = ["broker_bootstrap", "partition_for_key", "raw_topic"]


def raw_topic(app: AppT, name: str, **options: Any) -> TopicT:
    """``app.topic(name)`` whose keys and values are bytes, not (de)serialized by Faust;
    ``options`` (e.g. ``partitions``, ``internal``) are passed on."""
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw", **options)


def broker_bootstrap(app: AppT) -> str:
    """``host:port,...`` of the app's brokers (for plain aiokafka clients)."""
    return ",".join(f"{url.host}:{url.port or 9092}" for url in app.conf.broker)


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as Faust's producer) gives ``key``."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions
