"""The one module that touches faust-streaming's (and mode's) private internals.

Everything else in the package uses Faust's public API and calls the functions here when it
needs more. Each patch names the upstream behaviour it works around; :func:`install` puts them on
an app before it starts and checks that the installed faust-streaming is a version they were
tested with (:data:`TESTED_FAUST`).

The patches:

* **Offsets are never committed past a record that was not processed.** Faust treats a jump in a
  partition's offsets as a gap to commit past (transaction markers and compaction make such
  jumps), and a partition that resumes from the wrong position during a rebalance makes the same
  jump (faust-streaming #216). Here a jump is re-read: the partition is sought back to the first
  missing offset, and only if the fresh fetch again starts past it is the range a real gap
  (:class:`OffsetGuard`). Faust's commit rule also lets the commit pass one unacked offset after
  the committed one (``min(acked) - committed > 1``; #312 fixed it with ``> 0``, later releases
  went back, #606 is open); :meth:`_GuardedConsumer._new_offset` stops at the first unacked one.
* **A rebalance does not re-activate a partition early.** Faust clears stream buffers at a
  rebalance but leaves their pending pressure-drop callbacks; the next read of the (empty)
  buffer re-activated the partition while Faust was restoring tables with the flow resumed and
  before it sought the partition to its committed offset. A rate-limited stream fills its buffer,
  so a distributed limiter (whose table needs that restore) made this happen at most rebalances.
* **Table recovery asks the broker where a changelog ends** (robinhood/faust#658): Faust's
  exactly_once recovery took the last stable offset of aiokafka's last fetch, -1 before one, and
  a worker restarting on its own state dir crash-looped (:meth:`_GuardedConsumer.highwaters`).
* **exactly_once**: outputs join their input's transaction; commits happen between events
  (:class:`InputTransactionManager`); internal (control) records and the writes of our own
  tables are sent outside every transaction (:func:`send_control`, :func:`mark_control_topic`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sys
import threading
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.errors import IllegalOperation
from aiokafka.producer.transaction_manager import TransactionState
from aiokafka.structs import RecordMetadata
from faust.sensors import Sensor
from faust.streams import current_event
from faust.transport.consumer import CONSUMER_PARTITIONS_REVOKED, TransactionManager
from faust.types import TP, AppT, Message, StreamT
from faust.types.enums import ProcessingGuarantee
from faust.types.tuples import ack_lock
from faust.utils.functional import consecutive_numbers
from mode import Service, Worker
from mode.utils.futures import notify

from faust_backpressure.config.errors import one_line
from faust_backpressure.errors import BackpressureError

__all__ = [
    "TESTED_FAUST",
    "BatchTap",
    "FaustVersionWarning",
    "InputTransactionManager",
    "OffsetGuard",
    "TransactionLost",
    "check_faust_version",
    "crash_worker",
    "flow_stopped_event",
    "force_metadata_update",
    "install",
    "mark_control_topic",
    "redeliver",
    "refresh_consumer_metadata",
    "send_control",
    "stream_processors",
    "unbounded_stream_buffer",
]

log = logging.getLogger(__name__)


class TransactionLost(BackpressureError, RuntimeError):
    """exactly_once: a partition's transaction broke; its worker stops to read it again."""


#: faust-streaming versions the patches here were tested with: [low, high).
TESTED_FAUST = ((0, 15, 3), (0, 16, 0))


class FaustVersionWarning(UserWarning):
    """The installed faust-streaming is outside the range the seam was tested with."""


def _parse(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_faust_version(installed: str | None = None) -> tuple[int, ...]:
    """Warn (:class:`FaustVersionWarning`) if faust-streaming is not a tested version."""
    if installed is None:
        try:
            installed = version("faust-streaming")
        except PackageNotFoundError:  # e.g. a vendored copy: nothing to compare
            return ()
    found = _parse(installed)
    low, high = TESTED_FAUST
    if not low <= found < high:
        warnings.warn(
            f"faust-backpressure patches Faust internals tested with faust-streaming "
            f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}; found {installed}. "
            "Offsets, rebalances and exactly_once may not be guarded.",
            FaustVersionWarning, stacklevel=2)
    return found


# -- small accessors used by the other layers ---------------------------------------------------


def stream_processors(stream: StreamT[Any]) -> list[Callable[[Any], Any]]:
    """The stream's processor list (Faust has ``add_processor`` but no way to remove one)."""
    processors: list[Callable[[Any], Any]] = stream._processors  # type: ignore[attr-defined]
    return processors


def unbounded_stream_buffer(stream: StreamT[Any], high_water: int, drop_ratio: float) -> None:
    """Make the stream's buffer never *full* (the conductor never awaits room in it) while
    Faust's pressure callbacks still pause its partitions at ``high_water`` and resume them
    at ``drop_ratio`` of it (mode caches both sizes from ``maxsize``)."""
    never_full = 1 << 30
    channel: Any = stream.channel
    if getattr(channel, "_queue", None) is None:
        channel.maxsize = never_full
    queue = channel.queue
    queue._maxsize = never_full
    queue.__dict__["pressure_high_size"] = high_water
    queue.__dict__["pressure_drop_size"] = math.floor(high_water * drop_ratio)


