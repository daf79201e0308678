"""What the consumer's fetch is told to return: Faust's live set of active partitions, never
read as "every partition".

Faust passes aiokafka's ``fetched_records`` its live ``_active_partitions`` set (mutated in
place, so that a fetch waiting for records sees partitions resumed meanwhile). aiokafka takes
an *empty* set for "no filter": it returns the records of every assigned partition, paused ones
included. Faust calls it only with a non-empty set, but the set empties while the call waits:
at a rebalance Faust pauses every partition until its table recovery has sought the changelog
partitions and resumed them, and aiokafka's wait spans the rejoin (it waits for the next
assignment when records land during one). A fetch begun in the last generation then took the
new generation's first records whole, a restore's changelog records included; Faust, finding
the flow stopped, sought back the stream partitions only (a changelog has no committed offset),
so the restore never got those records: it waited for ever (at_least_once) or ended without
them (exactly_once). The at_least_once restore stall of docs/reliability.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Set

from faust.types import TP


class LivePartitions(Set[TP]):
    """A read-only view of ``live`` that is never false: empty, it matches nothing."""

    __slots__ = ("live",)

    def __init__(self, live: Set[TP]) -> None:
        self.live = live

    def __bool__(self) -> bool:
        return True

    def __contains__(self, tp: object) -> bool:
        return tp in self.live

    def __iter__(self) -> Iterator[TP]:
        return iter(list(self.live))  # a snapshot: the live set may change from another thread

    def __len__(self) -> int:
        return len(self.live)


def fetch_filter(active: Set[TP] | None) -> Set[TP] | None:
    """What to hand the fetch for Faust's ``active`` partitions (None: a client-only app
    reads every partition, as Faust means it to)."""
    return None if active is None else LivePartitions(active)
