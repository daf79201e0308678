"""A table's writes, batched to its changelog: the store at once, the changelog every few ms.

Faust's table path (``table[key] = value``) hands each write to its producer buffer, sent one
by one, and persists the changelog offset at each acknowledgement: for a keyed limit's writes,
a large part of its cost (docs/benchmarks.md, "Keyed limits"; docs/keyed.md).

:class:`ChangelogWriter` writes the store (RocksDB's partition db, as the store's own
:meth:`_set`/:meth:`_del` do) and keeps the changelog records by partition, the last write of a
key winning; ``LINGER`` after a write a task appends them to aiokafka batches of the app's
default producer (never transactional: our tables are control state, :func:`mark_control_topic`),
one :meth:`send_batch` per partition, and records the last offset of each batch as the
partition's persisted offset when it is acknowledged (what Faust's path does per record).

Ordering: a write is made in the gate, before the agent's body; every commit first waits until
the writes made before it are in the producer's batches (:func:`flush_changelog_writers`, from
the seam's consumer; a revocation waits for the drain to go idle), and Faust flushes the
producer before an at_least_once commit: the changelog record is sent before the source offset
is committed, as on Faust's path (a graceful stop commits, so it sends them too).

Partition: a write goes to the partition of the event being processed, read from Faust's
``current_event()`` as the RocksDB store's own ``_set`` reads it (so the two always agree). It
is per task (agent ``concurrency > 1``, a deferred event handed back later): another event in
progress cannot lend its partition. A batch pipeline's records are not events:
:func:`in_partition` stands in for one while a batch writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

from faust import streams as faust_streams
from faust.stores.base import SerializedStore
from faust.stores.base import Store as FaustStore
from faust.stores.rocksdb import Store as RocksStore
from faust.streams import current_event
from faust.types import TP, AppT
from rocksdict import WriteBatch

from faust_backpressure.faust_seam.batches import raw_producer
from faust_backpressure.faust_seam.context import Slot, context_of, find_context

__all__ = ["ChangelogWriter", "changelog_writer", "flush_changelog_writers", "in_partition",
           "persist_changelog_offset"]

#: Seconds a write waits for others before its batch is sent: the writes of many events in one
#: batch per partition (a drain task per event-loop turn cost as much as the writes). A commit
#: does not wait for it (:meth:`ChangelogWriter.flush`).
LINGER = 0.01

#: Seconds a batched store (rocksdict) may lag the changelog: its write batches gather the
#: drains of this long (a RocksDB write per partition per drain was costly: docs/keyed.md); a
#: commit, a revocation and the index's rebuild write it at once.
STORE_LAG = 0.1

#: :meth:`ChangelogWriter.written` of a key with no write waiting.
UNWRITTEN: Any = object()

#: The app's writers, flushed before each commit (:func:`flush_changelog_writers`).
WRITERS: Slot[list[ChangelogWriter]] = Slot("changelog writers")

log = logging.getLogger(__name__)


class ChangelogWriter:
    """Writes of one table (raw bytes): the store now, the changelog in batches."""

    def __init__(self, app: AppT, table: Any, linger: float = LINGER, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: what :data:`STORE_LAG` is measured on (a test's virtual clock)."""
        self.app = app
        self.linger = linger
        self._clock = clock
        self.table = table
        self.topic: str = table.changelog_topic.get_topic_name()
        self._pending: dict[int, dict[bytes, bytes | None]] = {}
        self._task: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # the drain, ``linger`` s after a write
        # the drain's rounds: taken from ``_pending``, and all sent; a flush waits for a round
        self._taken = self._sent = 0
        self._round_sent: asyncio.Future[None] | None = None
        # rocksdict's RocksDB: the store is written in batches at the drain, else at once
        self._batched = isinstance(table.data, RocksStore) and bool(
            getattr(table.data, "use_rocksdict", False))
        # Faust's own encoding gives bytes back as they are, at a cost per write: skipped for bytes.
        self._raw = _encodes_bytes_as_they_are(table.data)
        #: batched stores: the last acknowledged changelog offset by partition, written with
        #: the partition's next write batch (a put of its own per batch cost a RocksDB write)
        self._acked: dict[int, int] = {}
        #: batched stores: records taken by a drain, not in RocksDB yet (``STORE_LAG``)
        self._unstored: dict[int, dict[bytes, bytes | None]] = {}
        self._stored_at = 0.0
        self.records = 0  # changelog records sent (this worker, since start)
        self.batches = 0

    def set(self, key: bytes, value: bytes) -> None:
        """``table[key] = value``, from inside an event (its partition)."""
        partition = _event_partition()
        data = self.table.data
        if self._raw and type(key) is bytes and type(value) is bytes:
            raw_key, raw_value = key, value
        else:
            raw_key, raw_value = data._encode_key(key), data._encode_value(value)
        if not self._batched:
            data._set(raw_key, raw_value)
        self._queue(partition, raw_key, raw_value)

    def delete(self, key: bytes) -> None:
        """``del table[key]``: a tombstone in the changelog."""
        partition = _event_partition()
        data = self.table.data
        raw_key = key if self._raw and type(key) is bytes else data._encode_key(key)
        if not self._batched:
            data._del(raw_key)
        self._queue(partition, raw_key, None)

    def written(self, key: bytes) -> Any:
        """The value of a write of ``key`` not in the store yet (None: a removal), else
        :data:`UNWRITTEN`: what a read of the table must see first (RocksDB is written at the
        drain)."""
        if not self._pending and not self._unstored:
            return UNWRITTEN
        raw_key = key if self._raw and type(key) is bytes else self.table.data._encode_key(key)
        for waiting in (self._pending, self._unstored):  # the newer first
            for records in waiting.values():
                found = records.get(raw_key, UNWRITTEN)
                if found is not UNWRITTEN:
                    return found
        return UNWRITTEN

    def _take(self, pending: dict[int, dict[bytes, bytes | None]]) -> None:
        """A drain's records, before they are sent: to RocksDB now or, within ``STORE_LAG``
        of its last write, with a later drain's (a read sees them in :meth:`written`)."""
        if not self._batched:
            return
        unstored = self._unstored
        for partition, records in pending.items():
            if partition in unstored:
                unstored[partition].update(records)  # later writes of a key win
            else:
                unstored[partition] = records
        now = self._clock()
        if now - self._stored_at >= STORE_LAG:
            self._stored_at = now
            self.write_store()

    def write_store(self) -> None:
        """RocksDB's partition dbs, one write batch each (what Faust's changelog restore
        does): a put per level cost a WAL append and waits on RocksDB's write path each.
        Each batch also holds its partition's last acknowledged offset: its records were
        taken before they were sent, so they are in this batch or an earlier one."""
        if not self._batched:
            return
        data = self.table.data
        acked = self._acked
        pending, self._unstored = self._unstored, {}
        for partition in acked.keys() - pending.keys():
            pending[partition] = {}
        for partition, records in pending.items():
            batch = WriteBatch(raw_mode=True)
            for raw_key, raw_value in records.items():
                if raw_value is None:
                    batch.delete(raw_key)
                else:
                    batch.put(raw_key, raw_value)
            offset = acked.pop(partition, None)
            if offset is not None and self._active(partition):
                batch.put(data.offset_key, str(offset).encode())
            elif not records:
                continue  # only the offset of a partition no longer this worker's
            data._db_for_partition(partition).write(batch)

    def _active(self, partition: int) -> bool:
        return TP(self.topic, partition) in self.app.tables.recovery.active_tps  # type: ignore[attr-defined]


    def _queue(self, partition: int, raw_key: bytes, raw_value: bytes | None) -> None:
        records = self._pending.get(partition)
        if records is None:
            records = self._pending[partition] = {}
        records[raw_key] = raw_value
        if self._task is None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.linger, self._start)

    def _start(self) -> None:
        self._timer = None
        if self._task is None and self._pending:
            self._task = asyncio.ensure_future(self._drain())

    async def flush(self, *, until_idle: bool = False) -> None:
        """Until every write made so far is in the producer's batches (which Faust's commit
        flushes in at_least_once): a commit must not pass a level not sent yet. Does not
        wait for the linger, nor, unless ``until_idle``, for writes made after the call
        (under a steady stream the drain never goes idle, and such a commit overran)."""
        if self._timer is not None:
            self._timer.cancel()
        self._start()  # now, not after the linger (and again after a failed drain)
        while until_idle and self._task is not None:
            await asyncio.shield(self._task)
        due = self._taken + (1 if self._pending else 0)  # the round holding the last write
        while self._sent < due and self._task is not None:
            if self._round_sent is None:
                self._round_sent = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._round_sent)
        self.write_store()  # the store up to date at each commit (and before a listing)

    async def _drain(self) -> None:
        try:
            await self.app.maybe_start_producer()
            producer = raw_producer(self.app)
            while self._pending:  # written meanwhile: sent now, behind the batches in flight
                pending, self._pending = self._pending, {}
                self._taken += 1
                self._take(pending)  # at once: no read between the two misses them
                for partition, records in pending.items():
                    await self._send(producer, partition, records)
                self._sent = self._taken
                self._wake_flushes()
        except Exception:  # broad: a failure must not stop later writes; Faust's path logs too
            log.exception("cannot write the changelog %s", self.topic)
        finally:
            self._task = None  # records queued after a failure go with the next write's drain
            self._sent = self._taken  # a failed round is not waited for (it is logged)
            self._wake_flushes()

    def _wake_flushes(self) -> None:
        if self._round_sent is not None:
            self._round_sent.set_result(None)
            self._round_sent = None

    async def _send(self, producer: Any, partition: int,
                    records: dict[bytes, bytes | None]) -> None:
        batch, count = producer.create_batch(), 0
        for raw_key, raw_value in records.items():
            if batch.append(key=raw_key, value=raw_value, timestamp=None) is None:
                await self._send_batch(producer, batch, partition, count)  # full
                batch, count = producer.create_batch(), 0
                batch.append(key=raw_key, value=raw_value, timestamp=None)
            count += 1
        if count:
            await self._send_batch(producer, batch, partition, count)

    async def _send_batch(self, producer: Any, batch: Any, partition: int, count: int) -> None:
        future = await producer.send_batch(batch, self.topic, partition=partition)
        self.records += count
        self.batches += 1
        tp = TP(self.topic, partition)

        def persisted(done: asyncio.Future[Any]) -> None:
            if done.cancelled() or done.exception() is not None:
                log.warning("changelog %s[%d]: %d records not acknowledged: %r", self.topic,
                            partition, count, None if done.cancelled() else done.exception())
                return
            last = done.result().offset + count - 1
            if self._batched:  # with the partition's next write batch (or at a revocation)
                if last > self._acked.get(partition, -1):
                    self._acked[partition] = last
            else:
                persist_changelog_offset(self.app, self.table, tp, last)

        future.add_done_callback(persisted)


