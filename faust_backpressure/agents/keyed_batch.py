"""A keyed limit in a batch pipeline (docs/batching.md, "Keyed limits in a batch").

Per batch, before it is processed: each record's limit key and cost (the limit's functions,
:func:`keys_and_costs`; a record they refuse goes to the DLQ), then, by ``on_limit``:

* ``"defer"``: the records split by key against the keyed limit's buckets
  (:func:`split_by_key`, pure); the records over their key's limit (and every later record of
  that key) sent to the deferral topic with the batch's other outputs. They come back through
  the pipeline's own stream, where the keyed gate re-admits them as per event and each is
  processed alone (:func:`one_at_a_time`, :func:`run_beside_readmitted`);
* ``"shed"``: the same split, each record on its own once its key's sum is refused; the
  refused ones sent to the shed topic as outputs of the batch;
* ``"wait"``: the batch cut where a key's sum would exceed its burst (the rest goes back to
  its partition's queue), then held until every key's bucket holds its sum.

The admit and defer rules are
:class:`~faust_backpressure.limiters.keyed_buckets.KeyedTokenBuckets`'; the partition checks,
the deferral and shed headers are the gate's.

The limit's ``key=`` and ``cost=`` functions see each record as a :class:`BatchEvent` (what
the per-event gate gives them); a record whose function raises or whose cost is not a number
>= 0 goes to the DLQ (docs/batching.md, "The keyed limit's options in a batch").
"""

from __future__ import annotations

import asyncio
import inspect
import math
import numbers
from collections import Counter
from collections.abc import Awaitable, Callable, Container, Hashable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from faust.types import StreamT

from faust_backpressure.agents.batch import Batch, BatchQueues, check_results
from faust_backpressure.agents.headers import Failure
from faust_backpressure.agents.keyed import EXPIRE_PER_RECORD, KeyedRateLimitGate
from faust_backpressure.faust_seam import in_partition
from faust_backpressure.limiters.keyed_buckets import KeyedTokenBuckets

__all__ = ["BatchEvent", "Entry", "KeySplit", "KeyedBatches", "KeysInFlight", "cut_for_wait",
           "keys_and_costs", "one_at_a_time", "permits_of", "run_beside_readmitted",
           "split_by_key", "wait_for_keys"]


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



@dataclass
class KeySplit:
    """A batch's records split by their keys' limits, each part in input order."""

    admitted: list[Any] = field(default_factory=list)
    #: ``(record, key, not_before)``: a deferred record, its key, when its tokens are due
    deferred: list[tuple[Any, Hashable, float]] = field(default_factory=list)
    #: ``(record, key, permits)``: a record shed (``on_limit="shed"``), its key and cost
    shed: list[tuple[Any, Hashable, int]] = field(default_factory=list)
    #: ``(record, failure)``: a record whose key or cost function refused it (to the DLQ)
    rejected: list[tuple[Any, Failure]] = field(default_factory=list)


def _admit_key(buckets: KeyedTokenBuckets, key: Hashable, costs: list[int],
               shed: bool) -> list[bool]:
    """Which of one key's records (their costs, in input order) pass: all at once if the sum
    is within the key's burst and its bucket has it, else one by one; deferring, the first
    refused one stops the key (every later one waits behind it)."""
    total = sum(costs)
    # at once only within the burst: the buckets charge a larger cost as the burst
    if total <= buckets.limits(key).burst_capacity and buckets.try_acquire(key, total):
        return [True] * len(costs)
    passed: list[bool] = []
    for cost in costs:
        passed.append(buckets.try_acquire(key, cost))
        if not passed[-1] and not shed:
            break
    return passed + [False] * (len(costs) - len(passed))