async def redeliver(stream: StreamT[Any], message: Message) -> None:
    """Deliver ``message`` (consumed by another agent) to ``stream`` as the conductor would.

    A keyed limit's deferral agent hands a due record to the limited agent this way: the
    stream decodes it with its own topic's schema, and the record's offset is acked only once
    both the deferral agent and the stream have acked it (the message's refcount). The buffer
    never counts as full (:func:`unbounded_stream_buffer`), so this never blocks.
    """
    channel: Any = stream.channel
    event = await channel.decode(message, propagate=True)
    message.incref()
    channel.queue.put_nowait(event)


def flow_stopped_event(app: AppT) -> asyncio.Event | None:
    """The consumer's "flow stopped" event (set during rebalances and shutdown), if started."""
    consumer = getattr(app, "_consumer", None)
    event: asyncio.Event | None = getattr(consumer, "suspend_flow", None)
    return event


async def refresh_consumer_metadata(app: AppT) -> None:
    """Make the app's own consumer fetch metadata now. A topic the consumer subscribed to
    before it existed is otherwise ignored until the next rebalance or metadata refresh (5 min
    by default); fresh metadata showing its partitions makes the group rejoin and assign it."""
    consumer = getattr(app, "_consumer", None)
    thread = getattr(consumer, "_thread", None)
    if thread is None:
        return
    client = thread._ensure_consumer()._client
    await thread.call_thread(client.force_metadata_update)


def source_backlog(app: AppT, topics: Iterable[str]) -> dict[str, int] | None:
    """This worker's backlog on its assigned partitions of ``topics``: records between the
    last committed (else last read) offset and the high-water mark the consumer's own fetches
    report (no extra Kafka client; 0 for a topic with no partition here). ``None`` before the
    consumer runs."""
    consumer: Any = getattr(app, "_consumer", None)
    if consumer is None:
        return None
    wanted = set(topics)
    out = dict.fromkeys(wanted, 0)
    try:
        assigned = consumer.assignment()
    except Exception:  # not started yet, or stopping
        return None
    committed_offsets = getattr(consumer, "_committed_offset", {})
    read_offsets = getattr(consumer, "_read_offset", {})
    for tp in assigned:
        if tp.topic not in wanted:
            continue
        try:
            high = consumer.highwater(tp)
        except Exception:
            continue
        # Faust keeps the last processed (committed) and last read offsets, not the next ones
        done = committed_offsets.get(tp)
        if done is None:
            done = read_offsets.get(tp)
        if high is None or high < 0:
            continue
        out[tp.topic] += max(0, int(high) - (-1 if done is None else int(done)) - 1)
    return out


async def force_metadata_update(client: Any) -> None:
    """Ask an aiokafka consumer's client for fresh metadata (e.g. topics made since start)."""
    await client._client.force_metadata_update()


# -- control traffic ----------------------------------------------------------------------------

_CONTROL_TOPICS: weakref.WeakKeyDictionary[AppT, set[str]] = weakref.WeakKeyDictionary()


def mark_control_topic(app: AppT, topic: str) -> None:
    """Writes to ``topic`` (e.g. our tables' changelogs) are control state, not event output:
    under exactly_once they are sent outside every transaction (see docs/reliability.md)."""
    _CONTROL_TOPICS.setdefault(app, set()).add(topic)


def is_control_topic(app: AppT, topic: str) -> bool:
    return topic in _CONTROL_TOPICS.get(app, ())


async def send_control(app: AppT, topic: str, key: bytes | None, value: bytes | None, *,
                       headers: Any = None) -> asyncio.Future[Any]:
    """Send an internal record outside any transaction; returns the delivery future.

    Lease requests, grants, commands and pressure samples are control traffic: they must not
    join (or need) the transaction of an input partition, which under exactly_once only the
    partition's owner has. The app's default producer is never transactional.
    """
    await app.maybe_start_producer()
    future: asyncio.Future[Any] = await app.producer.send(  # type: ignore[assignment]
        topic, key, value, None, None, headers)
    return future


# -- offsets: re-read a jump, never commit past an unprocessed record -------------------------