def persist_changelog_offset(app: AppT, table: Any, tp: TP, offset: int) -> None:
    """What Faust's table path does when a changelog record is acknowledged: the store holds
    the partition up to ``offset``, so a restore starts after it. Only while this worker is
    active for ``tp`` (a revoked partition's db is closed, and another worker writes it)."""
    if tp in app.tables.recovery.active_tps:  # type: ignore[attr-defined]
        table.data.set_persisted_offset(tp, offset)


def _encodes_bytes_as_they_are(store: Any) -> bool:
    """Whether ``store`` encodes with Faust's own :class:`~faust.stores.base.Store` methods,
    which return a ``bytes`` key or value unchanged (``dumps_key``/``dumps_value`` skip bytes)."""
    kind = type(store)
    return isinstance(store, FaustStore) and kind._encode_key is FaustStore._encode_key \
        and kind._encode_value is FaustStore._encode_value


def _event_partition() -> int:
    """The partition of the event this task is processing (a table is written only in one,
    as on Faust's own path)."""
    event = current_event()
    if event is None:
        raise RuntimeError("a table write outside an event: no partition to write it to")
    partition: int = event.message.partition
    return partition


class _StandIn:
    """What Faust's stores and :func:`_event_partition` read of the current event."""

    def __init__(self, topic: str, partition: int) -> None:
        self.message = SimpleNamespace(topic=topic, partition=partition)


