"""A keyed limit's ``key=``, ``cost=`` and ``on_limit="wait"``/``"shed"`` in a batch
(docs/batching.md, "The keyed limit's options in a batch").

A batch's records are aiokafka records, not Faust events: :class:`BatchEvent` gives the limit's
functions what a per-event pipeline's gate gives them (the raw source's event: ``.key``,
``.value``, ``.headers``, ``.message``). :func:`keys_and_costs` calls them once per record; a
record whose function raises or whose cost is not a number >= 0 leaves for the DLQ.
:func:`cut_for_wait` and :func:`wait_for_keys` are ``on_limit="wait"``'s: the batch cut where
a key's summed cost would exceed its burst, then held until every key's bucket has its sum.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Awaitable, Callable, Hashable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from faust_backpressure.agents.headers import Failure
from faust_backpressure.limiters.keyed_buckets import KeyedTokenBuckets

__all__ = ["BatchEvent", "Entry", "cut_for_wait", "keys_and_costs", "permits_of",
           "wait_for_keys"]

#: ``(record, key, permits)``: a record of a batch with its limit key and cost.
Entry = tuple[Any, Hashable, int]


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """A batch record as a keyed limit's ``key``/``cost`` function sees it: what the Faust
    ``Event`` of a pipeline's raw source has (its key and value are the record's bytes,
    ``headers`` a dict as Faust makes it, ``message`` the aiokafka ``ConsumerRecord``:
    ``.topic``, ``.partition``, ``.offset``, ``.timestamp``, ``.key``, ``.value``,
    ``.headers``, as Faust's ``Message``)."""

    key: Any
    value: Any
    headers: dict[str, Any]
    message: Any

    @classmethod
    def of(cls, record: Any) -> BatchEvent:
        return cls(record.key, record.value, dict(record.headers or ()), record)


def permits_of(cost: Any) -> int:
    """A cost function's result as permits, ``int(cost)`` as per event; refused (raises)
    unless it is a finite number >= 0 (a bool is not a cost)."""
    if isinstance(cost, bool) or not isinstance(cost, numbers.Real):
        raise TypeError(f"cost must be a number >= 0, got {cost!r}")
    if not math.isfinite(cost) or cost < 0:
        raise ValueError(f"cost must be a finite number >= 0, got {cost!r}")
    return int(float(cost))


def keys_and_costs(gate: Any, records: Sequence[Any]
                   ) -> tuple[list[Entry], list[tuple[Any, Failure]]]:
    """Each record's limit key and permits (``gate``: a
    :class:`~faust_backpressure.agents.keyed.KeyedRateLimitGate`), and the records refused
    with why: their key or cost function raised, or the cost is not a number >= 0. A key
    not on the record's partition stops the worker (``NotCopartitioned``), as per event."""
    key_of, cost_of = gate.key, gate.cost
    entries: list[Entry] = []
    refused: list[tuple[Any, Failure]] = []
    for record in records:
        event = BatchEvent.of(record)
        stage = "key"
        try:
            key = record.key if key_of is None else key_of(event)
            stage = "cost"
            permits = 1 if cost_of is None else permits_of(cost_of(event))
        except Exception as exc:  # broad: the user's function failed on this record alone
            refused.append((record, Failure.now(exc, stage, 0)))
            continue
        if key_of is not None:  # (after the cost: a refused record's key decides nothing)
            gate.check_key_sampled(event, key)
        entries.append((record, key, permits))
    return entries, refused


def cut_for_wait(entries: Sequence[Entry], burst_of: Callable[[Hashable], float]
                 ) -> tuple[int, dict[Hashable, float]]:
    """How many entries, from the first, a batch admits at once within each key's burst, and
    each of their keys' summed permits (in the order of its first record): the batch is cut
    before the first record that would take its key's sum above the burst (a record dearer
    than the burst counts as the burst, as the buckets charge it: one such record passes
    alone, as per event). At least 1 of a batch that is not empty."""
    sums: dict[Hashable, float] = {}
    for position, (_, key, permits) in enumerate(entries):
        burst = burst_of(key)
        total = sums.get(key, 0.0) + min(permits, burst)
        if total > burst + 1e-9 and position > 0:
            return position, sums
        sums[key] = total
    return len(entries), sums


async def wait_for_keys(buckets: Callable[[], AbstractContextManager[KeyedTokenBuckets]],
                        sums: dict[Hashable, float], clock: Callable[[], float],
                        sleep: Callable[[float], Awaitable[bool]]) -> list[Hashable] | None:
    """Sleep until every key's bucket holds its sum, then take them (``reserve``: due now);
    returns the keys that made it wait, or None if ``sleep`` returned False (the flow stopped:
    nothing taken). ``buckets()`` is entered for each synchronous step (it sets the table's
    partition context and yields the partition's buckets). Between the last check and the
    take there is no await, so no other task changes the buckets in between."""
    waited: list[Hashable] = []
    while True:
        with buckets() as current:
            due = {key: current.when_reserved(key, permits) for key, permits in sums.items()}
            latest = max(due.values(), default=0.0)
            now = clock()
            if latest <= now:
                for key, permits in sums.items():
                    current.reserve(key, permits)
                return waited
            waited.extend(key for key, at in due.items() if at > now and key not in waited)
        if not await sleep(latest - now):
            return None
