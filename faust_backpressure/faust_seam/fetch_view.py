"""What the consumer's fetch is told to return: Faust's live set of active partitions, never
read as "every partition".

Faust passes aiokafka's ``fetched_records`` its live ``_active_partitions`` set, and aiokafka
takes an *empty* set for "no filter". The set empties while a fetch waits (Faust pauses every
partition at a rebalance), so a fetch begun in the last generation took the new generation's
first records whole, a table restore's changelog records included, and the restore never got
them: the at_least_once restore stall of docs/reliability.md ("Where it stands").
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
