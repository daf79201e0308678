"""A standby's changelog records that arrive while the table recovery completes are kept.

Faust's recovery reads every changelog record through one queue (the table manager's
``changelog_queue``), which each ``flow_control.resume()`` clears: records fetched before a
seek must not be applied after it. The recovery resumes the flow twice at its end:

1. when it starts the standby partitions, right after seeking and resuming them (no await
   in between: the clear drops only records fetched before that seek, as it should);
2. at the end of ``on_recovery_completed``, after awaiting the rebalance-complete signal, the
   tables' callbacks and the stream partitions' seek. The standby partitions are not sought
   again, yet their records fetched meanwhile sit in the queue and are cleared. The consumer
   has moved past them, and the standby applies the later ones: its store misses those
   records for good, and its persisted offset is past them.

Seen in plain Faust (no patch of ours) when a second worker joined one whose table held
20,000 keys while the machine was loaded: up to a whole fetch (500 records) of one standby
partition was missing (docs/reliability.md). A standby promoted later serves that state.

:func:`keep_standby_records` makes the second clear keep the records of the standby
partitions (every other record is cleared as before). Only a clear made while
``on_recovery_completed`` runs and the flow is active does so: a rebalance clears the queue
while the flow is suspended, and a new one seeks the standby partitions again.
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
