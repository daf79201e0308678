"""The guarded Faust consumer's bookkeeping, on a real (unstarted) Faust consumer."""

from __future__ import annotations

from pathlib import Path

import faust
from faust.types import TP

from faust_backpressure.faust_seam import install

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
