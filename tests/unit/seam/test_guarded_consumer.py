"""The guarded Faust consumer's bookkeeping, on a real (unstarted) Faust consumer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.types import TP

from faust_backpressure.faust_seam import install
from faust_backpressure.faust_seam.batches import batch_taps, register_batch_tap
from faust_backpressure.faust_seam.consumer import BATCH_FETCH_MAX_WAIT_MS, HELD_FETCH_TIMEOUT

tp = TP("orders", 0)


def _consumer(tmp_path: Path, name: str) -> faust.types.ConsumerT:
    app = faust.App(name, broker="kafka://127.0.0.1:1", datadir=str(tmp_path))
    install(app)
    return app.consumer


def test_the_commit_stops_at_the_first_unacked_offset(tmp_path: Path) -> None:
    consumer = _consumer(tmp_path, "guard-commit")
    consumer._committed_offset[tp] = 100  # next to read: 100 was never processed
    consumer._acked[tp].extend([101, 102])
    # Faust's own rule returns 103 here: it commits past offset 100.
    assert consumer._new_offset(tp) is None
    consumer._acked[tp].append(100)
    assert consumer._new_offset(tp) == 103


def test_a_confirmed_gap_is_committed_past(tmp_path: Path) -> None:
    consumer = _consumer(tmp_path, "guard-gap")
    consumer._committed_offset[tp] = 100
    consumer._gap[tp].addi(100, 102)  # 100, 101: commit markers
    consumer._acked[tp].extend([102, 103])
    assert consumer._new_offset(tp) == 104


def test_a_stale_pressure_drop_does_not_resume_a_partition_during_a_rebalance(
        tmp_path: Path) -> None:
    consumer = _consumer(tmp_path, "guard-drop")
    consumer.app.rebalancing = True
    consumer._set_active_tps({tp})
    consumer.on_buffer_full(tp)  # ignored during a rebalance: Faust has paused it
    consumer.pause_partitions({tp})
    consumer._buffered_partitions.add(tp)  # left over from before the rebalance
    consumer.on_buffer_drop(tp)
    assert tp not in consumer._get_active_partitions()
    assert tp not in consumer._buffered_partitions
    consumer.app.rebalancing = False
    consumer.resume_partitions({tp})  # Faust, after seeking to the committed offset
    assert tp in consumer._get_active_partitions()


def test_with_nothing_committed_the_commit_waits_for_the_first_offset_read(
        tmp_path: Path) -> None:
    # A partition with no committed offset kept reading past a dropped buffer (aiokafka does
    # not seek to "no offset"); Faust then committed past the records it never processed.
    consumer = _consumer(tmp_path, "guard-origin")
    consumer.offset_guard.origin[tp] = 0
    consumer._acked[tp].extend([497, 498])
    assert consumer._committed_offset[tp] is None
    assert consumer._new_offset(tp) is None
    consumer._acked[tp].extend(range(0, 497))
    assert consumer._new_offset(tp) == 499


async def test_the_revoke_handler_still_sees_what_was_acked_before_the_rebalance(
        tmp_path: Path) -> None:
    # Faust drops a revoked partition's acks before the app's handler commits; that commit
    # could then not include events acked before the rebalance.
    consumer = _consumer(tmp_path, "guard-revoke")
    consumer._committed_offset[tp] = 100
    consumer._acked[tp].extend([100, 101, 102])
    seen: list[int | None] = []

    async def app_handler(revoked: set[TP]) -> None:
        seen.append(consumer._new_offset(tp))

    consumer._on_partitions_revoked = app_handler
    await consumer.on_partitions_revoked({tp})
    assert seen == [103]
    assert tp not in consumer._acked and consumer._committed_offset.get(tp) is None


@dataclass
class _Record:
    offset: int


class _Tap:
    def __init__(self) -> None:
        self.chunks: list[tuple[TP, list[int], int]] = []
        self.seeks: list[tuple[TP, int]] = []

    def divert(self, tp: TP, records: list[Any], first: int, generation: int) -> None:
        self.chunks.append((tp, [r.offset for r in records], first))

    def revoke(self, tps: set[TP]) -> None:
        pass

    def sought(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def wait_idle(self) -> None:
        pass


async def test_a_batch_source_chunk_dropped_at_a_rebalance_is_read_again_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fetch that spanned a rebalance returned a partition's last records, from its committed
    # offset: dropped (fetched in the old generation). The guard would see the drop only at
    # the next record, and the tail had none: it stayed unread (the batch SIGKILL test).
    consumer = _consumer(tmp_path, "guard-tail")
    tap = _Tap()
    register_batch_tap(consumer.app, tp.topic, tap)
    sought: list[tuple[TP, int]] = []

    async def transport_seek(partition: TP, offset: int) -> None:  # the broker's side
        sought.append((partition, offset))

    monkeypatch.setattr(consumer, "_seek", transport_seek)
    monkeypatch.setattr(consumer, "assignment", lambda: {tp})
    consumer.flow_active = True
    consumer.offset_guard.reset(tp, 4749)  # the rebalance sought to the committed offset
    consumer.app.consumer_generation_id = 3
    tail = [_Record(offset) for offset in range(4749, 5032)]
    await consumer._divert({tp: list(tail)}, batch_taps(consumer.app), None, 2)
    assert tap.chunks == [] and sought == [(tp, 4749)]
    await consumer._divert({tp: list(tail)}, batch_taps(consumer.app), None, 3)
    assert tap.chunks == [(tp, list(range(4749, 5032)), 4749)]


async def test_a_fetch_while_batch_partitions_are_held_waits_briefly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A release does not wake aiokafka's wait for records of the partitions still active:
    # with Faust's 1 s timeout, the released partitions stayed unread for up to 1 s.
    consumer = _consumer(tmp_path, "guard-held-wait")
    other = TP("ops", 0)
    timeouts: list[float] = []

    async def getmany(active_partitions: Any, timeout: float) -> dict[TP, list[Any]]:
        timeouts.append(timeout)
        return {}

    monkeypatch.setattr(consumer, "_getmany", getmany)
    consumer._set_active_tps({tp, other})
    consumer.flow_active = True
    await consumer._wait_next_records(1.0)  # no batch source: Faust's timeout
    register_batch_tap(consumer.app, tp.topic, _Tap())
    await consumer._wait_next_records(1.0)  # nothing held
    consumer.on_buffer_full(tp)  # the batch queue holds tp back; ``other`` stays active
    await consumer._wait_next_records(1.0)
    assert timeouts == [1.0, 1.0, HELD_FETCH_TIMEOUT]


async def test_an_app_with_a_batch_source_long_polls_briefly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # aiokafka sends one fetch per node at a time, without the partitions whose records it
    # holds: a fetch of idle partitions alone kept the node busy for Faust's 1,500 ms
    # long poll while the batch source's partitions, drained meanwhile, waited.
    consumer: Any = _consumer(tmp_path, "guard-long-poll")
    fetcher = SimpleNamespace(_fetch_max_wait_ms=1500)
    monkeypatch.setattr(consumer, "_thread", SimpleNamespace(
        _consumer=SimpleNamespace(_fetcher=fetcher), getmany=_no_records), raising=False)
    consumer.app.consumer_generation_id = 1
    await consumer._getmany(None, 1.0)
    assert fetcher._fetch_max_wait_ms == 1500  # no batch source: Faust's
    register_batch_tap(consumer.app, tp.topic, _Tap())
    await consumer._getmany(None, 1.0)
    assert fetcher._fetch_max_wait_ms == BATCH_FETCH_MAX_WAIT_MS


async def _no_records(active: Any, timeout: float) -> dict[TP, list[Any]]:
    return {}


async def test_records_read_from_the_committed_offset_during_the_seek_are_not_read_twice(
        tmp_path: Path) -> None:
    """A newly assigned partition delivered records from its committed offset once the flow
    resumed, before or while the seek to that offset asked the broker; the guard, reset to it
    afterwards, took the next record for a jump and re-read them all: delivered twice, and
    under exactly_once both copies committed (the keyed batch SIGKILL test). A partition
    whose records came from elsewhere is still reset (and re-read from the committed offset)."""
    consumer: Any = _consumer(tmp_path, "guard-seek")
    other, early = TP("orders", 1), TP("orders", 2)
    guard = consumer.offset_guard
    consumer.assignment = lambda: {tp, other, early}
    consumer._guarded = lambda topic: True
    guard.forget({tp, other, early})  # the revocation before the assignment
    for offset in range(50, 60):  # delivered before the seek began (the flow had resumed)
        assert guard.check(early, offset)[0] == guard.ACCEPT

    async def seek_to_committed() -> dict[TP, int]:
        for offset in range(12, 37):  # fetched and accepted while the seek waits
            assert guard.check(tp, offset)[0] == guard.ACCEPT
        for offset in range(40, 45):  # from where an older fetch had stopped
            assert guard.check(other, offset)[0] == guard.ACCEPT
        return {tp: 12, other: 30, early: 50}

    consumer.seek_to_committed = seek_to_committed
    await consumer._seek_assigned()
    assert guard.check(tp, 37) == (guard.ACCEPT, 37)  # goes on: no re-read of 12..36
    assert guard.check(early, 60) == (guard.ACCEPT, 60)
    assert guard.expected[other] == 30  # reset: 30..39 never came, they are read
    assert guard.check(other, 45) == (guard.REREAD, 30)


async def test_records_read_from_offset_0_during_the_seek_are_not_read_twice(
        tmp_path: Path) -> None:
    """The same with nothing (or 0) committed, where the guard seeks to the first offset
    itself (aiokafka does not): a partition that delivered records from exactly there during
    the seek is not sought back (it was, and 4 records of a deferral partition came twice,
    both copies committed under exactly_once: the keyed batch SIGKILL test, 1 run in 20); one
    whose records came from further on still is."""
    consumer: Any = _consumer(tmp_path, "guard-seek-0")
    ahead = TP("orders", 1)
    guard = consumer.offset_guard
    consumer.assignment = lambda: {tp, ahead}
    consumer._guarded = lambda topic: True
    guard.forget({tp, ahead})
    sought: list[tuple[TP, int]] = []

    async def seek(partition: TP, offset: int) -> None:
        sought.append((partition, offset))

    async def seek_to_committed() -> dict[TP, int]:
        for offset in range(0, 4):  # fetched and accepted while the seek waits
            assert guard.check(tp, offset)[0] == guard.ACCEPT
        assert guard.check(ahead, 7)[0] == guard.ACCEPT  # from where an older fetch stopped
        return {tp: 0, ahead: 0}

    consumer.seek_to_committed = seek_to_committed
    consumer.seek = seek
    await consumer._seek_assigned()
    assert sought == [(ahead, 0)]  # only the partition whose reading began past 0
    assert guard.check(tp, 4) == (guard.ACCEPT, 4)  # goes on: no re-read of 0..3


async def test_a_second_seek_in_one_generation_reads_again_only_what_was_not_acked(
        tmp_path: Path) -> None:
    """Faust seeks to the committed offsets twice in one generation at times (its recovery,
    then its getmany finding the flow stopped). A batch tap's records taken and acked between
    the two were read again: under exactly_once both copies were committed in one transaction
    (the keyed batch SIGKILL test: a deferral partition with nothing committed, sought back to
    its first offset by the guard). Acked records are not read again; the others are (reading
    on past them stalled a partition whose taken records were never processed)."""
    consumer: Any = _consumer(tmp_path, "guard-seek-twice")
    fresh, dropped = TP("orders", 1), TP("orders", 2)
    guard = consumer.offset_guard
    consumer.assignment = lambda: {tp, fresh, dropped}
    consumer._guarded = lambda topic: True
    guard.forget({tp, fresh, dropped})
    sought: list[tuple[TP, int]] = []

    async def seek(partition: TP, offset: int) -> None:
        sought.append((partition, offset))

    async def seek_to_committed() -> dict[TP, Any]:
        return {tp: 12, fresh: None, dropped: 40}

    consumer.seek, consumer.seek_to_committed = seek, seek_to_committed
    await consumer._seek_assigned()  # the recovery's
    assert sought == []  # tp, dropped: aiokafka's own seek; fresh: nothing known yet
    guard.start(fresh, 0)  # batch taps take 0..2 of fresh, 12..20 of tp, 40..49 of dropped
    consumer._acked_index[fresh].update(range(0, 3))  # processed
    consumer._acked_index[tp].update(range(12, 21))
    consumer._gap[tp].addi(21, 23)  # confirmed markers
    # dropped: taken, never acked (its batch given up)
    await consumer._seek_assigned()  # the second, in the same generation
    assert sorted(sought) == [(tp, 23), (fresh, 3)]
    assert guard.expected[dropped] == 40  # read again from its committed offset


async def test_each_seek_tells_the_batch_tap_where_reading_starts_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a batch tap still held from a partition sought back in the same generation is
    delivered again; it must drop it (else it ran twice: exactly_once copies), so every seek,
    Faust's own to the committed offset included, tells the tap where reading starts."""
    consumer: Any = _consumer(tmp_path, "guard-seek-tap")
    tap = _Tap()
    register_batch_tap(consumer.app, tp.topic, tap)
    other = TP("orders", 1)

    async def transport_seek(partition: TP, offset: int) -> None:
        pass

    async def seek_to_committed() -> dict[TP, Any]:
        return {tp: 12, other: 40}

    monkeypatch.setattr(consumer, "_seek", transport_seek)
    consumer.assignment = lambda: {tp, other}
    consumer._guarded = lambda topic: True
    consumer.seek_to_committed = seek_to_committed
    consumer.offset_guard.forget({tp, other})
    await consumer._seek_assigned()  # the recovery's
    assert sorted(tap.seeks) == [(tp, 12), (other, 40)]
    consumer._acked_index[tp].update(range(12, 21))  # batches of tp done, none of other
    tap.seeks.clear()
    await consumer._seek_assigned()  # the second, in the same generation
    assert sorted(tap.seeks) == [(tp, 21), (other, 40)]
    tap.seeks.clear()
    await consumer.seek(TP("ops", 0), 7)  # not a batch source: no tap to tell
    assert tap.seeks == []