@dataclass
class OffsetGuard:
    """Per partition, the next offset the consumer expects; a record past it is a *jump*.

    A jump is re-read once (``check`` returns the offset to seek back to); a record from a
    fetch made after that seek, past the expected offset, confirms the range as empty (markers,
    compaction, aborted records) and ``check`` returns it as a gap. Pure: no Kafka here.

    Example::

        guard = OffsetGuard()
        guard.reset(tp, 100)
        guard.check(tp, 100, batch=1)      # ACCEPT
        guard.check(tp, 105, batch=1)      # REREAD from 101
        guard.check(tp, 105, batch=2)      # GAP 101..104 confirmed
    """

    expected: dict[TP, int] = field(default_factory=dict)
    #: tp -> the first offset read while nothing of tp was committed: where to re-read from
    origin: dict[TP, int] = field(default_factory=dict)
    #: tp -> (offset sought back to, batch number of the fetch that saw the jump)
    verifying: dict[TP, tuple[int, int]] = field(default_factory=dict)
    rereads: int = 0
    confirmed_gaps: int = 0

    ACCEPT = "accept"
    REREAD = "reread"
    GAP = "gap"

    def reset(self, tp: TP, offset: int | None) -> None:
        """The consumer was sought to ``offset`` (None: unknown, accept what comes)."""
        if offset is None:
            self.expected.pop(tp, None)
        else:
            self.expected[tp] = offset
        pending = self.verifying.get(tp)
        if pending is not None and pending[0] != offset:
            del self.verifying[tp]

    def start(self, tp: TP, offset: int) -> None:
        """The first fetch of ``tp`` since its position was unknown starts at ``offset``."""
        self.expected[tp] = offset
        self.origin.setdefault(tp, offset)

    def forget(self, tps: Iterable[TP]) -> None:
        """``tps`` were revoked. Their origin stays: Faust revokes every partition at each
        rebalance (eager protocol) and a retained one with nothing committed must still be
        re-read from it (an origin of a partition that moved is only used if nothing of it
        was committed in between, and re-reading from it is safe)."""
        for tp in tps:
            self.expected.pop(tp, None)
            self.verifying.pop(tp, None)

    def check(self, tp: TP, offset: int, batch: int) -> tuple[str, int]:
        """``(ACCEPT, offset)``, ``(REREAD, from_offset)`` or ``(GAP, first_missing)``."""
        expected = self.expected.get(tp)
        if expected is None:
            self.origin.setdefault(tp, offset)
        if expected is None or offset == expected:
            self.expected[tp] = offset + 1
            self.verifying.pop(tp, None)
            return self.ACCEPT, offset
        if offset < expected:  # a re-read of what came before: Faust drops or redelivers it
            return self.ACCEPT, offset
        pending = self.verifying.get(tp)
        if pending is not None and pending[0] == expected and batch > pending[1]:
            del self.verifying[tp]
            self.expected[tp] = offset + 1
            self.confirmed_gaps += 1
            return self.GAP, expected
        self.verifying[tp] = (expected, batch)
        self.rereads += 1
        return self.REREAD, expected


