"""Batch assembly for batch pipelines (``docs/batching.md``): pure, no Kafka, no clock of its own.

The seam hands each fetched chunk of a batch source's partition over with the first offset it
covers; :class:`BatchQueues` cuts them into batches of one partition and one consumer generation,
at most ``batch_size`` records, closed when full or ``batch_timeout`` after the first record
arrived. Consecutive batches of a partition cover consecutive offset ranges (a range includes
the markers or compacted offsets before its next record), so acking every batch's range leaves
no hole for the commit to stop at.

Example::

    queues = BatchQueues(batch_size=500, batch_timeout=0.05)
    queues.add(tp, records, first=records[0].offset, generation=3, now=clock())
    batch = queues.next_ready(clock())      # None until 500 records or 50 ms
"""

from __future__ import annotations

import types
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from faust_backpressure.errors import BackpressureError

__all__ = ["PLAIN_RESULTS", "Batch", "BatchQueues", "BatchResultError", "check_results", "is_raw",
           "outputs_of", "prepare", "raw_sink_name"]


@dataclass
class _Chunk:
    records: list[Any]
    first: int  # the first offset covered (<= records[0].offset)
    generation: int
    at: float  # when it arrived


@dataclass
class Batch:
    """Records of one partition, covering offsets ``first..last`` (inclusive)."""

    tp: Any
    records: list[Any]
    first: int
    last: int
    generation: int
    opened_at: float  # when its first record was handed over (the runner's clock)
    #: its partition was sought back to its first offset or before while it was not yet
    #: sending: its records are read again, so it gives up (agents/batch_seek.py)
    stale: bool = False
    sending: bool = False  # its first output is on its way: it finishes
    processing: float = 0.0  # seconds in process_batch calls, split calls included
    split: Any = None  # a keyed limit's split of its records (None: no keyed limit)
    #: records shed for their priority, each with (priority, shed level): out of ``records``
    low: list[tuple[Any, tuple[int, int]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def sought_back(self, tp: Any, offset: int) -> bool:
        """``tp`` is read again from ``offset``: if this batch lies there and is not yet
        sending, it gives up (True: stale)."""
        if self.tp == tp and self.first >= offset and not self.sending:
            self.stale = True
        return self.stale

    def start_sending(self) -> bool:
        """False if it was sought back (read again instead); else it finishes from here."""
        self.sending = not self.stale
        return self.sending

    def cut(self, position: int) -> list[Any]:
        """Ends the batch before ``records[position]``; returns the records after the cut in
        offset order, those shed by priority included: they are decided again with the rest
        (a batch's shed records stay within its offset range, docs/batching.md)."""
        rest = self.records[position:]
        self.records = self.records[:position]
        self.last = rest[0].offset - 1
        later = [record for record, _ in self.low if record.offset > self.last]
        if later:
            self.low = [entry for entry in self.low if entry[0].offset <= self.last]
            rest = sorted([*rest, *later], key=attrgetter("offset"))
        return rest


class BatchQueues:
    """Per partition, the records not yet in a batch, cut into batches in offset order."""

    def __init__(self, batch_size: int, batch_timeout: float) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if batch_timeout < 0:
            raise ValueError(f"batch_timeout must be >= 0, got {batch_timeout!r}")
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        self._chunks: dict[Hashable, deque[_Chunk]] = {}
        self._sizes: dict[Hashable, int] = {}
        self._order: deque[Hashable] = deque()  # round robin over partitions

    def add(self, tp: Hashable, records: list[Any], first: int, generation: int,
            now: float) -> None:
        if not records:
            return
        chunks = self._chunks.get(tp)
        if chunks is None:
            chunks = self._chunks[tp] = deque()
            self._sizes[tp] = 0
            self._order.append(tp)
        chunks.append(_Chunk(records, first, generation, now))
        self._sizes[tp] += len(records)

    def put_back(self, tp: Hashable, records: list[Any], generation: int, at: float) -> None:
        """Records of a batch it did not keep (a keyed limit's cut), back at the head of
        their partition's queue: its next batch starts with them. A partition revoked
        meanwhile has no queue: they are read again after the rebalance."""
        chunks = self._chunks.get(tp)
        if not records or chunks is None:
            return
        chunks.appendleft(_Chunk(records, records[0].offset, generation, at))
        self._sizes[tp] += len(records)

    def drop_from(self, tp: Hashable, offset: int) -> int:
        """Drops ``tp``'s queued records from ``offset`` on (they are read again); returns
        how many."""
        chunks = self._chunks.get(tp)
        if not chunks or chunks[-1].records[-1].offset < offset:
            return 0
        kept = deque(_Chunk(records, c.first, c.generation, c.at) for c in chunks
                     if (records := [r for r in c.records if r.offset < offset]))
        dropped = self._sizes[tp] - sum(len(c.records) for c in kept)
        self._chunks[tp], self._sizes[tp] = kept, self._sizes[tp] - dropped
        return dropped

    def size(self, tp: Hashable) -> int:
        return self._sizes.get(tp, 0)

    def __len__(self) -> int:
        return sum(self._sizes.values())

    def clear(self, tps: Iterable[Hashable]) -> None:
        for tp in tps:
            if self._chunks.pop(tp, None) is not None:
                del self._sizes[tp]
                self._order.remove(tp)

    def deadline(self) -> float | None:
        """When the oldest open batch times out (None: nothing queued)."""
        oldest = [chunks[0].at for chunks in self._chunks.values() if chunks]
        return min(oldest) + self.batch_timeout if oldest else None

    def next_ready(self, now: float, skip: Iterable[Hashable] = ()) -> Batch | None:
        """The next full or timed-out batch, round robin over partitions (not ``skip``'s)."""
        skipped = set(skip)
        for _ in range(len(self._order)):
            tp = self._order[0]
            self._order.rotate(-1)
            chunks = self._chunks[tp]
            if tp in skipped or not chunks:
                continue
            head = chunks[0]
            if (self._sizes[tp] >= self.batch_size or chunks[0].generation != chunks[-1].generation
                    or now >= head.at + self.batch_timeout):
                return self._take(tp, chunks)
        return None

    def _take(self, tp: Hashable, chunks: deque[_Chunk]) -> Batch:
        head = chunks[0]
        records: list[Any] = []
        first = head.first
        while chunks and len(records) < self.batch_size and chunks[0].generation == head.generation:
            chunk = chunks[0]
            room = self.batch_size - len(records)
            if len(chunk.records) <= room:
                records.extend(chunk.records)
                chunks.popleft()
                continue
            records.extend(chunk.records[:room])
            rest = chunk.records[room:]
            chunks[0] = _Chunk(rest, rest[0].offset, chunk.generation, chunk.at)
        self._sizes[tp] -= len(records)
        # up to the next record's offset: the markers in between are this batch's
        last = chunks[0].first - 1 if chunks and chunks[0].generation == head.generation \
            else records[-1].offset
        return Batch(tp, records, first, last, head.generation, head.at)


class BatchResultError(BackpressureError, ValueError):
    """``process_batch`` returned something other than one result per value."""


def check_results(values: Sequence[Any], results: Any) -> list[Any]:
    """``results`` as a list of one result per value, or :class:`BatchResultError`."""
    if isinstance(results, types.GeneratorType):
        results = list(results)
    if not isinstance(results, (list, tuple)):
        raise BatchResultError(f"process_batch must return a list, got {type(results).__name__}")
    if len(results) != len(values):
        raise BatchResultError(f"process_batch returned {len(results)} result(s) for "
                               f"{len(values)} value(s)")
    return list(results)


#: Results that are one value (checked by type first: this runs per event).
PLAIN_RESULTS = frozenset({bytes, str, int, float, bool, dict, bytearray})


def outputs_of(result: Any) -> Sequence[Any]:
    """``None`` filters; a list, tuple or generator is several values; anything else is one."""
    if result is None:
        return ()
    if type(result) in PLAIN_RESULTS:
        return (result,)
    if isinstance(result, (list, tuple)):
        return result
    if isinstance(result, types.GeneratorType):
        return list(result)
    return (result,)


def is_raw(serializer: Any, type_: Any) -> bool:
    """A topic side whose bytes are used as they are (no decoding)."""
    return serializer == "raw" and type_ in (None, bytes)


def prepare(sink: Any, key: Any, value: Any) -> tuple[Any, Any]:
    """``key`` and ``value`` as ``sink`` sends them (bytes for a raw sink pass as they are)."""
    raw_key = key if key is None or (isinstance(key, bytes) and sink.key_serializer == "raw") \
        else sink.prepare_key(key, None)[0]
    raw_value = value if isinstance(value, bytes) and sink.value_serializer == "raw" \
        else sink.prepare_value(value, None)[0]
    return raw_key, raw_value


def raw_sink_name(sinks: Sequence[Any]) -> str | None:
    """The sink's name if there is one sink and it takes bytes as they are."""
    if len(sinks) != 1:
        return None
    sink = sinks[0]
    raw = sink.key_serializer == "raw" and sink.value_serializer == "raw"
    return str(sink.get_topic_name()) if raw else None
