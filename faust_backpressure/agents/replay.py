"""DLQ replay: re-publish dead-lettered records to the pipeline's source (or another topic).

Reads the DLQ from the replay group's committed position (the start, the first time) up to the
end offsets taken when the replay starts, so records dead-lettered again during the replay wait
for the next one. Each matching record is sent with its original key, value and own headers, plus
``bp.replay.count`` increased by one, at most ``rate`` records per second. Records of other
pipelines, or of other error types when ``error_type`` is given, are passed over. Positions are
committed only after the sends are acknowledged, so a crash replays again rather than losing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from faust_backpressure.agents.headers import (
    ERROR_TYPE,
    PIPELINE,
    REPLAY_COUNT,
    header,
    replay_count,
    without_bp_headers,
)
from faust_backpressure.faust_seam import force_metadata_update
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.tables.kafka import KafkaClientSettings, kafka_consumer, kafka_producer

__all__ = ["ReplayReport", "replay_dlq"]


@dataclass
class ReplayReport:
    """What a replay did."""

    dlq_topic: str
    target_topic: str
    examined: int = 0
    replayed: int = 0
    passed_over: int = 0
    by_error_type: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_error_type.items())) or "none"
        return (f"replayed {self.replayed} of {self.examined} record(s) from {self.dlq_topic} "
                f"to {self.target_topic} in {self.seconds:.1f} s; passed over "
                f"{self.passed_over}; by error type: {kinds}")


async def replay_dlq(kafka: KafkaClientSettings | str, *, pipeline: str, dlq_topic: str,
                     target_topic: str,
                     group_id: str, limit: int | None = None, error_type: str | None = None,
                     rate: float = 1000.0, from_beginning: bool = False,
                     progress: Callable[[int], None] | None = None) -> ReplayReport:
    """Move DLQ records of ``pipeline`` back to ``target_topic``; see the module docstring."""
    report = ReplayReport(dlq_topic, target_topic)
    began = time.monotonic()
    limiter = TokenBucketRateLimiter(rate, max(1.0, rate))
    consumer = kafka_consumer(kafka, "dlq-replay", group_id=group_id,
                              auto_offset_reset="earliest", isolation_level="read_committed")
    producer = kafka_producer(kafka, "dlq-replay", linger_ms=5)
    await consumer.start()
    await producer.start()
    try:
        partitions = consumer.partitions_for_topic(dlq_topic)
        if not partitions:
            await force_metadata_update(consumer)
            partitions = consumer.partitions_for_topic(dlq_topic) or set()
        tps = [TopicPartition(dlq_topic, p) for p in sorted(partitions)]
        if not tps:
            return report
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        todo = {tp for tp in tps if await consumer.position(tp) < end[tp]}
        done: dict[TopicPartition, int] = {}
        while todo and (limit is None or report.replayed < limit):
            batch = await consumer.getmany(*todo, timeout_ms=500, max_records=500)
            pending = []
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= end[tp] or (limit is not None
                                                    and report.replayed >= limit):
                        break
                    report.examined += 1
                    done[tp] = record.offset + 1
                    kind = (header(record.headers, ERROR_TYPE) or b"?").decode(errors="replace")
                    owner = header(record.headers, PIPELINE)
                    if (owner is not None and owner.decode(errors="replace") != pipeline) or (
                            error_type is not None and kind != error_type):
                        report.passed_over += 1
                        continue
                    await limiter.acquire()
                    headers = without_bp_headers(record.headers)
                    headers.append((REPLAY_COUNT,
                                    str(replay_count(record.headers) + 1).encode()))
                    pending.append(await producer.send(target_topic, key=record.key,
                                                       value=record.value, headers=headers))
                    report.replayed += 1
                    report.by_error_type[kind] = report.by_error_type.get(kind, 0) + 1
                    if progress is not None:
                        progress(1)
            for fut in pending:
                await fut
            # Transaction markers take offsets too: compare positions, not record offsets.
            for tp in list(todo):
                if await consumer.position(tp) >= end[tp]:
                    todo.discard(tp)
            if done:
                await consumer.commit({tp: OffsetAndMetadata(off, "") for tp, off in done.items()})
    finally:
        await producer.stop()
        await consumer.stop()
        report.seconds = time.monotonic() - began
    return report