class _GuardedConsumer:
    """Consumer mixin (first in the MRO) with the offset and rebalance guards above."""

    app: Any
    flow_active: bool
    _acked: Any
    _acked_index: Any
    _gap: Any
    _committed_offset: Any
    _read_offset: Any
    _buffered_partitions: set[TP]
    _active_partitions: set[TP] | None
    _paused_partitions: set[TP]
    _on_partitions_revoked: Callable[[set[TP]], Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.offset_guard = OffsetGuard()
        self._fetch_batch = 0
        self._guarded_topics: dict[str, bool] = {}  # per record on the hot path: cached
        self._resume_after_seek: set[TP] = set()
        self.revoked_generation = -1  # events fetched in this generation or before are stale
        self._partition_released = asyncio.Event()

    def _guarded(self, topic: str) -> bool:
        guarded = self._guarded_topics.get(topic)
        if guarded is None:
            app = self.app
            guarded = self._guarded_topics[topic] = topic not in app.tables.changelog_topics \
                and bool(app.topics.acks_enabled_for(topic))
        return guarded

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        self._fetch_batch += 1
        batch = self._fetch_batch
        guard = self.offset_guard
        refused: set[TP] = set()
        async for tp, message in super().getmany(timeout):  # type: ignore[misc]
            if tp in refused:
                continue
            if not self._guarded(tp.topic):
                yield tp, message
                continue
            verdict, offset = guard.check(tp, message.offset, batch)
            if verdict == OffsetGuard.REREAD:
                # Nothing after the jump is delivered: fetch again from the first missing.
                refused.add(tp)
                log.info("offset guard: %s jumped from %d to %d; re-reading", tp, offset,
                         message.offset)
                await self.seek(tp, offset)  # type: ignore[attr-defined]
                continue
            if verdict == OffsetGuard.GAP:
                log.info("offset guard: %s has no records in %d..%d (markers or compaction)",
                         tp, offset, message.offset - 1)
                # Exactly the confirmed range (Faust's _add_gap clips it at the committed offset,
                # which would leave that one offset unacked for ever).
                self._gap[tp].addi(offset, message.offset)
                self._gap[tp].merge_overlaps()
            yield tp, message

    async def seek(self, partition: TP, offset: int) -> None:
        await super().seek(partition, offset)  # type: ignore[misc]
        self.offset_guard.reset(partition, offset)

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        """Faust's, except that during a rebalance a stream partition is resumed only once it
        has been sought to its committed offset. Faust resumes stream partitions, then seeks
        them (faust-streaming #216); records fetched in between come from where the last
        generation stopped reading. Under exactly_once an event read there and read again
        after the seek had both outputs committed in one transaction."""
        resumed = set(tps)
        if self.app.rebalancing:
            held = {tp for tp in resumed if self._guarded(tp.topic)}
            self._resume_after_seek |= held
            resumed -= held
        super().resume_partitions(resumed)  # type: ignore[misc]

    async def perform_seek(self) -> None:
        await self._seek_assigned()
        held, self._resume_after_seek = self._resume_after_seek, set()
        super().resume_partitions(held)  # type: ignore[misc]

    async def _seek_assigned(self) -> None:
        await super().perform_seek()  # type: ignore[misc]
        guard = self.offset_guard
        for tp in self.assignment():  # type: ignore[attr-defined]
            position = self._read_offset.get(tp)  # the committed offset (0 included) or None
            if self._committed_offset.get(tp) is None and self._guarded(tp.topic):
                # aiokafka seeks only to committed offsets > 0: a partition with nothing (or
                # 0) committed kept reading where the dropped buffer ended, past records
                # never processed. Re-read from the first record this worker read.
                if position is None:
                    position = guard.origin.get(tp)
                if position is not None:
                    guard.origin[tp] = position
                    await self.seek(tp, position)
                    continue
            guard.reset(tp, position)

    @Service.transitions_to(CONSUMER_PARTITIONS_REVOKED)
    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Faust's, except that the revoked partitions' acks and committed offsets are dropped
        *after* the app's revoke handler, not before it: that handler lets the events in
        progress finish and commits, and without them it could not commit what was acked
        before the rebalance (at most it committed past it, without a committed offset to
        compare with). Under exactly_once those outputs then stayed in the open transaction,
        the events ran again after the rebalance, and both copies were committed together."""
        self._buffered_partitions.clear()  # Faust is about to clear every stream buffer
        for tap in _BATCH_TAPS.get(self.app, {}).values():
            tap.revoke(revoked)
        self._guarded_topics.clear()  # subscriptions may change with the assignment
        self._resume_after_seek.difference_update(revoked)
        self.offset_guard.forget(revoked)
        if self._active_partitions is not None:
            self._active_partitions.difference_update(revoked)
        self._paused_partitions.difference_update(revoked)
        try:
            await self._on_partitions_revoked(revoked)
        finally:
            self.revoked_generation = max(self.revoked_generation,
                                          self.app.consumer_generation_id)
            for tp in revoked:
                self._gap.pop(tp, None)
                self._acked.pop(tp, None)
                self._acked_index.pop(tp, None)
                self._read_offset.pop(tp, None)
                self._committed_offset.pop(tp, None)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        """Where each partition's reading starts is where the broker's first fetch starts
        (Faust drops fetched records of a paused partition, and the rest of a fetch when the
        generation changes: records the guard would otherwise never see).

        Records of a batch source leave the map here, before Faust makes messages of them
        (``docs/batching.md``): they go to the source's :class:`BatchTap`."""
        generation = self.app.consumer_generation_id
        records = await super()._getmany(active_partitions, timeout)  # type: ignore[misc]
        taps = _BATCH_TAPS.get(self.app)
        if taps:
            await self._divert(records, taps, active_partitions, generation)
        guard = self.offset_guard
        for tp, batch in records.items():
            if batch and tp not in guard.expected and self._guarded(tp.topic):
                guard.start(tp, batch[0].offset)
        return records

    async def _divert(self, records: dict[TP, list[Any]], taps: dict[str, BatchTap],
                      active: set[TP] | None, generation: int) -> None:
        """Hand each batch source's fetched chunk to its tap, with the first offset it covers
        (markers before it included), unless Faust would have dropped it: the flow stopped,
        the generation changed or the partition is not active."""
        deliver = (self.flow_active and generation == self.app.consumer_generation_id
                   and not self.app.rebalancing)
        guard = self.offset_guard
        for tp in [tp for tp in records if tp.topic in taps]:
            chunk = records.pop(tp)
            if not (chunk and deliver and (active is None or tp in active
                                           or tp in self._buffered_partitions)):
                continue
            expected = guard.expected.get(tp)
            if expected is None:
                guard.start(tp, chunk[0].offset)
                expected = chunk[0].offset
            chunk = [r for r in chunk if r.offset >= expected]  # re-read: already queued
            if not chunk:
                continue
            first = chunk[0].offset
            if first > expected:  # a jump: re-read once, then it is a gap (markers)
                verdict, offset = guard.check(tp, first, self._fetch_batch)
                if verdict == OffsetGuard.REREAD:
                    log.info("offset guard: %s jumped from %d to %d; re-reading", tp, offset,
                             first)
                    await self.seek(tp, offset)
                    continue
            guard.verifying.pop(tp, None)
            guard.expected[tp] = chunk[-1].offset + 1
            self._read_offset[tp] = chunk[-1].offset
            # Faust's TP: equal to aiokafka's TopicPartition, but Faust asserts its type
            taps[tp.topic].divert(TP(tp.topic, tp.partition), chunk, expected, generation)

    async def wait_empty(self) -> None:
        """Faust's, after the batches in progress have finished (or given up: then their
        offsets stay unacked and they are read again)."""
        for tap in list(_BATCH_TAPS.get(self.app, {}).values()):
            await tap.wait_idle()
        await super().wait_empty()  # type: ignore[misc]

    async def highwaters(self, *partitions: TP) -> dict[TP, int]:
        """Each partition's end as the broker says it (the last stable offset under
        read_committed). Faust's exactly_once answer is the last stable offset of aiokafka's
        last fetch of the partition: none (-1) before one, stale after. Table recovery
        compares it with the offset persisted in RocksDB, so a worker restarting on its own
        state dir raised ``ConsistencyError`` and crash-looped (robinhood/faust#658)."""
        thread: Any = self._thread  # type: ignore[attr-defined]

        async def ask_broker() -> dict[TP, int]:
            ends = await thread._ensure_consumer().end_offsets(
                [TopicPartition(tp.topic, tp.partition) for tp in partitions])
            return {TP(tp.topic, tp.partition): offset for tp, offset in ends.items()}

        return await thread.call_thread(ask_broker)  # type: ignore[no-any-return]

    def is_stale(self, message: Message) -> bool:
        """Fetched before the last revocation, whose handler committed what had finished:
        under exactly_once its outputs are dropped (:class:`InputTransactionManager`) and it is
        read again from its partition's committed offset."""
        generation = message.generation_id
        return generation is not None and generation <= self.revoked_generation

    async def _wait_next_records(self, timeout: float) -> Any:
        """Faust's; but when batch queues hold back every partition, the fetcher waits for
        the first one released instead of Faust's 1 s sleep (a batch pipeline fills its
        queues faster than it empties them: every partition was held at once, often)."""
        if (self.flow_active and _BATCH_TAPS.get(self.app) and self._buffered_partitions
                and not self._get_active_partitions()):  # type: ignore[attr-defined]
            released = self._partition_released
            released.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(released.wait(), 1.0)
        return await super()._wait_next_records(timeout)  # type: ignore[misc]

    def on_buffer_full(self, tp: TP) -> None:
        if self.app.rebalancing:  # partitions are paused; Faust resumes them after seeking
            return
        super().on_buffer_full(tp)  # type: ignore[misc]

    def on_buffer_drop(self, tp: TP) -> None:
        if self.app.rebalancing:  # a stale callback of a buffer Faust cleared: not now
            self._buffered_partitions.discard(tp)
            return
        super().on_buffer_drop(tp)  # type: ignore[misc]
        self._partition_released.set()

    def _new_offset(self, tp: TP) -> int | None:
        """Faust's rule, except that the commit stops at the first offset not acked (Faust
        lets it pass one unacked offset after the committed one)."""
        acked = self._acked[tp]
        if not acked:
            return None
        max_offset = max(acked)
        gaps = self._gap[tp]
        if gaps:
            candidates = sorted(gaps.overlap(0, max_offset), key=lambda x: x.begin)
            if candidates:
                filled: list[int] = []
                for entry in candidates:
                    filled.extend(range(entry.begin, entry.end))
                acked.extend(filled)
                gaps.chop(0, max(filled[-1], max_offset + 1))
        acked.sort()
        committed = self._committed_offset[tp]
        if committed is None:  # nothing committed yet: the first offset read must come first
            committed = self.offset_guard.origin.get(tp)
        if committed is not None and acked[0] > committed:
            return None
        batch = next(consecutive_numbers(acked))
        acked[: len(batch)] = []
        self._acked_index[tp].difference_update(batch)
        return int(batch[-1]) + 1


# -- exactly_once ------------------------------------------------------------------------------


class InputTransactionManager(TransactionManager):
    """A Faust transaction manager that keeps each event's outputs with its offset.

    Faust names an output's transaction after the partition the *output* lands on, known only
    for subscribed topics, so outputs to a sink the app does not consume were sent outside any
    transaction. Here every output made while processing an event goes into the transaction of
    that event's partition, where its offset commits. Faust also takes the offsets to commit
    while agents keep running: an event that has sent an output but is not finished had its
    output committed without its offset. A commit here first lets events that already wrote
    finish and holds back the first output of any other event (Kafka Streams' rule: commit
    between records). Writes to control topics go outside every transaction.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writers: set[Message] = set()  # sent outputs, not acked yet
        self._writer_acked = asyncio.Event()
        self._commit_done: asyncio.Event | None = None  # set while a commit runs
        self.dropped_outputs = 0
        self.batch_writers = 0  # batches (docs/batching.md) that have sent and not acked
        self.transaction_lost: TransactionLost | None = None  # set once: the worker stops
        self.transactions_begun_again = 0

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, timestamp: float | None, headers: Any, *,
                   transactional_id: str | None = None) -> Any:
        if is_control_topic(self.app, topic):
            return await self.producer.send(topic, key, value, partition, timestamp, headers)
        event = current_event()
        if event is not None:
            message = event.message
            try:
                group = self.app.assignor.group_for_topic(message.tp.topic)
            except KeyError:  # not from a subscribed topic (e.g. a channel): Faust's rule
                pass
            else:
                if self._is_stale(message):
                    return self._dropped(topic, partition, message)
                tid = f"{self.app.conf.id}-{group}-{message.tp.partition}"
                if message not in self._writers:
                    while self._commit_done is not None:  # into the next transaction
                        await self._commit_done.wait()
                    if not message.acked:
                        self._writers.add(message)
                if await self.open_transaction(tid) is None:
                    await asyncio.get_running_loop().create_future()  # the worker stops
                return await self.producer.send(
                    topic, key, value, partition, timestamp, headers, transactional_id=tid)
        return await super().send(topic, key, value, partition, timestamp, headers,
                                  transactional_id=transactional_id)

    # A transaction can break under Faust without anyone noticing: aiokafka's sender dies on an
    # error it does not expect (aiokafka #1004, seen after a broker outage), leaving the
    # producer's transaction in an error state; Faust's commit then fails between its commit
    # and its begin, and its begin (at a rebalance) logs and swallows a failure to start a
    # producer. Events kept failing "Can't send messages while not in transaction", their
    # partitions stalled. A transaction that only was not begun is begun; one that broke lost
    # the outputs of events whose offsets Faust has acked, so they must be read again from
    # the committed offsets: the worker stops (Kafka Streams closes such tasks and rejoins).

    async def open_transaction(self, tid: str) -> Any:
        """The aiokafka producer of ``tid``, in a transaction; None if it broke (the worker
        is then stopping: see above)."""
        faust_producer: Any = self.producer
        producers = faust_producer._transaction_producers
        if self.transaction_lost is not None:
            return None
        if tid not in producers:  # Faust's begin at the last rebalance failed: start it again
            await self.producer.begin_transaction(tid)
            if tid not in producers:
                self.lose_transactions(f"the transactional producer {tid} could not start")
                return None
        producer = producers[tid]
        txn = producer._txn_manager
        if txn.is_in_transaction():
            return producer
        async with faust_producer._trn_locks[tid]:  # a commit holds it from commit to begin
            sender = producer._sender.sender_task
            if txn.is_in_transaction():
                return producer
            if txn.state is not TransactionState.READY or sender is None or sender.done():
                self.lose_transactions(f"the transaction {tid} broke (state {txn.state.name})")
                return None
            producer.begin_transaction()
            self.transactions_begun_again += 1
        return producer

    def lose_transactions(self, why: str) -> None:
        """Stop the worker, committing nothing more: see :meth:`open_transaction`."""
        if self.transaction_lost is None:
            self.transaction_lost = TransactionLost(
                f"{why}: its events' outputs are aborted with it, so the worker stops and "
                "their partitions are read again from the last committed offsets")
            crash_worker(self.app, self.transaction_lost)

    async def commit(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        if self.transaction_lost is not None:
            return False
        try:
            return bool(await super().commit(offsets,
                                             start_new_transaction=start_new_transaction))
        except (OSError, RuntimeError, IllegalOperation) as error:  # KafkaError: RuntimeError
            self.lose_transactions(f"a transaction's commit failed ({one_line(error)})")
            return False

    def _is_stale(self, message: Message) -> bool:
        is_stale = getattr(self.consumer, "is_stale", None)
        return is_stale is not None and bool(is_stale(message))

    def _dropped(self, topic: str, partition: int | None, message: Message) -> asyncio.Future[Any]:
        """An output of an event fetched before the last revocation goes nowhere: the event
        is read again (its ack does not count) and writes it then. Sent, it joined the next
        generation's transaction and was committed twice (Kafka fences such a zombie's
        producer; Faust keeps one producer per partition across a rebalance)."""
        self.dropped_outputs += 1
        # Acked now, so that its ack (Faust's compiled stream inlines it, past Consumer.ack)
        # does not record the offset: the commit stops before it.
        message.acked = True
        consumer: Any = self.consumer
        consumer._unacked_messages.discard(message)
        log.info("dropped an output of %s@%d, fetched before the rebalance: it is read again",
                 message.tp, message.offset)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        tp = TopicPartition(topic, -1 if partition is None else partition)
        done.set_result(RecordMetadata(topic, tp.partition, tp, -1, -1, -1, -1))
        return done

    @contextlib.asynccontextmanager
    async def batch_writer(self) -> AsyncIterator[None]:
        """A batch writes into its partition's transaction: no commit meanwhile, and none
        running when it starts (its outputs would join a transaction committed without them)."""
        while self._commit_done is not None:
            await self._commit_done.wait()
        self.batch_writers += 1
        try:
            yield
        finally:
            self.batch_writers -= 1
            self._writer_acked.set()

    def on_ack(self, message: Message) -> None:
        """Every stream is done with ``message``: it has finished writing."""
        if message in self._writers:
            self._writers.discard(message)
            self._writer_acked.set()

    @contextlib.asynccontextmanager
    async def commit_point(self, timeout: float) -> AsyncIterator[None]:
        """Wait (at most ``timeout`` s) until no event is half-written, and keep it so."""
        if self._commit_done is not None:  # nested: the outer commit holds the point
            yield
            return
        done = self._commit_done = asyncio.Event()
        try:
            await self._wait_writers_acked(timeout)
            yield
        finally:
            self._commit_done = None
            done.set()

    async def _wait_writers_acked(self, timeout: float) -> None:
        event = current_event()  # a commit from inside an agent cannot wait for its own event
        own = {event.message} if event is not None else set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            # Acked without a notice, or fetched before a rebalance (Faust drops those events;
            # their outputs were in a transaction that is aborted): nothing to wait for.
            generation = self.app.consumer_generation_id
            self._writers = {m for m in self._writers
                             if not m.acked and m.generation_id in (None, generation)}
            if ((not self._writers - own and not self.batch_writers)
                    or self.transaction_lost is not None):
                return
            self._writer_acked.clear()
            try:
                await asyncio.wait_for(self._writer_acked.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                log.warning("committing while %d event(s) that sent outputs are still "
                            "running (> %.1f s): their outputs may repeat after a crash",
                            len(self._writers - own), timeout)
                return


class _CommitBetweenEvents:
    """Consumer mixin (exactly_once): a commit takes its offsets at a commit point."""

    transactions: Any
    commit_interval: float

    async def force_commit(self, *args: Any, **kwargs: Any) -> bool:
        manager = self.transactions
        if not isinstance(manager, InputTransactionManager):
            return await super().force_commit(*args, **kwargs)  # type: ignore[misc, no-any-return]
        async with manager.commit_point(timeout=max(self.commit_interval, 1.0)):
            return await super().force_commit(*args, **kwargs)  # type: ignore[misc, no-any-return]


class _WriterAcks(Sensor):
    """Tells the manager when an event has finished (Faust's compiled stream acks inline, so
    ``Consumer.ack`` is not always called; the sensor hook is)."""

    def __init__(self, app: AppT) -> None:
        super().__init__()
        self._app = app

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        manager = self._app.consumer.transactions
        if isinstance(manager, InputTransactionManager):
            manager.on_ack(message)


# -- batch sources (docs/batching.md) -----------------------------------------------------------


class BatchTap(Protocol):
    """Where a batch source's fetched records go instead of Faust's per-message path."""

    def divert(self, tp: TP, records: list[Any], first: int, generation: int) -> None:
        """``records`` of ``tp`` (aiokafka ``ConsumerRecord``s) cover offsets from ``first``
        (records before the first one are markers or compacted away) to the last one's."""

    def revoke(self, tps: set[TP]) -> None:
        """``tps`` are being revoked: drop what was not started."""

    async def wait_idle(self) -> None:
        """Return once no batch is in progress (or after a bounded wait)."""


