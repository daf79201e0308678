"""A standby's changelog records that arrive while the table recovery completes are kept.

Faust's recovery reads every changelog record through one queue (the table manager's
``changelog_queue``), which each ``flow_control.resume()`` clears. The recovery resumes the flow
twice at its end. The first, right after seeking the standby partitions, clears only what was
fetched before that seek. The second, at the end of ``on_recovery_completed``, comes after awaits
during which standby records were fetched, and those partitions are not sought again: their
records were cleared, and the standby's store missed them for good (docs/reliability.md, "a
standby missed changelog records for good").

:func:`keep_standby_records` makes that clear keep the records of the standby partitions
(every other record is cleared as before). Only a clear made while ``on_recovery_completed``
runs and the flow is active does so: a rebalance clears the queue while the flow is suspended,
and a new one seeks the standby partitions again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from faust.types import AppT

__all__ = ["keep_standby_records"]

log = logging.getLogger("faust_backpressure.faust_seam")


def keep_standby_records(app: AppT) -> None:
    """Patch ``app``'s changelog queue and recovery (idempotent; when its consumer is made)."""
    tables: Any = app.tables
    queue: Any = tables.changelog_queue
    recovery: Any = tables.recovery
    if getattr(queue, "_fbp_keeps_standbys", False):
        return
    completing = False
    clear_all: Callable[[], None] = queue.clear

    def clear() -> None:
        if not (completing and app.flow_control.is_active()):
            clear_all()
            return
        standbys = recovery.standby_tps
        kept = [event for event in queue._queue if event.message.tp in standbys]
        clear_all()
        queue._queue.extend(kept)
        if kept:
            log.info("recovery completed: kept %d standby changelog records the flow's "
                     "resume would have cleared", len(kept))

    completed: Callable[..., Awaitable[None]] = recovery.on_recovery_completed

    async def on_recovery_completed(generation_id: int = 0) -> None:
        nonlocal completing
        completing = True
        try:
            await completed(generation_id)
        finally:
            completing = False

    queue.clear = clear
    recovery.on_recovery_completed = on_recovery_completed
    queue._fbp_keeps_standbys = True


class _KeepStandbyRecords:
    """Consumer mixin: the app's recovery keeps standby records from when its consumer is made
    (the table manager and its recovery exist by then; the first rebalance comes later)."""

    app: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        keep_standby_records(self.app)
