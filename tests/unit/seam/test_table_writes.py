"""The batched changelog writer on fakes of a Faust table, its store and aiokafka's producer."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from faust.streams import _current_event, current_event
from faust.types import TP

from faust_backpressure.agents.keyed_store import STATE, TableStore, encode_key
from faust_backpressure.faust_seam.context import context_of
from faust_backpressure.faust_seam.table_writes import (
    STORE_LAG,
    WRITERS,
    ChangelogWriter,
    flush_changelog_writers,
    in_partition,
)


class _Event:
    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


#: the events of _in_event, kept alive (Faust holds the current one by a weak reference)
_EVENTS: list[_Event] = []


@pytest.fixture(autouse=True)
def _no_event_after_the_test() -> Iterator[None]:
    yield
    _EVENTS.clear()  # the weak references die: no later test sees an event in progress


def _in_event(partition: int) -> None:
    """Be processing an event of ``partition`` (in this task), as a Faust stream sets it."""
    event = _Event(partition)
    _EVENTS.append(event)
    _current_event.set(weakref.ref(event))  # type: ignore[arg-type]


@dataclass
class _Store:
    rows: dict[bytes, bytes] = field(default_factory=dict)
    persisted: dict[Any, int] = field(default_factory=dict)
    #: the partition db of each row, as RocksDB's ``_set`` picks it (the current event's)
    dbs: dict[bytes, int] = field(default_factory=dict)

    def get(self, key: bytes) -> bytes | None:
        return self.rows.get(b"K" + key)

    def _encode_key(self, key: bytes) -> bytes:
        return b"K" + key

    def _encode_value(self, value: bytes) -> bytes:
        return b"V" + value

    def _set(self, key: bytes, value: bytes) -> None:
        event = current_event()
        assert event is not None
        self.rows[key] = value
        self.dbs[key] = event.message.partition

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


#: The changelog partitions the fake worker is active for (not 3).
_ACTIVE = {TP("app-keyed-changelog", p) for p in (0, 1, 2)}


@dataclass
class _App:
    _producer: _Producer = field(default_factory=_Producer)
    tables: Any = field(
        default_factory=lambda: SimpleNamespace(recovery=SimpleNamespace(active_tps=_ACTIVE)))

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
    writer = ChangelogWriter(app, table, linger=0)  # type: ignore[arg-type]
    _in_event(1)
    for i in range(5):
        writer.set(b"k%d" % i, b"v%d" % i)
    writer.set(b"k0", b"again")  # the last write of a key wins
    writer.delete(b"k4")
    _in_event(2)
    writer.set(b"x", b"y")
    assert table.data.rows[b"Kk0"] == b"Vagain" and b"Kk4" not in table.data.rows  # at once
    assert app._producer.sent == []  # nothing sent yet: after the linger (here 0: a turn)
    for _ in range(3):
        await asyncio.sleep(0)
    sent = app._producer.sent
    assert [(p, len(r)) for _, p, r in sent] == [(1, 3), (1, 2), (2, 1)]  # batches of 3
    assert sent[0][2][0] == (b"Kk0", b"Vagain") and sent[1][2][-1] == (b"Kk4", None)
    assert writer.records == 6 and writer.batches == 3
    await asyncio.sleep(0)
    persisted = {tp.partition: offset for tp, offset in table.data.persisted.items()}
    assert persisted == {1: 4, 2: 0}  # the last offset of each partition's last batch
    _in_event(1)
    writer.set(b"k9", b"v")  # a later turn: another drain
    for _ in range(4):
        await asyncio.sleep(0)
    assert app._producer.sent[-1][1:] == (1, [(b"Kk9", b"Vv")])
    _in_event(3)  # a partition this worker is no longer active for: its db is closed
    writer.set(b"gone", b"v")
    for _ in range(4):
        await asyncio.sleep(0)
    assert app._producer.sent[-1][1] == 3 and TP("app-keyed-changelog", 3) not in \
        table.data.persisted


class _SlowProducer(_Producer):
    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> Any:
        await self.go.wait()  # aiokafka waits like this when its accumulator is full
        return await super().send_batch(batch, topic, partition=partition)


async def test_a_commit_waits_until_every_write_made_before_it_is_sent() -> None:
    app, table = _App(_producer=_SlowProducer()), _Table()
    writer = ChangelogWriter(app, table, linger=0)  # type: ignore[arg-type]
    context_of(app).get_or_make(WRITERS, list).append(writer)  # as changelog_writer() does
    _in_event(0)
    for i in range(4):
        writer.set(b"k%d" % i, b"v")
    commit = asyncio.ensure_future(flush_changelog_writers(app))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not commit.done() and app._producer.sent == []  # the drain is stuck in a send
    writer.set(b"late", b"v")  # written while the drain waits: the next round
    app._producer.go.set()  # type: ignore[attr-defined]
    await asyncio.wait_for(commit, 1.0)
    assert sorted(k for _, _, records in app._producer.sent for k, _ in records) == [
        b"Kk0", b"Kk1", b"Kk2", b"Kk3", b"Klate"]


class _TurnProducer(_Producer):
    """A send takes a few event-loop turns, as aiokafka's does while a batch is in flight."""

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> Any:
        for _ in range(3):
            await asyncio.sleep(0)
        return await super().send_batch(batch, topic, partition=partition)