_BATCH_TAPS: weakref.WeakKeyDictionary[AppT, dict[str, BatchTap]] = weakref.WeakKeyDictionary()


def register_batch_tap(app: AppT, topic: str, tap: BatchTap) -> None:
    """Divert ``topic``'s records to ``tap`` from now on (before the worker starts)."""
    taps = _BATCH_TAPS.setdefault(app, {})
    if topic in taps and taps[topic] is not tap:
        raise ValueError(f"topic {topic!r} already feeds a batch pipeline")
    taps[topic] = tap


def hold_partition(app: AppT, tp: TP) -> None:
    """Stop fetching ``tp`` (its tap is full), with Faust's own buffer-full callback."""
    app.consumer.on_buffer_full(tp)


def release_partition(app: AppT, tp: TP) -> None:
    app.consumer.on_buffer_drop(tp)


def consumer_generation(app: AppT) -> int:
    return int(app.consumer_generation_id)


def is_stale_generation(app: AppT, generation: int) -> bool:
    """Records fetched in ``generation`` were fetched before the last revocation."""
    consumer: Any = getattr(app, "_consumer", None)
    return consumer is not None and generation <= getattr(consumer, "revoked_generation", -1)


def ack_offsets(app: AppT, tp: TP, first: int, last: int, generation: int) -> bool:
    """Mark ``first..last`` of ``tp`` processed in Faust's bookkeeping, as ``Consumer.ack``
    does per message; the guarded commit then commits them once nothing before is missing.
    False (nothing acked) if they were fetched before the last revocation."""
    consumer: Any = app.consumer
    if is_stale_generation(app, generation):
        return False
    # aiokafka's TopicPartition, as Faust's messages carry (equal to Faust's TP, but
    # send_offsets_to_transaction refuses any other type among the offsets' keys)
    tp = TopicPartition(tp.topic, tp.partition)  # type: ignore[assignment]
    with ack_lock:
        committed = consumer._committed_offset[tp]
        start = first if committed is None else max(first, committed)
        index = consumer._acked_index[tp]
        new = [offset for offset in range(start, last + 1) if offset not in index]
        index.update(new)
        consumer._acked[tp].extend(new)
        consumer._n_acked += len(new)
        notify(consumer._waiting_for_ack)
    return True


