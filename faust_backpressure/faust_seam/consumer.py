"""The guarded consumer: offsets are never committed past a record that was not processed, a
rebalance does not re-activate a partition early, table recovery asks the broker where a
changelog ends, and batch sources' records are diverted to their taps."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from aiokafka import TopicPartition
from faust.transport.consumer import CONSUMER_PARTITIONS_REVOKED
from faust.types import TP, Message
from faust.utils.functional import consecutive_numbers
from faust.utils.tracing import traced_from_parent_span
from mode import Service

from faust_backpressure.faust_seam.batches import BatchTap, batch_taps
from faust_backpressure.faust_seam.buffered_writes import send_table_writes
from faust_backpressure.faust_seam.fetch_view import fetch_filter
from faust_backpressure.faust_seam.offset_guard import OffsetGuard

#: The seam's one logger, named as when the seam was one module.
log = logging.getLogger("faust_backpressure.faust_seam")

#: An app with a batch source fetches with this long-poll wait (ms), not Faust's 1,500: see
#: :meth:`_GuardedConsumer._cap_fetch_wait`.
BATCH_FETCH_MAX_WAIT_MS = 100
#: Seconds a fetch waits for records while a batch source's partitions are held back.
HELD_FETCH_TIMEOUT = 0.01


class _GuardedConsumer:
    """Consumer mixin (first in the MRO): the offset guard (``offset_guard.py``) and the
    rebalance guards."""

    app: Any
    flow_active: bool
    should_stop: bool
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
        self._guarded_topics: dict[str, bool] = {}  # per record on the hot path: cached
        self._resume_after_seek: set[TP] = set()  # held until sought
        self._resume_with_flow: set[TP] = set()  # sought, held until the flow resumes
        self._fetched_while_stopped = False  # Faust's getmany is about to seek: skip it
        self.revoked_generation = -1  # events fetched in this generation or before are stale
        self._partition_released = asyncio.Event()

    async def _commit_offsets(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        if not await send_table_writes(self.app):  # the writes behind these offsets first
            return False
        return await super()._commit_offsets(  # type: ignore[misc, no-any-return]
            offsets, start_new_transaction=start_new_transaction)

    def _guarded(self, topic: str) -> bool:
        guarded = self._guarded_topics.get(topic)
        if guarded is None:
            app = self.app
            guarded = self._guarded_topics[topic] = topic not in app.tables.changelog_topics \
                and bool(app.topics.acks_enabled_for(topic))
        return guarded

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        guard = self.offset_guard
        expected, verifying, empty = guard.expected, guard.verifying, guard.empty
        refused: set[TP] = set()
        async for tp, message in super().getmany(timeout):  # type: ignore[misc]
            if tp in refused:
                continue
            if not self._guarded(tp.topic):
                yield tp, message
                continue
            if expected.get(tp) == message.offset:  # guard.check's ACCEPT, inline (per record)
                expected[tp] = message.offset + 1
                if verifying:
                    verifying.pop(tp, None)
                if empty:
                    empty.pop(tp, None)
                yield tp, message
                continue
            verdict, offset = guard.check(tp, message.offset)
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
        self._reading_from(partition, offset)

    def _reading_from(self, tp: TP, offset: int | None) -> None:
        """``tp`` is read from ``offset`` on: the guard expects it, and a batch source's tap
        drops what it holds from there on and has not started (delivered again)."""
        self.offset_guard.reset(tp, offset)
        tap = batch_taps(self.app).get(tp.topic)
        if tap is not None and offset is not None:
            tap.sought(TP(tp.topic, tp.partition), offset)

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        """Faust's, except that during a rebalance a stream partition is resumed only once it
        has been sought to its committed offset and the flow resumes (:meth:`perform_seek`).
        Faust resumes stream partitions, then seeks them (faust-streaming #216): records
        fetched in between come from where the last generation stopped, and are read twice."""
        resumed = set(tps)
        if self.app.rebalancing:
            held = {tp for tp in resumed if self._guarded(tp.topic)}
            self._resume_after_seek |= held
            resumed -= held
        super().resume_partitions(resumed)  # type: ignore[misc]

    async def perform_seek(self) -> None:
        """Faust's, with two changes at a rebalance (docs/reliability.md, "Two seeks at a
        rebalance").

        The seek Faust's getmany makes when a fetch returns with the flow stopped is skipped:
        that fetch began before a revocation, and its seek lands after the recovery's own,
        sending partitions back over events in progress. The dropped records are read again
        anyway: the new assignment reads from the committed offsets, and the guard re-reads
        a jump.

        A partition sought during a rebalance is resumed when the flow resumes, not here:
        Faust's recovery clears the stream queues after this seek, and records fetched in
        between would be lost with the guard already past them."""
        if self._fetched_while_stopped:
            self._fetched_while_stopped = False
            log.info("a fetch returned with the flow stopped (a rebalance): its records are "
                     "dropped and read again; Faust's seek to the committed offsets skipped")
            return
        await self._seek_assigned()
        held, self._resume_after_seek = self._resume_after_seek, set()
        if self.app.rebalancing:
            self._resume_with_flow |= held
        else:
            super().resume_partitions(held)  # type: ignore[misc]

    def resume_flow(self) -> None:
        super().resume_flow()  # type: ignore[misc]
        held, self._resume_with_flow = self._resume_with_flow, set()
        if held:
            super().resume_partitions(held)  # type: ignore[misc]

    async def _seek_assigned(self) -> None:
        guard = self.offset_guard
        committed_here = dict(self._committed_offset)  # this generation's (revoke drops them)
        await super().perform_seek()  # type: ignore[misc]
        for tp in self.assignment():  # type: ignore[attr-defined]
            position = self._read_offset.get(tp)  # the committed offset (0 included) or None
            guarded = self._guarded(tp.topic)
            if guarded:  # where reading starts, logged: the evidence if copies recur
                log.info("offset guard: %s assigned: committed %s, origin %s, started %s", tp,
                         position, guard.origin.get(tp), guard.started.get(tp))
            mine = committed_here.get(tp)
            if guarded and mine is not None and (position is None or position < mine):
                # a second seek read an offset older than one committed here (the commit not
                # yet stable: aiokafka cannot ask for stable offsets, KIP-447): not re-read
                self._committed_offset[tp] = mine
                await self.seek(tp, self._unprocessed_from(tp, mine))
                continue
            if guarded and self._committed_offset.get(tp) is None:
                # aiokafka seeks only to committed offsets > 0: with nothing (or 0) committed it
                # read on past records never processed; re-read from the first one read here.
                if position is None:
                    position = guard.origin.get(tp)
                if position is not None:
                    guard.origin[tp] = position
                    if guard.started.get(tp) != position:  # else read from there already
                        await self.seek(tp, self._unprocessed_from(tp, position))
                    continue
            if position is not None and guard.started.get(tp) == position:
                continue  # read from there since the flow resumed: a reset re-read them
            if position is not None and (first := self._unprocessed_from(tp, position)) > position:
                await self.seek(tp, first)
                continue
            self._reading_from(tp, position)  # Faust's seek read from there again

    def _unprocessed_from(self, tp: TP, offset: int) -> int:
        """The first offset from ``offset`` on that was not processed in this generation
        (acked, or a confirmed gap): a second seek in one generation does not read processed
        records again, and reads everything else again (docs/reliability.md, "Exactly_once
        copies after a second seek")."""
        acked, gaps = self._acked_index.get(tp), self._gap.get(tp)
        while (acked and offset in acked) or (gaps and gaps.overlaps(offset)):
            offset += 1
        return offset

    @Service.transitions_to(CONSUMER_PARTITIONS_REVOKED)
    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Faust's, except that the revoked partitions' acks and committed offsets are dropped
        *after* the app's revoke handler, not before it: that handler lets the events in
        progress finish and commits, which needs them (without them, exactly_once outputs
        acked before the rebalance were committed twice; docs/reliability.md)."""
        self._buffered_partitions.clear()  # Faust is about to clear every stream buffer
        for tap in batch_taps(self.app).values():
            tap.revoke(revoked)
        self._guarded_topics.clear()  # subscriptions may change with the assignment
        self._resume_after_seek.difference_update(revoked)
        self._resume_with_flow.difference_update(revoked)
        self.offset_guard.forget(revoked)
        if self._active_partitions is not None:
            self._active_partitions.difference_update(revoked)
        self._paused_partitions.difference_update(revoked)
        # Faust's rebalancing trace span, as its own revoke handler opens it
        span = self.app._start_span_from_rebalancing("on_partitions_revoked")  # type: ignore[attr-defined]
        try:
            with span:
                await traced_from_parent_span(span)(
                    self._on_partitions_revoked, partitions=revoked)(revoked)
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
        taps = batch_taps(self.app)
        if taps:
            self._cap_fetch_wait()
        # never "every partition", as aiokafka reads an empty set (fetch_view.py)
        records = await super()._getmany(fetch_filter(active_partitions), timeout)  # type: ignore[misc]
        guard = self.offset_guard
        if guard.verifying:  # what the broker answered a re-read, before anything is dropped
            for tp, batch in records.items():
                if batch and tp in guard.verifying:
                    guard.fetched(tp, batch[0].offset)
        if taps:
            await self._divert(records, taps, active_partitions, generation)
        for tp, batch in records.items():
            if batch and tp not in guard.expected and self._guarded(tp.topic):
                guard.start(tp, batch[0].offset)
        return records

    def _cap_fetch_wait(self) -> None:
        """aiokafka fetches from a node one request at a time and leaves out the partitions
        whose records it still holds. With every batch source partition in hand (or held
        back), the request holds only idle partitions and the broker keeps it open for
        Faust's fixed 1,500 ms long poll, while the drained source partitions wait. Capped at
        :data:`BATCH_FETCH_MAX_WAIT_MS`; an idle worker fetches that much more often
        (docs/batching.md, "What is built")."""
        thread: Any = getattr(self, "_thread", None)
        fetcher: Any = getattr(getattr(thread, "_consumer", None), "_fetcher", None)
        if fetcher is not None and fetcher._fetch_max_wait_ms > BATCH_FETCH_MAX_WAIT_MS:
            fetcher._fetch_max_wait_ms = BATCH_FETCH_MAX_WAIT_MS

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
                if chunk:
                    await self._read_again(tp, chunk[0].offset)
                continue
            expected = guard.expected.get(tp)
            if expected is None:
                guard.start(tp, chunk[0].offset)
                expected = chunk[0].offset
            chunk = [r for r in chunk if r.offset >= expected]  # re-read: already queued
            if not chunk:
                log.debug("batch source %s: a fetch below %d, already queued", tp, expected)
                continue
            first = chunk[0].offset
            if first > expected:  # a jump: re-read once, then it is a gap (markers)
                verdict, offset = guard.check(tp, first)
                if verdict == OffsetGuard.REREAD:
                    log.info("offset guard: %s jumped from %d to %d; re-reading", tp, offset,
                             first)
                    await self.seek(tp, offset)
                    continue
            if first > expected:
                log.info("offset guard: %s has no records in %d..%d (markers or compaction)",
                         tp, expected, first - 1)
            guard.verifying.pop(tp, None)
            guard.expected[tp] = chunk[-1].offset + 1
            self._read_offset[tp] = chunk[-1].offset
            # Faust's TP: equal to aiokafka's TopicPartition, but Faust asserts its type
            taps[tp.topic].divert(TP(tp.topic, tp.partition), chunk, expected, generation)

    async def _read_again(self, tp: TP, first: int) -> None:
        """A batch source's chunk from ``first`` was dropped: seek back now. Left to the
        guard, the re-read waits for a later record to show the jump: a partition's last
        records would stay unread until more came."""
        expected = self.offset_guard.expected.get(tp)
        offset = first if expected is None else min(expected, first)
        if tp not in self.assignment():  # type: ignore[attr-defined]
            return  # revoked: its new owner reads it from the committed offset
        log.debug("batch source %s: a fetch from %d dropped; reading again from %d", tp, first,
                  offset)
        await self.seek(tp, offset)

    async def wait_empty(self) -> None:
        """Faust's, after the batches in progress have finished (or given up: then their
        offsets stay unacked and they are read again)."""
        for tap in list(batch_taps(self.app).values()):
            await tap.wait_idle()
        await super().wait_empty()  # type: ignore[misc]

    async def highwaters(self, *partitions: TP) -> dict[TP, int]:
        """Each partition's end as the broker says it (the last stable offset under
        read_committed). Faust's exactly_once answer comes from aiokafka's last fetch (-1
        before one), and table recovery then raises ``ConsistencyError`` for a worker
        restarting on its own state dir (robinhood/faust#658)."""
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
        """Faust's; but while batch queues hold partitions back, the fetcher waits for the
        first one released instead of Faust's 1 s sleep when none is active, and a fetch of
        the partitions still active waits :data:`HELD_FETCH_TIMEOUT` at most, not
        ``timeout``: a release does not wake aiokafka's wait, and the released partitions'
        records, already in its buffer, would stay unread until it ended (docs/batching.md,
        "What is built")."""
        if self.flow_active and self._buffered_partitions and batch_taps(self.app):
            if not self._get_active_partitions():  # type: ignore[attr-defined]
                released = self._partition_released
                released.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(released.wait(), 1.0)
            timeout = min(timeout, HELD_FETCH_TIMEOUT)
        records, active = await super()._wait_next_records(timeout)  # type: ignore[misc]
        # no await from here to Faust's getmany's seek: the next perform_seek is that one
        self._fetched_while_stopped = (records is not None and not self.flow_active
                                       and not self.should_stop)
        return records, active

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
        lets it pass one unacked offset after the committed one: faust-streaming #312, #606)."""
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
