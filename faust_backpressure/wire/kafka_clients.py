"""Kafka details the Faust-facing layers share: raw-bytes topics, brokers, key partitioning,
and every Kafka client of our own (grant reader, lag probes, DLQ replay), built from the Faust
app's own broker settings: brokers, TLS context, SASL credentials, client id and request
timeout, so whatever works for the user's Faust app (open or secured cluster) works for ours.

Example::

    dlq = raw_topic(app, "orders-dlq")              # keys and values pass through as bytes
    aiokafka_bootstrap = broker_bootstrap(app)      # "host:port,host:port"
    partition = partition_for_key(b"orders-api", 8) # where the default partitioner puts it
    consumer = kafka_consumer(app, "grants")         # group_id=None, the app's security
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types import AppT, TopicT

from faust_backpressure.faust_seam import TopicKeepingProducer, force_metadata_update
from faust_backpressure.wire.topics import client_id

__all__ = ["KafkaClientSettings", "batches_to_end", "broker_bootstrap", "client_settings",
           "kafka_admin", "kafka_consumer", "kafka_producer", "partition_for_key", "raw_topic",
           "records_to_end", "topic_partitions"]

#: aiokafka keyword arguments every client of ours takes (``bootstrap_servers``, security, ...)
KafkaClientSettings = Mapping[str, Any]


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


def client_settings(app: AppT, role: str) -> dict[str, Any]:
    """aiokafka keyword arguments common to every client: brokers, security, identity."""
    conf = app.conf
    auth = dict(credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context))
    if auth.get("security_protocol") == "PLAINTEXT" and any(
            url.scheme == "ssl" for url in conf.broker):
        # ``ssl://`` URLs and no context: TLS with the system's trust store
        auth.update(security_protocol="SSL", ssl_context=ssl.create_default_context())
    return {
        "bootstrap_servers": broker_bootstrap(app),
        "client_id": client_id(conf.broker_client_id, role),
        "request_timeout_ms": int(float(conf.broker_request_timeout) * 1000),
        **auth,
    }


def _settings(source: AppT | KafkaClientSettings | str, role: str) -> dict[str, Any]:
    if isinstance(source, str):
        return {"bootstrap_servers": source}
    if isinstance(source, Mapping):
        return dict(source)
    return client_settings(source, role)


def kafka_consumer(source: AppT | KafkaClientSettings | str, role: str = "consumer",
                   **options: Any) -> AIOKafkaConsumer:
    """A consumer with the app's settings (or given ones); ``group_id=None`` by default."""
    options.setdefault("group_id", None)
    options.setdefault("enable_auto_commit", False)
    return AIOKafkaConsumer(**{**_settings(source, role), **options})


def kafka_producer(source: AppT | KafkaClientSettings | str, role: str = "producer",
                   **options: Any) -> AIOKafkaProducer:
    options.setdefault("acks", "all")
    return TopicKeepingProducer(**{**_settings(source, role), **options})


class _AdminClient(AIOKafkaAdminClient):  # type: ignore[misc]  # aiokafka is untyped
    """An admin client that ``async with`` starts and closes, as aiokafka's other clients."""

    async def __aenter__(self) -> _AdminClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def kafka_admin(source: AppT | KafkaClientSettings | str, role: str = "admin",
                **options: Any) -> _AdminClient:
    return _AdminClient(**{**_settings(source, role), **options})


async def batches_to_end(consumer: AIOKafkaConsumer, end: Mapping[Any, int], todo: set[Any],
                      **getmany: Any) -> AsyncIterator[dict[Any, list[Any]]]:
    """Batches (partition -> records) of the assigned partitions ``todo`` until each one's
    position reaches its ``end`` offset; ``todo`` shrinks as they do (before the batch that
    ends them is yielded). Positions, not record offsets, are compared: transaction markers
    take offsets too."""
    while todo:
        batch = await consumer.getmany(*todo, timeout_ms=500, **getmany)
        for tp in list(todo):
            if await consumer.position(tp) >= end[tp]:
                todo.discard(tp)
        yield batch


async def topic_partitions(consumer: Any, topic: str, wait: float = 10.0) -> set[int]:
    """The partitions of ``topic`` once metadata shows them (empty after ``wait`` s)."""
    deadline = time.monotonic() + wait
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        if time.monotonic() > deadline:
            return set()
        await force_metadata_update(consumer)
        await asyncio.sleep(0.2)


async def records_to_end(kafka: AppT | KafkaClientSettings | str, topic: str, *,
                         partition: int | None = None) -> AsyncIterator[Any]:
    """Every record of ``topic`` (of its partition ``partition`` modulo their count, or of
    all) from the beginning to the end offsets as of the call."""
    async with kafka_consumer(kafka, "ops-status") as consumer:
        parts = sorted(await topic_partitions(consumer, topic, 2.0))
        tps = [TopicPartition(topic, p) for p in parts
               if partition is None or p == partition % len(parts)]
        if tps:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            todo = {tp for tp in tps if await consumer.position(tp) < end[tp]}
            async for batch in batches_to_end(consumer, end, todo):
                for records in batch.values():
                    for record in records:
                        yield record