def split_by_key(records: Sequence[Any], buckets: KeyedTokenBuckets,
                 key_of: Callable[[Any], Hashable] = lambda record: record.key,
                 in_flight: Container[Hashable] = (),
                 cost_of: Callable[[Any], int] | None = None, shed: bool = False) -> KeySplit:
    """Per key (``cost_of`` permits a record, default 1): all its records at once if its
    bucket has their sum, else record by record in input order. Deferring (``shed`` False),
    the first refused record and every later one of its key are deferred
    (:meth:`KeyedTokenBuckets.defer`, each for its cost); a key with deferred events (the
    buckets refuse it) or one in ``in_flight`` defers all its records, so no record overtakes
    an earlier one of its key. Shedding, each refused record is shed on its own."""
    by_key: dict[Hashable, list[int]] = {}
    for position, record in enumerate(records):
        by_key.setdefault(key_of(record), []).append(position)
    costs = [1] * len(records) if cost_of is None else [cost_of(r) for r in records]
    refused: dict[int, tuple[Hashable, float]] = {}
    for key, positions in by_key.items():
        wanted = [costs[position] for position in positions]
        admitted = ([False] * len(positions) if key in in_flight and not shed
                    else _admit_key(buckets, key, wanted, shed))
        for position, ok, cost in zip(positions, admitted, wanted, strict=True):
            if not ok:  # deferred in input order: each key's not-before times never decrease
                refused[position] = (key, cost if shed else buckets.defer(key, cost))
    split = KeySplit()
    for position, record in enumerate(records):
        if position not in refused:
            split.admitted.append(record)
        elif shed:
            key, permits = refused[position]
            split.shed.append((record, key, int(permits)))  # (its cost, not a due time)
        else:
            key, due = refused[position]
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