@contextlib.contextmanager
def in_partition(topic: str, partition: int) -> Iterator[None]:
    """Table reads and writes outside an event (a batch's records), as an event of
    ``topic``'s ``partition`` makes them: RocksDB's partition db and the changelog partition
    are ``partition``'s. Synchronous code only: the stand-in is this task's current event
    until the block ends."""
    stand_in = _StandIn(topic, partition)
    token = faust_streams._current_event.set(weakref.ref(stand_in))  # type: ignore[arg-type]
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


def changelog_writer(table: Any) -> ChangelogWriter | None:
    """A :class:`ChangelogWriter` for ``table``, or None if its store is not one whose raw
    writes it knows (RocksDB's are; the in-memory store keeps Faust's path)."""
    if not isinstance(table.data, SerializedStore):
        return None
    writer = ChangelogWriter(table.app, table)
    writers = context_of(table.app).get_or_make(WRITERS, list)
    if not writers:  # once per app: before partitions move, every write in the store and sent
        table.app.on_partitions_revoked.connect(_flush_on_revoke)
    writers.append(writer)
    return writer


async def _flush_on_revoke(app: Any, /, *args: Any, **kwargs: Any) -> None:
    """A rebalance's revocation: the writes waiting for their linger go now (a commit may
    not come first), before Faust closes the revoked partitions' dbs and another worker
    restores their changelog."""
    await flush_changelog_writers(app, until_idle=True)


async def flush_changelog_writers(app: Any, *, until_idle: bool = False) -> None:
    """Before a commit (the seam's consumer): every table write made so far is sent; with
    ``until_idle`` (a revocation), also those made while it waits."""
    context = find_context(app)
    for writer in (context.get(WRITERS) if context is not None else None) or ():
        await writer.flush(until_idle=until_idle)