def raw_producer(app: AppT) -> Any:
    """The aiokafka producer a batch sends with (at_least_once)."""
    producer: Any = app.producer
    return producer._producer


async def transaction_producer(app: AppT, tp: TP) -> Any:
    """exactly_once: the aiokafka producer of ``tp``'s transaction, in a transaction; None if
    there is none (fenced, stopped, broken: :meth:`InputTransactionManager.open_transaction`)."""
    manager = app.consumer.transactions
    if not isinstance(manager, InputTransactionManager):
        return None
    return await manager.open_transaction(transactional_id(app, tp))


def transactional_id(app: AppT, tp: TP) -> str:
    return f"{app.conf.id}-{app.assignor.group_for_topic(tp.topic)}-{tp.partition}"


def batch_writer(app: AppT) -> contextlib.AbstractAsyncContextManager[None]:
    """exactly_once: hold commits while a batch writes (:meth:`InputTransactionManager
    .batch_writer`)."""
    manager = app.consumer.transactions
    if not isinstance(manager, InputTransactionManager):
        return contextlib.nullcontext()
    return manager.batch_writer()


async def commit_through(app: AppT, tp: TP, offset: int, timeout: float) -> bool:
    """Commit ``tp`` up to ``offset`` (acked before) through Faust's commit path; under
    exactly_once that commits ``tp``'s transaction. Another commit in flight (Faust's single
    flight) may take ours or not: retried until done, ``timeout`` at most."""
    consumer: Any = app.consumer
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        committed = consumer._committed_offset[tp]
        if committed is not None and committed >= offset:
            return True
        if loop.time() > deadline or tp not in consumer.assignment():
            return False
        await consumer.commit({tp})


