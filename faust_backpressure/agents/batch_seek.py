"""What a seek back in one generation means for the records a batch runner holds.

Faust at times seeks a generation's partitions to their committed offsets a second time
(docs/reliability.md, "Two seeks at a rebalance"), and the partition is delivered again from
its first unacked offset. The records the runner holds from there on would run twice (under
exactly_once too): its queue drops them, and a batch from there on that has not sent anything
gives up (read again). A batch already sending finishes; its records come again after it, and
the partition's next batches up to its last offset skip what was processed by then.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from faust_backpressure.agents.batch import Batch, BatchQueues
from faust_backpressure.faust_seam import processed_in_generation

__all__ = ["SeekBacks"]

log = logging.getLogger(__name__)


class SeekBacks:
    """One batch runner's answer to seeks back (see the module's docstring)."""

    def __init__(self, name: str) -> None:
        self.name = name  # the pipeline's, for the log
        #: tp -> the last offset of a batch that was sending when tp was sought back: the
        #: batches of tp up to it skip the records processed since
        self._recheck: dict[Any, int] = {}
        self.skipped = 0

    def sought(self, queues: BatchQueues, current: Batch | None, tp: Any, offset: int) -> None:
        """``tp`` is delivered again from ``offset``; ``current`` is the batch in progress."""
        dropped = queues.drop_from(tp, offset)
        stale = goes_on = False
        if current is not None:
            stale = current.sought_back(tp, offset)
            # a batch that goes on (sending, or begun before offset: giving it up would leave
            # its first records unread) has its records from offset on delivered again
            goes_on = current.tp == tp and not stale and current.last >= offset
            if goes_on:
                self._recheck[tp] = max(current.last, self._recheck.get(tp, -1))
        if dropped or stale or goes_on:
            log.info("pipeline %s: %s sought back to %d: %d queued record(s) dropped; the batch "
                     "in progress %s", self.name, tp, offset, dropped,
                     "gives up" if stale else "goes on" if goes_on else "is not of it")

    def skip_processed(self, app: Any, batch: Batch) -> None:
        """Drops ``batch``'s records processed since they were read (by a batch that was
        sending at a seek back), if it lies before that batch's end."""
        until = self._recheck.get(batch.tp)
        if until is None:
            return
        if batch.first > until:
            del self._recheck[batch.tp]
            return
        processed = processed_in_generation(app, batch.tp)
        kept = [record for record in batch.records if not processed(record.offset)]
        if len(kept) < len(batch.records):
            self.skipped += len(batch.records) - len(kept)
            log.info("pipeline %s: %s@%d..%d: %d record(s) processed since they were read, "
                     "skipped", self.name, batch.tp, batch.first, batch.last,
                     len(batch.records) - len(kept))
            batch.records = kept

    def forget(self, tps: Iterable[Any]) -> None:
        for tp in tps:
            self._recheck.pop(tp, None)