async def test_a_commit_does_not_wait_for_writes_made_after_it_began() -> None:
    """Under a steady stream the drain never goes idle: a commit waits for the writes made
    before it (its offsets' levels), not for every later one (it ran for seconds: Faust's
    "Timer commit is overlapping" in every keyed benchmark run)."""
    app, table = _App(_producer=_TurnProducer()), _Table()
    writer = ChangelogWriter(app, table, linger=0)  # type: ignore[arg-type]
    context_of(app).get_or_make(WRITERS, list).append(writer)
    _in_event(0)
    for i in range(4):
        writer.set(b"k%d" % i, b"v")
    commit = asyncio.ensure_future(flush_changelog_writers(app))
    turns = 0
    while not commit.done() and turns < 200:  # a level a turn, for 200 turns at most
        writer.set(b"later%d" % turns, b"v")
        turns += 1
        await asyncio.sleep(0)
    assert commit.done(), "the commit waited for writes made after it began"
    assert turns < 20
    sent = {k for _, _, records in app._producer.sent for k, _ in records}
    assert {b"Kk0", b"Kk1", b"Kk2", b"Kk3"} <= sent
    await writer.flush()
    sent = {k for _, _, records in app._producer.sent for k, _ in records}
    assert {b"Klater%d" % i for i in range(turns)} <= sent  # the next flush sends them


async def test_each_write_goes_to_the_partition_of_its_own_event_when_events_interleave() -> None:
    """Agent concurrency 2 (or a deferred event handed back while another is in progress):
    two events of different partitions are processed side by side on one keyed store; each
    level goes to the changelog partition and store db of its own event, also one written
    after the other event's writes."""
    app, table = _App(), _Table()
    store = TableStore(table, 0.0, lambda: 1000.0)
    store._writer = ChangelogWriter(app, table, linger=0)  # type: ignore[arg-type]
    turns = [asyncio.Event() for _ in range(3)]

    async def process(partition: int, key: str, wait: asyncio.Event | None,
                      then: asyncio.Event) -> None:
        _in_event(partition)  # this task's event (Faust: per stream, per task)
        if wait is not None:
            await wait.wait()
        store[key] = (2000.0, 0, 0.0)  # a level that matters: written
        then.set()
        await turns[2].wait()  # the other event runs meanwhile (an await in the gate)
        store[key] = (3000.0, 1, 0.0)

    first = asyncio.ensure_future(process(0, "on-0", None, turns[0]))
    second = asyncio.ensure_future(process(1, "on-1", turns[0], turns[1]))
    await turns[1].wait()
    turns[2].set()
    await asyncio.gather(first, second)
    for _ in range(3):
        await asyncio.sleep(0)
    where = {key: partition for _, partition, records in app._producer.sent
             for key, _ in records}
    keys = {name: b"K" + encode_key(name) for name in ("on-0", "on-1")}
    assert where == {keys["on-0"]: 0, keys["on-1"]: 1}
    assert table.data.dbs == where
    assert STATE.unpack(table.data.rows[keys["on-1"]][1:]) == (3000.0, 1, 0.0)