# -- crashing --------------------------------------------------------------------------------------

#: Seconds a crashed worker may take to stop on its own before its process is ended.
CRASH_GRACE = 15.0


def crash_worker(app: AppT, error: BaseException, grace: float = CRASH_GRACE
                 ) -> asyncio.Future[Any]:
    """Crash the app with ``error``, shown as one line on stderr (as a bad setting is); under
    ``faust worker`` the process exits with code 1.

    ``app.crash`` alone did not always end the worker (about one run in two): the crash stops
    the consumer's thread too, and the failed agent's error handler (``on_task_error``) commits
    through that thread, waiting for ever (a task dump of a worker that stayed up). So past
    ``grace`` seconds a timer thread ends the process: offsets not committed are read again."""
    _to_stderr(one_line(error))
    if any(isinstance(node.data, Worker) for node in app.beacon.walk()):
        timer = threading.Timer(grace, _end_process, (error, grace))
        timer.daemon = True  # a worker that stopped in time exits without waiting for it
        timer.start()
    return asyncio.ensure_future(app.crash(error))


def _to_stderr(line: str) -> None:
    # the real stderr: a worker logs what is printed to sys.stderr, maybe into a log file
    print(line, file=sys.__stderr__ or sys.stderr, flush=True)


def _end_process(error: BaseException, grace: float) -> None:
    _to_stderr(f"{one_line(error)} (the worker did not stop within {grace:.0f} s: exiting)")
    os._exit(1)


# -- installing ----------------------------------------------------------------------------------

_INSTALLED: weakref.WeakSet[AppT] = weakref.WeakSet()


def install(app: AppT) -> None:
    """Put the patches on ``app`` (idempotent; before the app starts its consumer)."""
    if app in _INSTALLED:
        return
    check_faust_version()
    if getattr(app, "_consumer", None) is not None:
        warnings.warn(f"faust-backpressure installed on app {app.conf.id!r} after its consumer "
                      "was made: offsets and rebalances are not guarded", stacklevel=2)
    transport: Any = app.transport
    mixins: list[type] = [_GuardedConsumer]
    guarantee: Any = app.conf.processing_guarantee  # typed as the enum class by Faust
    exactly_once = guarantee == ProcessingGuarantee.EXACTLY_ONCE
    if exactly_once:
        transport.TransactionManager = InputTransactionManager
        mixins.insert(0, _CommitBetweenEvents)
    base = transport.Consumer
    missing = tuple(m for m in mixins if not issubclass(base, m))
    if missing:
        transport.Consumer = type(f"Guarded{base.__name__}", (*missing, base), {})
    if exactly_once:
        app.sensors.add(_WriterAcks(app))
    _INSTALLED.add(app)
