"""Where each partition's reading is expected to go on: :class:`OffsetGuard` (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from faust.types import TP


@dataclass
class OffsetGuard:
    """Per partition, the next offset the consumer expects; a record past it is a *jump*.

    A jump is re-read once (``check`` returns the offset to seek back to). Only the broker's
    answer to that seek can confirm the range as empty (markers, compaction, aborted records):
    the first fetch of the partition after the seek, seen whole before Faust or a batch tap
    drops anything (``fetched``), starts past the sought offset. A delivered record is then a
    gap only if it is exactly where that fetch started; records the broker returned and that
    were dropped on the way (the flow stopped, a new generation) make a new jump, re-read
    again, never a gap. Pure: no Kafka here.

    Example::

        guard = OffsetGuard()
        guard.reset(tp, 100)
        guard.check(tp, 100)      # ACCEPT
        guard.check(tp, 105)      # REREAD from 101 (the consumer seeks there)
        guard.fetched(tp, 105)    # the broker's first record after the seek
        guard.check(tp, 105)      # GAP 101..104 confirmed
    """

    expected: dict[TP, int] = field(default_factory=dict)
    #: tp -> the first offset read while nothing of tp was committed: where to re-read from
    origin: dict[TP, int] = field(default_factory=dict)
    #: tp -> the offset sought back to, until the broker's first fetch from it
    verifying: dict[TP, int] = field(default_factory=dict)
    #: tp -> the first offset accepted since it was assigned (Faust may deliver records before
    #: its seek to the committed offset has returned)
    started: dict[TP, int] = field(default_factory=dict)
    #: tp -> [begin, end): the broker's fetch from ``begin`` started at ``end``
    empty: dict[TP, tuple[int, int]] = field(default_factory=dict)
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
        if self.verifying.get(tp) != offset:
            self.verifying.pop(tp, None)
        self.empty.pop(tp, None)

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
            self.empty.pop(tp, None)
            self.started.pop(tp, None)

    def fetched(self, tp: TP, first: int) -> None:
        """The broker returned records of ``tp`` from ``first`` on (before any is dropped)."""
        sought = self.verifying.pop(tp, None)
        if sought is not None and first > sought:
            self.empty[tp] = (sought, first)

    def check(self, tp: TP, offset: int) -> tuple[str, int]:
        """``(ACCEPT, offset)``, ``(REREAD, from_offset)`` or ``(GAP, first_missing)``."""
        expected = self.expected.get(tp)
        if expected is None:
            self.origin.setdefault(tp, offset)
            self.started[tp] = offset
        if expected is None or offset == expected:
            self.expected[tp] = offset + 1
            self.verifying.pop(tp, None)
            self.empty.pop(tp, None)
            return self.ACCEPT, offset
        if offset < expected:  # a re-read of what came before: Faust drops or redelivers it
            return self.ACCEPT, offset
        if self.empty.get(tp) == (expected, offset):
            del self.empty[tp]
            self.expected[tp] = offset + 1
            self.confirmed_gaps += 1
            return self.GAP, expected
        self.empty.pop(tp, None)
        self.verifying[tp] = expected
        self.rereads += 1
        return self.REREAD, expected