def test_a_write_outside_an_event_is_refused_not_sent_to_some_partition() -> None:
    writer = ChangelogWriter(_App(), _Table(), linger=0)  # type: ignore[arg-type]
    _current_event.set(None)
    with pytest.raises(RuntimeError, match="outside an event"):
        writer.set(b"k", b"v")


async def test_a_batch_writes_in_its_partition_outside_any_event() -> None:
    app, table = _App(), _Table()
    writer = ChangelogWriter(app, table, linger=0)  # type: ignore[arg-type]
    _current_event.set(None)
    with pytest.raises(RuntimeError):  # no event: no partition to write to
        writer.set(b"k", b"v")
    with in_partition("src", 3):
        writer.set(b"k", b"v")
        event = current_event()
        assert event is not None and event.message.partition == 3
    assert current_event() is None  # only while the block runs
    await writer.flush()
    assert table.data.dbs == {b"Kk": 3}  # the store's partition db and the changelog's
    assert app._producer.sent == [("app-keyed-changelog", 3, [(b"Kk", b"Vv")])]


async def test_writes_wait_for_the_linger_but_a_commit_does_not() -> None:
    app, table = _App(), _Table()
    writer = ChangelogWriter(app, table, linger=3600.0)  # type: ignore[arg-type]
    context_of(app).get_or_make(WRITERS, list).append(writer)
    for partition in (0, 1, 0):  # the writes of many events go in one batch per partition
        _in_event(partition)
        writer.set(b"k%d" % partition, b"v")
        for _ in range(5):
            await asyncio.sleep(0)
    assert app._producer.sent == [] and table.data.rows  # the store at once, the changelog later
    await flush_changelog_writers(app)  # a commit: sent now
    assert sorted((p, len(r)) for _, p, r in app._producer.sent) == [(0, 1), (1, 1)]
    await flush_changelog_writers(app)  # nothing more to send, no timer left behind
    assert writer._timer is None and writer._task is None and writer.batches == 2