async def test_a_second_seek_never_goes_back_past_what_was_committed_here(
        tmp_path: Path) -> None:
    """The broker can answer a committed offset older than one this consumer committed a
    moment before (an exactly_once commit not yet stable: aiokafka cannot ask for stable
    offsets, KIP-447). At a second seek in one generation that read records 10-19 again, and
    they were committed twice (the second-seek integration test, once in a CI run)."""
    consumer: Any = _consumer(tmp_path, "guard-seek-stale")
    consumer.assignment = lambda: {tp}
    consumer._guarded = lambda topic: True
    sought: list[tuple[TP, int]] = []

    async def seek(partition: TP, offset: int) -> None:
        sought.append((partition, offset))

    async def seek_to_committed() -> dict[TP, Any]:
        return {tp: 10}  # committed 20 here, not yet what the broker answers

    consumer.seek, consumer.seek_to_committed = seek, seek_to_committed
    consumer._committed_offset[tp] = 20
    consumer._acked_index[tp].update({20, 21})  # acked since, not committed yet
    await consumer._seek_assigned()
    assert sought == [(tp, 22)] and consumer._committed_offset[tp] == 20


async def test_the_seek_of_a_fetch_that_returns_with_the_flow_stopped_is_skipped(
        tmp_path: Path) -> None:
    """A fetch begun before a revocation returns with the flow stopped; Faust's getmany drops
    its records and seeks to the committed offsets. Queued behind the rejoin in the consumer's
    thread, that seek landed after the recovery's own and sent partitions back over events
    in progress (exactly_once copies in the downstream SIGKILL test, 1 run in 14). It is
    skipped; the next seek (the recovery's) is made."""
    consumer: Any = _consumer(tmp_path, "guard-stopped-fetch")
    consumer.assignment = lambda: {tp}
    consumer._guarded = lambda topic: True
    consumer._set_active_tps({tp})
    seeks: list[str] = []

    async def seek_to_committed() -> dict[TP, Any]:
        seeks.append("to committed")
        return {tp: 5}

    async def fetch_spanning_a_revocation(active_partitions: Any,
                                          timeout: float) -> dict[TP, list[Any]]:
        consumer.stop_flow()  # the revocation, while the fetch waits
        return {tp: [_Record(5), _Record(6)]}

    consumer.seek_to_committed = seek_to_committed
    consumer._getmany = fetch_spanning_a_revocation
    delivered = [message async for message in consumer.getmany(1.0)]  # Faust's getmany
    assert delivered == [] and seeks == []
    await consumer.perform_seek()  # the recovery's, after the assignment
    assert seeks == ["to committed"]


async def test_a_partition_sought_in_a_rebalance_is_resumed_with_the_flow(
        tmp_path: Path) -> None:
    """Faust's recovery resumes the flow control (clearing every stream queue) after its seek:
    records of a partition resumed at the seek and delivered before that were cleared, the
    guard already past them, and the partition stalled (the downstream SIGKILL test, 2 CI
    runs in 8). The partition is resumed when the flow is."""
    consumer: Any = _consumer(tmp_path, "guard-resume-with-flow")
    consumer.assignment = lambda: {tp}
    consumer._guarded = lambda topic: True
    consumer.app.rebalancing = True

    async def seek_to_committed() -> dict[TP, Any]:
        return {tp: 5}

    consumer.seek_to_committed = seek_to_committed
    consumer.stop_flow()
    consumer.resume_partitions({tp})  # the recovery's, before its seek: held
    await consumer.perform_seek()
    assert tp not in consumer._get_active_partitions()  # sought, not yet fetched
    consumer.app.flow_control.resume()  # clears the stream queues
    consumer.resume_flow()
    assert tp in consumer._get_active_partitions()
