"""The recovery watch on fakes of Faust's recovery and aiokafka's fetcher (a pure unit)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from faust.types import TP

from faust_backpressure.faust_seam.recovery_watch import RECOVERY_QUIET, _RecoveryWatch

TP2 = TP("app-fbp-limiters-changelog", 2)


class _Faust:
    def __init__(self) -> None:
        self.verified: list[TP] = []

    def verify_recovery_event_path(self, now: float, tp: TP) -> None:
        self.verified.append(tp)


class _Consumer(_RecoveryWatch, _Faust):
    def __init__(self, recovery: Any, fetcher: Any) -> None:
        super().__init__()
        self.app = SimpleNamespace(
            tables=SimpleNamespace(recovery=recovery,
                                   changelog_queue=SimpleNamespace(qsize=lambda: 0)),
            flow_control=SimpleNamespace(is_active=lambda: True))
        self.sought: list[dict[TP, int]] = []

        async def seek_wait(offsets: dict[TP, int]) -> None:
            self.sought.append(offsets)

        self._thread = SimpleNamespace(
            _ensure_consumer=lambda: SimpleNamespace(_fetcher=fetcher), seek_wait=seek_wait)
        self.flow_active = True
        self._active_partitions = {TP2}
        self._paused_partitions = set()
        self._read_offset = {}


def _fetcher(position: int) -> Any:
    state = SimpleNamespace(position=position, has_valid_position=True, highwater=43,
                            paused=False, awaiting_reset=False)
    assignment = SimpleNamespace(state_value=lambda tp: state)
    return SimpleNamespace(_subscriptions=SimpleNamespace(
        subscription=SimpleNamespace(assignment=assignment)),
        _records={TopicPartition(TP2.topic, 2): object()}, _in_flight={1})


def _recovery(started: float) -> Any:
    return SimpleNamespace(_recovery_started_at=started, _active_events_received_at={},
                           active_offsets={TP2: -1}, active_highwaters={TP2: 42})


async def test_a_quiet_recovery_is_described_once(caplog: pytest.LogCaptureFixture) -> None:
    async def getmany() -> Any:  # a consumer's generator, suspended where it waits
        yield 1
        await asyncio.sleep(3600)
        yield 2

    waiting = getmany()
    await waiting.__anext__()
    stuck = asyncio.ensure_future(waiting.__anext__())
    await asyncio.sleep(0)
    recovery = _recovery(100.0)
    consumer = _Consumer(recovery, _fetcher(43))
    with caplog.at_level(logging.WARNING):
        consumer.verify_recovery_event_path(100.0 + RECOVERY_QUIET - 1, TP2)
        assert not caplog.records  # not quiet for long enough yet
        for t in (RECOVERY_QUIET + 1, RECOVERY_QUIET + 6):
            consumer.verify_recovery_event_path(100.0 + t, TP2)
        assert len(caplog.records) == 1  # once per recovery
        message = caplog.records[0].getMessage()
        assert "no record after 21 s" in message and "aiokafka position 43" in message
        assert "aiokafka holds fetched records True" in message
        assert "recovery offset -1, recovery highwater 42" in message
        assert "getmany waits at test_a_quiet_recovery_is_described_once.<locals>.getmany:" \
            in message and "-> sleep:" in message
        await asyncio.sleep(0)
        assert consumer.sought == [{TP2: 0}]  # sought again where the restore reads (-1: 0)
        recovery._recovery_started_at = 200.0  # the next recovery: described again
        recovery.active_offsets[TP2] = 17  # its restore reads from a persisted offset
        consumer.verify_recovery_event_path(200.0 + RECOVERY_QUIET, TP2)
        assert len(caplog.records) == 2
        await asyncio.sleep(0)
        assert consumer.sought == [{TP2: 0}, {TP2: 17}]
    assert consumer.verified == [TP2] * 4  # Faust's own check always runs
    stuck.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stuck


async def test_a_partition_with_records_or_an_unreadable_state(
        caplog: pytest.LogCaptureFixture) -> None:
    recovery = _recovery(0.0)
    recovery._active_events_received_at[TP2] = 1.0
    with caplog.at_level(logging.WARNING):
        _Consumer(recovery, _fetcher(0)).verify_recovery_event_path(60.0, TP2)
        assert not caplog.records  # records came: nothing to say
        broken = _Consumer(_recovery(0.0), SimpleNamespace())  # no _subscriptions
        broken.verify_recovery_event_path(60.0, TP2)
    assert "state not readable" in caplog.records[0].getMessage()
