"""Small aiokafka helpers for tests and demos: create topics, produce, read back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from io import BytesIO
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.protocol.commit import OffsetFetchRequest
from aiokafka.protocol.types import CompactString, Int16, Int32, Int64, String

from faust_backpressure.wire.kafka_clients import batches_to_end, kafka_admin, topic_partitions

__all__ = ["commit_offsets", "committed_offsets", "consume", "create_topics", "end_offsets",
           "offset_commits", "produce", "read_to_end", "wait_partitions"]

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
_TEXT, _COMPACT_TEXT = String("utf-8"), CompactString("utf-8")  # Kafka's protocol strings


async def create_topics(bootstrap: str, topics: Mapping[str, int],
                        config: Mapping[str, str] | None = None, *,
                        replication: int = 1) -> None:
    """Create ``{name: partitions}`` and wait until their leaders are known."""
    async with kafka_admin(bootstrap) as admin:
        new = [NewTopic(name, partitions, replication, topic_configs=dict(config or {}))
               for name, partitions in topics.items()]
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(new)
    # Producing before partition leaders are elected fails, so wait until metadata shows them.
    async with AIOKafkaProducer(bootstrap_servers=bootstrap) as producer:
        for name, partitions in topics.items():
            deadline = time.monotonic() + 30
            while len(await producer.partitions_for(name)) < partitions:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"topic {name} has no leaders after 30 s")
                await asyncio.sleep(0.1)


async def produce(bootstrap: str, topic: str,
                  records: Iterable[tuple[bytes | None, bytes | None]], *,
                  headers: Sequence[tuple[str, bytes]] | None = None,
                  linger_ms: int = 5) -> int:
    """Send records (batched: several records per producer batch) and wait for all acks."""
    count = 0
    async with AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms,
                                acks="all") as producer:
        pending = []
        for key, value in records:
            pending.append(await producer.send(topic, value=value, key=key,
                                               headers=list(headers or [])))
            count += 1
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    return count


async def consume(bootstrap: str, topic: str, *,
                  until: int | Callable[[list[Record]], bool],
                  timeout: float = 60.0, settle: float = 0.0,
                  isolation_level: str = "read_uncommitted") -> list[Record]:
    """Read ``topic`` from the beginning (no consumer group) until ``until`` holds.

    ``until`` is a record count or a predicate on everything read so far; once it holds,
    reading goes on ``settle`` more seconds (to catch late duplicates). Raises
    ``TimeoutError`` with what was read when it does not hold within ``timeout``.
    ``isolation_level="read_committed"`` reads only committed transactional records.
    """
    done: Callable[[list[Record]], bool] = (
        (lambda rs: len(rs) >= until) if isinstance(until, int) else until
    )
    records: list[Record] = []
    async with _from_the_beginning(bootstrap, topic, isolation_level) as (consumer, _):
        deadline = time.monotonic() + timeout
        settled_at: float | None = None
        while True:
            now = time.monotonic()
            if settled_at is None and done(records):
                settled_at = now + settle
            if settled_at is not None and now >= settled_at:
                break
            remaining = (settled_at if settled_at is not None else deadline) - now
            if settled_at is None and remaining <= 0:
                raise TimeoutError(f"{topic}: condition not met after {timeout:.0f} s; "
                                   f"read {len(records)} records")
            batch = await consumer.getmany(timeout_ms=int(min(remaining, 0.5) * 1000))
            for part in batch.values():
                records.extend(part)
    return records


async def read_to_end(bootstrap: str, topic: str, *, isolation_level: str = "read_uncommitted",
                      timeout: float = 60.0) -> list[Record]:
    """Everything in ``topic`` from the beginning to its end offsets as of the call.

    With ``isolation_level="read_committed"`` the end is the last stable offset and only
    committed transactional records are returned. For a topic whose record count is not known
    in advance (duplicates, a DLQ). Raises ``TimeoutError`` if the end is not reached in time.
    """
    records: list[Record] = []
    async with _from_the_beginning(bootstrap, topic, isolation_level) as (consumer, tps):
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        behind = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        async for batch in batches_to_end(consumer, ends, behind):
            for part in batch.values():
                records.extend(part)
            if behind and time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: end offsets not reached after {timeout:.0f} s; "
                                   f"read {len(records)} records")
        return records


@contextlib.asynccontextmanager
async def _from_the_beginning(bootstrap: str, topic: str, isolation_level: str
                              ) -> AsyncIterator[tuple[AIOKafkaConsumer, list[TopicPartition]]]:
    """A consumer (no group) assigned every partition of ``topic``, at the beginning."""
    async with AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", group_id=None,
                                isolation_level=isolation_level) as consumer:
        tps = [TopicPartition(topic, p) for p in sorted(await wait_partitions(consumer, topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning()
        yield consumer, tps


async def committed_offsets(bootstrap: str, group: str, topic: str, *,
                            timeout: float = 30.0) -> dict[int, int]:
    """``{partition: offset}`` committed by consumer group ``group`` on ``topic``.

    Asks again while the group's coordinator answers with a retriable error (loading its
    offsets after a broker restart, or not available yet): aiokafka's
    ``list_consumer_group_offsets`` ignores the answer's top-level error and returns ``{}``
    then (a CI run of test_broker_restart.py read no offsets right after the restart)."""
    async with kafka_admin(bootstrap) as admin:
        deadline = time.monotonic() + timeout
        while True:
            try:
                coordinator = await admin.find_coordinator(group)
                # (admin's own request path: the public call drops the error we need)
                response = await admin._send_request(OffsetFetchRequest(group, None),
                                                      coordinator)
                codes = [getattr(response, "error_code", 0), *(
                    error for _, partitions in response.topics for *_, error in partitions)]
                if any(codes):
                    raise for_code(next(c for c in codes if c))(f"offsets of group {group}")
                return {partition: offset for name, partitions in response.topics
                        if name == topic for partition, offset, *_ in partitions}
            except KafkaError as error:
                if not error.retriable or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)


async def offset_commits(bootstrap: str, group: str) -> list[tuple[str, int, int, int, bool]]:
    """Every offset commit of ``group`` in ``__consumer_offsets``, in the order written:
    ``(topic, partition, offset, commit time in ms, committed)``, ``committed`` False for a
    transactional commit that was aborted or is still open. For tracing where a worker that
    took over a partition started reading (e.g. an exactly_once copy)."""
    log = await read_to_end(bootstrap, "__consumer_offsets")
    stable = {(r.partition, r.offset) for r in await read_to_end(
        bootstrap, "__consumer_offsets", isolation_level="read_committed")}
    commits = []
    for record in log:
        decoded = _offset_commit(record.key, record.value)
        if decoded is not None and decoded[0] == group:
            commits.append((*decoded[1:], (record.partition, record.offset) in stable))
    return commits


def _offset_commit(key: bytes | None, value: bytes | None
                   ) -> tuple[str, str, int, int, int] | None:
    """``(group, topic, partition, offset, commit time)`` of an offset-commit record (key
    versions 0-1, value versions 0-4), ``None`` for anything else."""
    if not key or not value:
        return None
    fields = BytesIO(key)
    if Int16.decode(fields) > 1:  # 2 and on: group metadata
        return None
    group, topic, partition = _TEXT.decode(fields), _TEXT.decode(fields), Int32.decode(fields)
    fields = BytesIO(value)
    version, offset = Int16.decode(fields), Int64.decode(fields)
    if version >= 3:
        Int32.decode(fields)  # the leader epoch
    (_COMPACT_TEXT if version >= 4 else _TEXT).decode(fields)  # the commit's metadata
    return group or "", topic or "", partition, offset, Int64.decode(fields)


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """``{partition: offset of the next record}`` of ``topic``."""
    async with AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None) as consumer:
        tps = [TopicPartition(topic, p) for p in sorted(await wait_partitions(consumer, topic))]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}


async def commit_offsets(bootstrap: str, group: str, topic: str,
                         offsets: Mapping[int, int]) -> None:
    """Commit ``{partition: offset}`` for ``group`` (no member joins: a plain offset commit)."""
    async with AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False) as consumer:
        tps = {TopicPartition(topic, p): offset for p, offset in offsets.items()}
        consumer.assign(list(tps))
        await consumer.commit(tps)


async def wait_partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partitions of ``topic``, once the consumer's metadata knows them (30 s at most)."""
    parts = await topic_partitions(consumer, topic, wait=30.0)
    if not parts:
        raise TimeoutError(f"topic {topic} not found")
    return parts
