"""DLQ replay: re-publish dead-lettered records to the pipeline's source (or another topic).

Reads the DLQ from the replay group's committed position (the start, the first time) up to the
end offsets taken when the replay starts, so records dead-lettered again during the replay wait
for the next one. Each matching record is sent with its original key, value and own headers, plus
``bp.replay.count`` increased by one, at most ``rate`` records per second. Records of other
pipelines are passed over. With ``error_type``, records of other types are left for later
replays: the committed position never passes one, and the records replayed behind it are
named in the commit's metadata so a later replay skips them. Positions are committed only after
the sends are acknowledged, so a crash replays again rather than losing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from faust_backpressure.agents.headers import (
    REPLAY_COUNT,
    error_type,
    owned_by,
    replay_count,
    without_bp_headers,
)
from faust_backpressure.faust_seam import force_metadata_update
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.tables.limiter_commands import group_offsets
from faust_backpressure.wire.kafka_clients import (
    KafkaClientSettings,
    batches_to_end,
    kafka_consumer,
    kafka_producer,
)

__all__ = ["ReplayReport", "replay_dlq"]


@dataclass
class ReplayReport:
    """What a replay did."""

    dlq_topic: str
    target_topic: str
    examined: int = 0
    replayed: int = 0
    passed_over: int = 0
    #: records of this pipeline not replayed (other error types): offered to later replays
    left_behind: int = 0
    #: records an earlier filtered replay sent already (skipped, not sent twice)
    already_replayed: int = 0
    by_error_type: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_error_type.items())) or "none"
        text = (f"replayed {self.replayed} of {self.examined} record(s) from {self.dlq_topic} "
                f"to {self.target_topic} in {self.seconds:.1f} s; passed over "
                f"{self.passed_over} of other pipelines; by error type: {kinds}")
        if self.already_replayed:
            text += f"; skipped {self.already_replayed} replayed before"
        if self.left_behind:
            text += (f"; left {self.left_behind} record(s) of other error types for later "
                     "replays")
        return text


def _markers(metadata: str) -> dict[str, int]:
    """``{error type: offset}`` from a commit's metadata (see :func:`_metadata`)."""
    try:
        raw = json.loads(metadata) if metadata else {}
    except ValueError:
        return {}
    done = raw.get("replayed_below", {}) if isinstance(raw, dict) else {}
    return {str(k): int(v) for k, v in done.items() if isinstance(v, int)}


def _metadata(markers: dict[str, int], position: int) -> str:
    """Records of type T at offsets below ``markers[T]`` (and at or past the committed
    ``position``) were replayed already: the next replay skips them instead of sending them
    twice."""
    kept = {k: v for k, v in sorted(markers.items()) if v > position}
    return json.dumps({"replayed_below": kept}, separators=(",", ":")) if kept else ""


@dataclass
class _Replay:
    """One replay's per-record decisions and the positions it may commit."""

    report: ReplayReport
    pipeline: str
    error_type: str | None
    limiter: TokenBucketRateLimiter
    producer: Any
    progress: Callable[[int], None] | None
    markers: dict[TopicPartition, dict[str, int]] = field(default_factory=dict)
    done: dict[TopicPartition, int] = field(default_factory=dict)
    #: per partition, the first record of this pipeline left behind: commits stop there
    gap: dict[TopicPartition, int] = field(default_factory=dict)

    async def one(self, tp: TopicPartition, record: Any) -> Any:
        """Replay ``record`` if it is due; the send's future, or None if passed over."""
        report = self.report
        report.examined += 1
        self.done[tp] = record.offset + 1
        kind = error_type(record.headers)
        if not owned_by(record.headers, self.pipeline):
            report.passed_over += 1  # another pipeline's: never ours to replay
            return None
        if record.offset < self.markers[tp].get(kind, -1):
            report.already_replayed += 1
            return None
        if self.error_type is not None and kind != self.error_type:
            report.left_behind += 1
            self.gap.setdefault(tp, record.offset)
            return None
        await self.limiter.acquire()
        headers = without_bp_headers(record.headers)
        headers.append((REPLAY_COUNT, str(replay_count(record.headers) + 1).encode()))
        sent = await self.producer.send(report.target_topic, key=record.key,
                                        value=record.value, headers=headers)
        self.markers[tp][kind] = record.offset + 1
        report.replayed += 1
        report.by_error_type[kind] = report.by_error_type.get(kind, 0) + 1
        if self.progress is not None:
            self.progress(1)
        return sent

    def commits(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """Never past a record of ours that was not replayed; the replayed ones behind it are
        remembered in the commit's metadata so they are not sent twice."""
        positions = {tp: self.gap.get(tp, off) for tp, off in self.done.items()}
        return {tp: OffsetAndMetadata(position, _metadata(self.markers[tp], position))
                for tp, position in positions.items()}


async def replay_dlq(kafka: KafkaClientSettings | str, *, pipeline: str, dlq_topic: str,
                     target_topic: str,
                     group_id: str, limit: int | None = None, error_type: str | None = None,
                     rate: float = 1000.0, from_beginning: bool = False,
                     progress: Callable[[int], None] | None = None) -> ReplayReport:
    """Move DLQ records of ``pipeline`` back to ``target_topic``; see the module docstring."""
    report = ReplayReport(dlq_topic, target_topic)
    began = time.monotonic()
    consumer = kafka_consumer(kafka, "dlq-replay", group_id=group_id,
                              auto_offset_reset="earliest", isolation_level="read_committed")
    producer = kafka_producer(kafka, "dlq-replay", linger_ms=5)
    replay = _Replay(report, pipeline, error_type, TokenBucketRateLimiter(rate, max(1.0, rate)),
                     producer, progress)
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
        replay.markers = {tp: {} for tp in tps}
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        # (position() waits for the group coordinator, which the admin call below needs)
        todo = {tp for tp in tps if await consumer.position(tp) < end[tp]}
        if not from_beginning:
            for tp, committed in (await group_offsets(kafka, group_id, tps)).items():
                replay.markers[tp] = _markers(committed.metadata or "")
        async for batch in batches_to_end(consumer, end, todo, max_records=500):
            pending = []
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= end[tp] or (limit is not None
                                                    and report.replayed >= limit):
                        break
                    sent = await replay.one(tp, record)
                    if sent is not None:
                        pending.append(sent)
            for fut in pending:
                await fut
            if replay.done:
                await consumer.commit(replay.commits())
            if limit is not None and report.replayed >= limit:
                break
    finally:
        await producer.stop()
        await consumer.stop()
        report.seconds = time.monotonic() - began
    return report
