"""Helpers shared by the agent integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

Record = ConsumerRecord[bytes, bytes]


def hdr(record: Record) -> dict[str, bytes]:
    return dict(record.headers)


async def read_committed(bootstrap: str, topic: str, *, until: Callable[[list[Record]], bool],
                         timeout: float = 60.0, settle: float = 0.0) -> list[Record]:
    """Like ``kafka_io.consume`` but only committed transactional records, and, once ``until``
    holds, keeps reading ``settle`` more seconds (to catch late duplicates)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", group_id=None,
                                isolation_level="read_committed")
    await consumer.start()
    records: list[Record] = []
    try:
        deadline = time.monotonic() + timeout
        parts: Any = None
        while not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no topic {topic}")
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        settled_at: float | None = None
        while True:
            now = time.monotonic()
            if settled_at is None and until(records):
                settled_at = now + settle
            if settled_at is not None and now >= settled_at:
                return records
            if now > deadline:
                raise TimeoutError(f"{topic}: condition not met; read {len(records)}")
            batch = await consumer.getmany(timeout_ms=300)
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()