class KeyedBatches:
    """The keyed limit's part of a batch runner: the split, its sends, give-backs.

    ``abandoned``: raised when a batch waiting for its keys' tokens cannot go on (the flow
    stopped): the runner's exception for a batch read again."""

    def __init__(self, gate: KeyedRateLimitGate,
                 abandoned: type[BaseException] = asyncio.CancelledError) -> None:
        self.gate = gate
        self.in_flight = KeysInFlight()
        self.abandoned = abandoned
        #: ``on_limit="wait"``'s sleep: False if the flow stopped first (a test's clock's)
        self.sleep: Callable[[float], Awaitable[bool]] = gate.sleep_unless_flow_stops
        #: the functions' fast path: the record's own key, one permit a record
        self._plain = gate.key is None and gate.cost is None

    @contextmanager
    def _buckets(self, tp: Any) -> Iterator[KeyedTokenBuckets]:
        """``tp``'s buckets, reads and writes in its table and changelog partition."""
        with in_partition(tp.topic, tp.partition):
            yield self.gate.partition_buckets(tp.topic, tp.partition)

    async def split(self, batch: Batch, queues: BatchQueues) -> KeySplit:
        """``batch``'s records split by their keys' limits (levels written to its partition's
        table and changelog partition); ``on_limit="wait"`` may cut the batch (the rest back
        to ``queues``) and waits before it returns."""
        gate = self.gate
        entries: list[tuple[Any, Hashable, int]] | None = None
        rejected: list[tuple[Any, Failure]] = []
        if not self._plain:
            entries, rejected = keys_and_costs(gate, batch.records)
        if gate.on_limit == "wait":
            split = await self._wait(batch, queues, entries)
        else:
            with self._buckets(batch.tp) as buckets:
                buckets.expire(EXPIRE_PER_RECORD * len(batch.records))
                split = self._split(buckets, batch.records, entries)
            gate.admitted += len(split.admitted)
            now = gate.clock()
            for _, key, _ in (*split.deferred, *split.shed):
                gate.refused_keys.count(key, now)
        # (a cut batch: the records refused after its end are the next batch's)
        split.rejected = [(record, why) for record, why in rejected
                          if record.offset <= batch.last]
        return split

    def _split(self, buckets: KeyedTokenBuckets, records: Sequence[Any],
               entries: list[tuple[Any, Hashable, int]] | None) -> KeySplit:
        shed = self.gate.on_limit == "shed"
        if entries is None:
            return split_by_key(records, buckets, in_flight=self.in_flight, shed=shed)
        split = split_by_key(entries, buckets, key_of=itemgetter(1), in_flight=self.in_flight,
                             cost_of=itemgetter(2), shed=shed)
        return KeySplit([entry[0] for entry in split.admitted],
                        [(entry[0], key, due) for entry, key, due in split.deferred],
                        [(entry[0], key, cost) for entry, key, cost in split.shed])

    async def _wait(self, batch: Batch, queues: BatchQueues,
                    entries: list[tuple[Any, Hashable, int]] | None) -> KeySplit:
        """``on_limit="wait"``: cut where a key's sum would exceed its burst, then wait until
        every key's bucket holds its sum and take it (docs/batching.md)."""
        gate = self.gate
        if entries is None:
            entries = [(record, record.key, 1) for record in batch.records]
        with self._buckets(batch.tp) as buckets:
            buckets.expire(EXPIRE_PER_RECORD * len(batch.records))
            burst_of = lambda key: buckets.limits(key).burst_capacity  # noqa: E731
            cut, sums = cut_for_wait(entries, burst_of)
        if cut < len(entries):
            self._cut(batch, queues, entries[cut][0])
            entries = entries[:cut]
        waited = await wait_for_keys(lambda: self._buckets(batch.tp), sums, gate.clock,
                                     self.sleep)
        if waited is None:
            raise self.abandoned()
        admitted = [entry[0] for entry in entries]
        gate.admitted += len(admitted)
        if waited:
            gate.waits += len(admitted)
            now = gate.clock()
            for key in waited:
                gate.refused_keys.count(key, now)
        return KeySplit(admitted)

    @staticmethod
    def _cut(batch: Batch, queues: BatchQueues, first_left: Any) -> None:
        """``batch`` ends before ``first_left``; it and the records after it go back to the
        head of the partition's queue (its next batch; their offsets follow the batch's)."""
        position = next(i for i, record in enumerate(batch.records) if record is first_left)
        rest = batch.cut(position)
        queues.put_back(batch.tp, rest, batch.generation, batch.opened_at)

    def give_back(self, tp: Any, split: KeySplit | None) -> None:
        """The batch was abandoned before its deferrals were sent: each deferred record's
        count is taken back (as if it came back), else its key would stay deferred for good;
        its tokens stay spent. None: it was abandoned before its split."""
        if split is None or not split.deferred:
            return
        with self._buckets(tp) as buckets:
            for _, key, not_before in split.deferred:
                buckets.readmit(key, not_before)

    async def send_split(self, producer: Any, split: KeySplit,
                         dead_letter: Callable[[Any, Any, Failure], Any]) -> list[Any]:
        """The split's sends, outputs of the batch, as the per-event gate sends them:
        deferred records to the deferral topic (the source partition's number), shed ones to
        the shed topic, refused ones to the DLQ (``dead_letter(producer, record, failure)``);
        returns their send futures."""
        gate, send = self.gate, producer.send
        futures = [await send(gate.deferral_topic_name, record.value, key=record.key,
                              partition=record.partition,
                              headers=gate.deferral_headers(record, not_before))
                   for record, _, not_before in split.deferred]
        gate.deferred += len(futures)
        for record, _, permits in split.shed:
            topic = gate.shed_topic_for(record.topic).get_topic_name()
            futures.append(await send(topic, record.value, key=record.key,
                                      headers=gate.shed_headers_of(record, permits, "keyed")))
        gate.shed += len(split.shed)
        for record, failure in split.rejected:
            futures.append(await dead_letter(producer, record, failure))
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
            # the limit's key, as the batch's split sees it (the gate computed it just now)
            key = event.key if keyed.gate.key is None else keyed.gate.key(event)
            keyed.in_flight.enter(key)
            try:
                await pipeline.handle(event)
            finally:
                keyed.in_flight.leave(key)
    finally:
        batches.cancel()
