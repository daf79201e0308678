"""A keyed limit in a batch pipeline (docs/batching.md, "Keyed limits in a batch").

Per batch, before it is processed: its records split by key against the keyed limit's buckets
(:func:`split_by_key`, pure), in the batch partition's table context; the records over their
key's limit (and every later record of that key) sent to the limit's deferral topic with the
batch's other outputs. Deferred records come back through the limit's deferral agent into the
pipeline's own stream, where the keyed gate re-admits them as it does per event and the
pipeline processes each alone (:func:`one_at_a_time`, :func:`run_beside_readmitted`). The admit
and defer rules are :class:`~faust_backpressure.limiters.keyed_buckets.KeyedTokenBuckets`'; the
partition checks and the deferral headers are the gate's.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import Callable, Container, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from faust.types import StreamT

from faust_backpressure.agents.batch import check_results
from faust_backpressure.agents.keyed import KeyedRateLimitGate
from faust_backpressure.faust_seam import in_partition
from faust_backpressure.limiters.keyed_buckets import KeyedTokenBuckets

__all__ = ["KeySplit", "KeyedBatches", "KeysInFlight", "check_keyed_for_batches",
           "one_at_a_time", "run_beside_readmitted", "split_by_key"]

#: Expired bucket entries removed per record of a batch (the per-event gate removes 2 an event).
EXPIRE_PER_RECORD = 2


@dataclass
class KeySplit:
    """A batch's records split by their keys' limits, each part in input order."""

    admitted: list[Any] = field(default_factory=list)
    #: ``(record, key, not_before)``: a deferred record, its key, when its tokens are due
    deferred: list[tuple[Any, Hashable, float]] = field(default_factory=list)


def split_by_key(records: Sequence[Any], buckets: KeyedTokenBuckets,
                 key_of: Callable[[Any], Hashable] = lambda record: record.key,
                 in_flight: Container[Hashable] = ()) -> KeySplit:
    """Per key (one permit a record): all its records at once if its bucket has the tokens,
    else record by record in input order until one is refused; that one and every later
    record of the key are deferred (:meth:`KeyedTokenBuckets.defer`). A key with deferred
    events (the buckets refuse it) or one in ``in_flight`` defers all its records, so no
    record overtakes an earlier one of its key."""
    by_key: dict[Hashable, list[int]] = {}
    for position, record in enumerate(records):
        by_key.setdefault(key_of(record), []).append(position)
    admitted = [False] * len(records)
    not_before: dict[int, tuple[Hashable, float]] = {}
    for key, positions in by_key.items():
        taken = 0
        if key not in in_flight:
            # at once only within the burst: the buckets charge a larger cost as the burst
            if len(positions) <= buckets.limits(key).burst_capacity \
                    and buckets.try_acquire(key, len(positions)):
                taken = len(positions)
            else:
                while taken < len(positions) and buckets.try_acquire(key, 1):
                    taken += 1
        for position in positions[:taken]:
            admitted[position] = True
        for position in positions[taken:]:
            not_before[position] = (key, buckets.defer(key, 1))
    split = KeySplit()
    for position, record in enumerate(records):
        if admitted[position]:
            split.admitted.append(record)
        else:
            key, due = not_before[position]
            split.deferred.append((record, key, due))
    return split


class KeysInFlight(Container[Hashable]):
    """Keys with a re-admitted record being processed: a batch defers their records."""

    def __init__(self) -> None:
        self._counts: Counter[Hashable] = Counter()

    def enter(self, key: Hashable) -> None:
        self._counts[key] += 1

    def leave(self, key: Hashable) -> None:
        self._counts[key] -= 1
        if self._counts[key] <= 0:
            del self._counts[key]

    def __contains__(self, key: object) -> bool:
        return key in self._counts


def check_keyed_for_batches(pipeline: str, gate: KeyedRateLimitGate) -> None:
    """What a batch pipeline's keyed limit does not do (yet) is refused, not ignored."""
    unsupported = [option for option, refused in (
        (f"on_limit={gate.on_limit!r}", gate.on_limit != "defer"),
        ("key=", gate.key is not None), ("cost=", gate.cost is not None)) if refused]
    if unsupported:
        raise ValueError(f"pipeline {pipeline!r}: a keyed limit on process_batch= does not "
                         f"support {', '.join(unsupported)} yet: it defers by the record's "
                         "key, one permit a record (docs/batching.md)")


class KeyedBatches:
    """The keyed limit's part of a batch runner: the split, its deferral sends, give-backs."""

    def __init__(self, gate: KeyedRateLimitGate) -> None:
        self.gate = gate
        self.in_flight = KeysInFlight()

    def split(self, tp: Any, records: Sequence[Any]) -> KeySplit:
        """``records`` of partition ``tp`` split by their keys' limits (levels written to
        ``tp``'s table and changelog partition)."""
        gate = self.gate
        with in_partition(tp.topic, tp.partition):
            buckets = gate.partition_buckets(tp.topic, tp.partition)
            buckets.expire(EXPIRE_PER_RECORD * len(records))
            split = split_by_key(records, buckets, in_flight=self.in_flight)
        gate.admitted += len(split.admitted)
        if split.deferred:
            now = gate.clock()
            for _, key, _ in split.deferred:
                gate.refused_keys.count(key, now)
        return split

    def give_back(self, tp: Any, split: KeySplit | None) -> None:
        """The batch was abandoned before its deferrals were sent: each deferred record's
        count is taken back (as if it came back), else its key would stay deferred for good;
        its tokens stay spent. None: it was abandoned before its split."""
        if split is None or not split.deferred:
            return
        with in_partition(tp.topic, tp.partition):
            buckets = self.gate.partition_buckets(tp.topic, tp.partition)
            for _, key, not_before in split.deferred:
                buckets.readmit(key, not_before)

    async def send_deferred(self, producer: Any, split: KeySplit) -> list[Any]:
        """The deferred records to the deferral topic (the source partition's number), as
        the per-event gate sends them; returns their send futures (outputs of the batch)."""
        gate = self.gate
        topic = gate.deferral_topic_name
        futures = [await producer.send(topic, record.value, key=record.key,
                                       partition=record.partition,
                                       headers=gate.deferral_headers(record, not_before))
                   for record, _, not_before in split.deferred]
        gate.deferred += len(futures)
        return futures


def one_at_a_time(process_batch: Callable[[list[Any]], Any]) -> Callable[[Any], Any]:
    """``process_batch`` for one value, as a per-event ``process``: an exception result is
    raised (then retried and dead-lettered as per event)."""
    async def process(value: Any) -> Any:
        results = process_batch([value])
        if inspect.isawaitable(results):
            results = await results
        (result,) = check_results([value], results)
        if isinstance(result, BaseException):
            raise result
        return result
    return process


async def run_beside_readmitted(pipeline: Any, keyed: KeyedBatches,
                                stream: StreamT[Any]) -> None:
    """The pipeline's batches, and beside them its stream: only re-admitted deferred records
    reach it (the seam diverts the source's), each processed alone. Its key is in flight
    from the gate's re-admission (its processor; no await before the loop's body) until the
    record's outputs are handed to the producer."""
    batches = asyncio.ensure_future(pipeline.batch.run())
    try:
        async for event in stream.events():
            key = event.key
            keyed.in_flight.enter(key)
            try:
                await pipeline.handle(event)
            finally:
                keyed.in_flight.leave(key)
    finally:
        batches.cancel()
