"""The batched changelog writer on fakes of a Faust table, its store and aiokafka's producer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from faust_backpressure.faust_seam.context import context_of
from faust_backpressure.faust_seam.table_writes import (
    WRITERS,
    ChangelogWriter,
    flush_changelog_writers,
)


@dataclass
class _Store:
    rows: dict[bytes, bytes] = field(default_factory=dict)
    persisted: dict[Any, int] = field(default_factory=dict)

    def _encode_key(self, key: bytes) -> bytes:
        return b"K" + key

    def _encode_value(self, value: bytes) -> bytes:
        return b"V" + value

    def _set(self, key: bytes, value: bytes) -> None:
        self.rows[key] = value

    def _del(self, key: bytes) -> None:
        self.rows.pop(key, None)

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted[tp] = offset


class _Batch:
    def __init__(self, room: int) -> None:
        self.records: list[tuple[bytes, bytes | None]] = []
        self.room = room

    def append(self, *, key: bytes, value: bytes | None, timestamp: None) -> object | None:
        if len(self.records) >= self.room:
            return None
        self.records.append((key, value))
        return object()


@dataclass
class _Metadata:
    offset: int


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int, list[tuple[bytes, bytes | None]]]] = []
        self.end: dict[int, int] = {}

    def create_batch(self) -> _Batch:
        return _Batch(room=3)

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> Any:
        self.sent.append((topic, partition, batch.records))
        future: asyncio.Future[_Metadata] = asyncio.get_running_loop().create_future()
        future.set_result(_Metadata(self.end.get(partition, 0)))
        self.end[partition] = self.end.get(partition, 0) + len(batch.records)
        return future


class _Topic:
    def get_topic_name(self) -> str:
        return "app-keyed-changelog"


@dataclass
class _App:
    _producer: _Producer = field(default_factory=_Producer)

    @property
    def producer(self) -> Any:
        return self

    async def maybe_start_producer(self) -> None:
        return None


@dataclass
class _Table:
    data: _Store = field(default_factory=_Store)
    changelog_topic: _Topic = field(default_factory=_Topic)


async def test_writes_go_to_the_store_at_once_and_to_the_changelog_in_batches() -> None:
    app, table = _App(), _Table()
    writer = ChangelogWriter(app, table)  # type: ignore[arg-type]
    for i in range(5):
        writer.set(1, b"k%d" % i, b"v%d" % i)
    writer.set(1, b"k0", b"again")  # the last write of a key wins
    writer.delete(1, b"k4")
    writer.set(2, b"x", b"y")
    assert table.data.rows[b"Kk0"] == b"Vagain" and b"Kk4" not in table.data.rows  # at once
    assert app._producer.sent == []  # nothing sent yet: once per loop turn
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    sent = app._producer.sent
    assert [(p, len(r)) for _, p, r in sent] == [(1, 3), (1, 2), (2, 1)]  # batches of 3
    assert sent[0][2][0] == (b"Kk0", b"Vagain") and sent[1][2][-1] == (b"Kk4", None)
    assert writer.records == 6 and writer.batches == 3
    await asyncio.sleep(0)
    persisted = {tp.partition: offset for tp, offset in table.data.persisted.items()}
    assert persisted == {1: 4, 2: 0}  # the last offset of each partition's last batch
    writer.set(1, b"k9", b"v")  # a later turn: another drain
    for _ in range(3):
        await asyncio.sleep(0)
    assert app._producer.sent[-1][1:] == (1, [(b"Kk9", b"Vv")])


class _SlowProducer(_Producer):
    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> Any:
        await self.go.wait()  # aiokafka waits like this when its accumulator is full
        return await super().send_batch(batch, topic, partition=partition)


async def test_a_commit_waits_until_every_write_made_before_it_is_sent() -> None:
    app, table = _App(_producer=_SlowProducer()), _Table()
    writer = ChangelogWriter(app, table)  # type: ignore[arg-type]
    context_of(app).get_or_make(WRITERS, list).append(writer)  # as changelog_writer() does
    for i in range(4):
        writer.set(0, b"k%d" % i, b"v")
    commit = asyncio.ensure_future(flush_changelog_writers(app))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not commit.done() and app._producer.sent == []  # the drain is stuck in a send
    writer.set(0, b"late", b"v")  # written while the drain waits: sent before the commit too
    app._producer.go.set()  # type: ignore[attr-defined]
    await asyncio.wait_for(commit, 1.0)
    assert sorted(k for _, _, records in app._producer.sent for k, _ in records) == [
        b"Kk0", b"Kk1", b"Kk2", b"Kk3", b"Klate"]
