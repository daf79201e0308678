"""Operator commands to a running cluster's distributed limiters, from outside any worker.

:func:`send_limiter_command` writes an ``update_rate`` or ``reset`` command to the app's
limiter request topic, on the partition its id lives on, exactly as a worker's limiter does;
the owner of that partition applies it once, persists the new state in the limiter table and
acknowledges on the grant topic. The command is signed with the app's secret when there is one.
:func:`read_limiter_states` reads the limiter table's changelog (latest record per id).

Example::

    ack = await send_limiter_command(kafka, "orders", "orders-api", "update_rate", rate=50.0)
    print(ack.epoch, ack.rate)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from typing import Any, Literal

from aiokafka import TopicPartition
from aiokafka.errors import GroupCoordinatorNotAvailableError
from aiokafka.structs import OffsetAndMetadata

from faust_backpressure.errors import BackpressureError
from faust_backpressure.wire.kafka_clients import (
    KafkaClientSettings,
    kafka_admin,
    kafka_consumer,
    kafka_producer,
    partition_for_key,
    records_to_end,
    topic_partitions,
)
from faust_backpressure.wire.limiter_records import Ack, Command, decode_reply_record, encode
from faust_backpressure.wire.topics import limiter_changelog, limiter_grants, limiter_requests

__all__ = ["CommandTimeout", "group_offsets", "read_compacted", "read_limiter_states",
           "send_limiter_command"]


class CommandTimeout(BackpressureError, TimeoutError):
    """No owner acknowledged the command in time (no worker running, or an unknown id)."""


async def group_offsets(kafka: KafkaClientSettings | str, group: str,
                        partitions: list[TopicPartition] | None = None
                        ) -> dict[TopicPartition, OffsetAndMetadata]:
    """Committed offsets (with metadata) of ``group``; retried while the broker has no
    coordinator yet (a fresh broker or group)."""
    async with kafka_admin(kafka, "ops-offsets") as admin:
        for attempt in range(20):
            try:
                offsets: dict[TopicPartition, OffsetAndMetadata] = \
                    await admin.list_consumer_group_offsets(group, partitions=partitions)
                return offsets
            except GroupCoordinatorNotAvailableError:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.5)
        raise AssertionError("unreachable")


async def send_limiter_command(kafka: KafkaClientSettings | str, app_id: str, limiter_id: str,
                               kind: Literal["update_rate", "reset"], *,
                               rate: float | None = None, secret: bytes | None = None,
                               timeout: float = 30.0) -> Ack:
    """Send one command and wait for the owner's ack; :class:`CommandTimeout` if none."""
    worker_id = f"cli-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    command = Command(type=kind, command_id=uuid.uuid4().hex, limiter_id=limiter_id,
                      worker_id=worker_id, sent_at=time.time(), rate=rate)
    key = limiter_id.encode()
    async with kafka_consumer(kafka, "ops-acks", auto_offset_reset="latest") as consumer, \
            kafka_producer(kafka, "ops-commands") as producer:
        requests = await topic_partitions(consumer, limiter_requests(app_id))
        grants = TopicPartition(limiter_grants(app_id), 0)
        if not requests or not await topic_partitions(consumer, grants.topic):
            raise CommandTimeout(f"app {app_id!r} has no limiter topics: no worker with a "
                                 "distributed limiter has run")
        consumer.assign([grants])
        await consumer.seek_to_end(grants)
        await consumer.position(grants)  # the ack comes after this point
        await producer.send_and_wait(
            limiter_requests(app_id), encode(command, key=key, secret=secret), key=key,
            partition=partition_for_key(key, len(requests)))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(grants, timeout_ms=200)
            for record in batch.get(grants, []):
                if record.key != worker_id.encode():
                    continue
                for reply in decode_reply_record(record.value, secret):
                    if isinstance(reply, Ack) and reply.command_id == command.command_id:
                        return reply
        raise CommandTimeout(f"no acknowledgement for {kind} of limiter {limiter_id!r} "
                             f"within {timeout:g} s: is a worker of {app_id!r} running and "
                             "does it declare that limiter?")


def _text(raw: bytes | None) -> Any:
    """A changelog key or value: JSON if it parses (Faust's json serializer), else text."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")
    if isinstance(value, str):  # a str value through the json serializer: JSON in JSON
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


async def read_compacted(kafka: KafkaClientSettings | str, topic: str) -> dict[str, Any]:
    """Latest value per key of ``topic`` (a table changelog), read to its current end."""
    latest: dict[str, Any] = {}
    async for record in records_to_end(kafka, topic):
        key = str(_text(record.key))
        if record.value is None:
            latest.pop(key, None)
        else:
            latest[key] = _text(record.value)
    return latest


async def read_limiter_states(kafka: KafkaClientSettings | str, app_id: str
                              ) -> dict[str, dict[str, Any]]:
    """Every distributed limiter's persisted state (rate, burst, tokens, epoch, stats)."""
    states = await read_compacted(kafka, limiter_changelog(app_id))
    return {k: v for k, v in states.items() if isinstance(v, dict)}