async def _until(condition: Callable[[], bool]) -> None:
    """Until ``condition`` holds (a drain's positive sign): loop turns only, no wall time."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("not reached in 1000 loop turns")


def _rocksdict_levels(tmp_path: Any, app_id: str) -> Any:
    """A 4-partition bytes table on a rocksdict store in ``tmp_path`` (the app not started)."""
    import faust

    app = faust.App(app_id, datadir=str(tmp_path), store="rocksdict://")
    return app.Table("levels", key_type=bytes, value_type=bytes, partitions=4,
                     store="rocksdict:levels")


async def test_rocksdb_is_written_in_one_batch_at_the_drain_and_read_before_it(
        tmp_path: Any) -> None:
    from faust_backpressure.faust_seam.table_writes import UNWRITTEN

    table = _rocksdict_levels(tmp_path, "unit-writes")
    fake = _App()
    writer = ChangelogWriter(fake, table, linger=3600.0)  # type: ignore[arg-type]
    store = TableStore(table, 0.0, lambda: 1000.0)
    store._writer = writer
    _in_event(2)
    store["C1"] = (2000.0, 1, 0.0)
    db = table.data._db_for_partition(2)
    assert db.get(encode_key("C1")) is None  # not in RocksDB yet: the drain writes it
    assert store.get("C1") == (2000.0, 1, 0.0)  # but read as written (no index: the table)
    del store["C1"]
    assert writer.written(encode_key("C1")) is None and store.get("C1") is None
    store["C2"] = (3000.0, 0, 0.0)
    await writer.flush()
    assert writer.written(encode_key("C2")) is UNWRITTEN
    assert db.get(encode_key("C1")) is None
    assert STATE.unpack(db.get(encode_key("C2"))) == (3000.0, 0, 0.0)
    assert store.get("C2") == (3000.0, 0, 0.0)
    assert fake._producer.sent == [(table.changelog_topic.get_topic_name(), 2,
                                    [(encode_key("C1"), None),
                                     (encode_key("C2"), STATE.pack(3000.0, 0, 0.0))])]


async def test_bytes_skip_the_encoding_only_where_faust_would_give_them_back_unchanged(
        tmp_path: Any) -> None:
    import faust

    app = faust.App("unit-writes-raw", datadir=str(tmp_path), store="memory://")
    table: Any = app.Table("levels", key_type=bytes, value_type=bytes, partitions=4)
    writer = ChangelogWriter(app, table)
    assert writer._raw  # Faust's own encoding: bytes as they are, so skipped
    assert table.data._encode_key(b"sC1") == b"sC1"
    assert table.data._encode_value(b"\x00level") == b"\x00level"
    faked = ChangelogWriter(_App(), _Table())  # type: ignore[arg-type]
    assert not faked._raw  # a store with its own encoding keeps it
    _in_event(0)
    faked.set(b"k", b"v")
    assert faked._pending == {0: {b"Kk": b"Vv"}} and faked.written(b"k") == b"Vv"
    assert faked._timer is not None
    faked._timer.cancel()


async def test_rocksdb_gets_the_acknowledged_offset_with_the_partitions_next_write_batch(
        tmp_path: Any) -> None:
    table = _rocksdict_levels(tmp_path, "unit-writes-offset")
    fake = _App()
    name = table.changelog_topic.get_topic_name()
    fake.tables.recovery.active_tps = {TP(name, 1)}  # active for partition 1 only
    writer = ChangelogWriter(fake, table, linger=3600.0,  # type: ignore[arg-type]
                             clock=lambda: 1000.0)  # frozen: every drain after the first lags
    data = table.data
    fake._producer.end = {1: 40, 2: 7}
    for partition in (1, 2):
        _in_event(partition)
        writer.set(b"a%d" % partition, b"x")
        writer.set(b"b%d" % partition, b"y")
    await writer.flush()  # (the fake acknowledges at once: before the flush's store write)
    db1, db2 = data._db_for_partition(1), data._db_for_partition(2)
    assert db1.get(b"a1") == b"x" and db2.get(b"b2") == b"y"
    assert db1.get(data.offset_key) == b"41"  # records 40-41, with the store's batch
    assert db2.get(data.offset_key) is None  # not this worker's partition any more
    assert writer._acked == {}
    _in_event(1)
    writer.set(b"c1", b"z")
    writer._start()
    await _until(lambda: writer._task is None and bool(writer._acked))  # drained, acknowledged
    # within the lag: not stored
    assert writer._acked == {1: 42} and db1.get(b"c1") is None
    assert db1.get(data.offset_key) == b"41"  # never past what the store holds
    writer.write_store()  # as every flush ends (a commit, a revocation)
    assert db1.get(data.offset_key) == b"42" and db1.get(b"c1") == b"z"
    assert writer._acked == {}


async def test_rocksdb_lags_the_changelog_by_at_most_the_store_lag_and_reads_see_it(
        tmp_path: Any) -> None:
    table = _rocksdict_levels(tmp_path, "unit-writes-lag")
    fake = _App()
    now = [1000.0]
    writer = ChangelogWriter(fake, table, linger=0.0,  # type: ignore[arg-type]
                             clock=lambda: now[0])
    db = table.data._db_for_partition(0)
    _in_event(0)
    writer.set(b"k1", b"v1")
    await _until(lambda: writer._task is None and len(fake._producer.sent) == 1)
    # the first drain writes the store at once
    assert db.get(b"k1") == b"v1" and len(fake._producer.sent) == 1
    writer.set(b"k1", b"v2")
    writer.delete(b"k2")
    now[0] += STORE_LAG / 2
    await _until(lambda: writer._task is None and len(fake._producer.sent) == 2)
    # a drain within the lag: sent, not in RocksDB yet
    assert len(fake._producer.sent) == 2 and writer._task is None
    assert db.get(b"k1") == b"v1" and writer.written(b"k1") == b"v2"
    assert writer.written(b"k2") is None  # a removal on its way
    await writer.flush()  # a commit: the store too
    assert db.get(b"k1") == b"v2" and writer._unstored == {}
