"""A table recovery that gets no record of a changelog partition says what the consumer knows
of that partition, once per recovery: where aiokafka stands, whether Faust fetches it, what
waits in the changelog queue; then it seeks the partition again to where the restore reads.

Faust only logs "No event received for active tp ... since recovery start" and waits for ever;
this keeps the state that would explain such a stall (docs/reliability.md, "at_least_once stall
after the first SIGKILL")."""

from __future__ import annotations

import asyncio
import gc
import logging
import types
from typing import Any

from aiokafka import TopicPartition
from faust.types import TP

log = logging.getLogger("faust_backpressure.faust_seam")

#: Seconds of recovery without a record of a partition before its state is logged.
RECOVERY_QUIET = 20.0


class _RecoveryWatch:
    """Consumer mixin: Faust's recovery calls :meth:`verify_recovery_event_path` every few
    seconds for each partition it still waits for."""

    app: Any
    _thread: Any
    flow_active: bool
    _active_partitions: set[TP] | None
    _paused_partitions: set[TP]
    _read_offset: Any

    def verify_recovery_event_path(self, now: float, tp: TP) -> None:
        super().verify_recovery_event_path(now, tp)  # type: ignore[misc]
        recovery: Any = self.app.tables.recovery
        started = recovery._recovery_started_at
        if (started is None or now - started < RECOVERY_QUIET
                or tp in recovery._active_events_received_at):
            return
        reported: dict[TP, float] = self.__dict__.setdefault("_recovery_reported", {})
        if reported.get(tp) == started:
            return  # once per recovery
        reported[tp] = started
        try:
            state = self._recovery_state(tp, recovery)
        except Exception as exc:  # a diagnostic must not break the recovery it reports on
            state = f"state not readable: {exc!r}"
        log.warning("recovery of %s: no record after %.0f s; %s", tp, now - started, state)
        # Seek it again to where the restore reads from, in the consumer's thread as Faust's
        # recovery does: records lost on the way are fetched again, a fetcher that missed the
        # first seek is woken; Faust's recovery skips records it has applied.
        offset = recovery.active_offsets.get(tp)
        kick = asyncio.ensure_future(self._thread.seek_wait({tp: max(0, offset or 0)}))
        self.__dict__.setdefault("_recovery_kicks", set()).add(kick)
        kick.add_done_callback(self._recovery_kicked)

    def _recovery_kicked(self, kick: asyncio.Future[Any]) -> None:
        self.__dict__["_recovery_kicks"].discard(kick)
        if not kick.cancelled() and kick.exception() is not None:
            log.warning("recovery watch: seeking again failed: %r", kick.exception())

    def _recovery_state(self, tp: TP, recovery: Any) -> str:
        # aiokafka's state is read from this thread without its lock: a snapshot for a log
        fetcher = self._thread._ensure_consumer()._fetcher
        assignment = fetcher._subscriptions.subscription.assignment
        aiotp = TopicPartition(tp.topic, tp.partition)
        state = assignment.state_value(aiotp) if assignment is not None else None
        facts = {
            "aiokafka position": state.position if state and state.has_valid_position else None,
            "aiokafka highwater": state.highwater if state else None,
            "aiokafka paused": state.paused if state else None,
            "aiokafka awaiting reset": state.awaiting_reset if state else None,
            "aiokafka holds fetched records": aiotp in fetcher._records,
            "fetches in flight to nodes": sorted(fetcher._in_flight),
            "faust active": tp in (self._active_partitions or ()),
            "faust paused": tp in self._paused_partitions,
            "flow active": self.flow_active,
            "app flow control active": self.app.flow_control.is_active(),
            "read offset": self._read_offset.get(tp),
            "changelog queue size": self.app.tables.changelog_queue.qsize(),
            "recovery offset": recovery.active_offsets.get(tp),
            "recovery highwater": recovery.active_highwaters.get(tp),
            "consumer getmany waits at": " | ".join(_suspended("getmany")) or None,
        }
        return ", ".join(f"{k} {v}" for k, v in facts.items())


def _suspended(name: str) -> list[str]:
    """Where each suspended async generator called ``name`` waits: its frame, then the chain
    of what it awaits (a task's stack stops at an ``async for``; the drain loop's does)."""
    chains = []
    for obj in gc.get_objects():
        if isinstance(obj, types.AsyncGeneratorType) and obj.ag_frame is not None \
                and obj.ag_code.co_name == name:
            chains.append(" -> ".join(_awaits(obj)))
    return chains


def _awaits(obj: Any) -> list[str]:
    steps: list[str] = []
    while obj is not None and len(steps) < 16:
        frame = getattr(obj, "ag_frame", None) or getattr(obj, "cr_frame", None) \
            or getattr(obj, "gi_frame", None)
        if frame is None:
            steps.append(type(obj).__name__)
            break
        steps.append(f"{frame.f_code.co_qualname}:{frame.f_lineno}")
        obj = getattr(obj, "ag_await", None) or getattr(obj, "cr_await", None) \
            or getattr(obj, "gi_yieldfrom", None)
    return steps
