"""A keyed limit's split of a batch (pure, on a virtual clock): per key at once or record by
record, the refused record and every later one of its key deferred, keys with deferred or
in-flight records never overtaken; over many batches with deferred records coming back at
their times, every record passes once, in its key's order, within its key's bound."""

from __future__ import annotations

import heapq
import random
from collections.abc import Hashable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from faust_backpressure.agents.batch import Batch, BatchQueues, BatchResultError
from faust_backpressure.agents.headers import SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TOPIC
from faust_backpressure.agents.keyed import KEYED_LIMIT, NOT_BEFORE, KeyedRateLimitGate
from faust_backpressure.agents.keyed_batch import (
    KeyedBatches,
    KeysInFlight,
    one_at_a_time,
    split_by_key,
)
from faust_backpressure.limiters.keyed_buckets import KeyedTokenBuckets, KeyState
from tests.unit.limiters.conftest import FakeClock


@dataclass
class _Record:
    key: bytes
    value: bytes
    topic: str = "src"
    partition: int = 2
    offset: int = 0
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def _records(keys: str) -> list[_Record]:
    """One record per letter, the letter its key, its position its value and offset."""
    return [_Record(k.encode(), b"%s%d" % (k.encode(), i), offset=i) for i, k in enumerate(keys)]


def _values(records: list[Any]) -> list[bytes]:
    return [r.value for r in records]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_keys_within_their_burst_pass_at_once_one_acquire_per_key(clock: FakeClock) -> None:
    buckets = KeyedTokenBuckets(10, 3, clock=clock)
    split = split_by_key(_records("abacbc"), buckets)
    assert _values(split.admitted) == [b"a0", b"b1", b"a2", b"c3", b"b4", b"c5"]  # input order
    assert split.deferred == []
    assert buckets.stats.admitted == 3  # one bucket operation per key, not per record
    assert buckets.tokens(b"a") == pytest.approx(1)


def test_a_key_over_its_limit_defers_the_refused_record_and_every_later_one(
        clock: FakeClock) -> None:
    buckets = KeyedTokenBuckets(10, 3, clock=clock)
    split = split_by_key(_records("aabaaab"), buckets)
    # a has 5 records for a burst of 3 (never all 5 for the capped cost of 3)
    assert _values(split.admitted) == [b"a0", b"a1", b"b2", b"a3", b"b6"]
    assert [(r.value, key) for r, key, _ in split.deferred] == [(b"a4", b"a"), (b"a5", b"a")]
    # their tokens reserved one after the other at the key's rate: 0.1 s, then 0.2 s
    assert [due - clock() for _, _, due in split.deferred] == pytest.approx([0.1, 0.2])
    assert buckets.deferred(b"a") == 2 and buckets.deferred(b"b") == 0


def test_a_key_with_deferred_records_is_not_overtaken_when_its_tokens_are_back(
        clock: FakeClock) -> None:
    buckets = KeyedTokenBuckets(10, 2, clock=clock)
    first = split_by_key(_records("aaab"), buckets)
    assert [r.value for r, _, _ in first.deferred] == [b"a2"]
    clock.advance(0.5)  # every bucket full again, but a2 has not come back yet
    second = split_by_key(_records("ab"), buckets)
    assert _values(second.admitted) == [b"b1"]
    assert [r.value for r, _, _ in second.deferred] == [b"a0"]  # behind a2
    for _, key, not_before in [*first.deferred, *second.deferred]:
        clock.now = max(clock.now, not_before)  # back in order (a2 0.4 s late)
        buckets.readmit(key, not_before)
    clock.advance(2)
    assert _values(split_by_key(_records("a"), buckets).admitted) == [b"a0"]


def test_a_key_in_flight_defers_all_its_records(clock: FakeClock) -> None:
    buckets = KeyedTokenBuckets(10, 5, clock=clock)
    in_flight = KeysInFlight()
    in_flight.enter(b"a")
    in_flight.enter(b"a")
    split = split_by_key(_records("aba"), buckets, in_flight=in_flight)
    assert _values(split.admitted) == [b"b1"]
    assert [r.value for r, _, _ in split.deferred] == [b"a0", b"a2"]
    in_flight.leave(b"a")
    assert b"a" in in_flight  # one more in flight
    in_flight.leave(b"a")
    assert b"a" not in in_flight


def test_a_key_function_groups_records(clock: FakeClock) -> None:
    buckets = KeyedTokenBuckets(10, 1, clock=clock)
    split = split_by_key(_records("abcd"), buckets, key_of=lambda r: r.key in (b"a", b"c"))
    assert _values(split.admitted) == [b"a0", b"b1"]  # True and False: one token each


@dataclass
class _Gate:
    """What :class:`KeyedBatches` reads of a gate, with real buckets (a dict as the store)."""

    clock: FakeClock
    name: str = "per-key"
    deferral_topic_name: str = "app-per-key-deferred"
    admitted: int = 0
    deferred: int = 0
    store: dict[Hashable, KeyState] = field(default_factory=dict)
    refused: list[Hashable] = field(default_factory=list)
    buckets: KeyedTokenBuckets | None = None
    refused_keys: Any = None
    on_limit: str = "defer"
    key: Any = None
    cost: Any = None
    rate: float = 10
    burst: float = 2
    agent_name: str = "pipeline:p"
    app: Any = None
    shed: int = 0
    waits: int = 0
    checked: list[tuple[Any, Hashable]] = field(default_factory=list)
    sleep_unless_flow_stops: Any = None  # on_limit="wait"'s tests give KeyedBatches a sleeper

    def __post_init__(self) -> None:
        self.buckets = KeyedTokenBuckets(self.rate, self.burst, store=self.store,
                                         clock=self.clock)
        self.refused_keys = SimpleNamespace(count=lambda key, now: self.refused.append(key))

    def partition_buckets(self, topic: str, partition: int) -> KeyedTokenBuckets:
        assert (topic, partition) == ("src", 2)
        assert self.buckets is not None
        return self.buckets

    def deferral_headers(self, record: Any, not_before: float) -> list[tuple[str, bytes]]:
        return KeyedRateLimitGate.deferral_headers(self, record, not_before)  # type: ignore[arg-type]

    def shed_headers_of(self, record: Any, permits: int, cause: str) -> list[tuple[str, bytes]]:
        return KeyedRateLimitGate.shed_headers_of(self, record, permits, cause)  # type: ignore[arg-type]

    def check_key_sampled(self, event: Any, key: Hashable) -> None:
        self.checked.append((event, key))

    def shed_topic_for(self, source: str) -> Any:
        return SimpleNamespace(get_topic_name=lambda: source + "-shed")


def _batch(records: list[Any], clock: FakeClock) -> Batch:
    return Batch(TP("src", 2), records, records[0].offset,
                 records[-1].offset, 1, clock())


def _queues() -> BatchQueues:
    return BatchQueues(100, 0.05)


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, int, list[tuple[str, bytes]]]] = []

    async def send(self, topic: str, value: bytes, *, key: bytes, partition: int | None = None,
                   headers: list[tuple[str, bytes]]) -> str:
        self.sent.append((topic, key, value, partition, headers))
        return f"future-{len(self.sent)}"


async def test_deferred_records_are_sent_as_the_per_event_gate_sends_them(
        clock: FakeClock) -> None:
    gate = _Gate(clock)
    keyed = KeyedBatches(gate)  # type: ignore[arg-type]
    records = _records("aaab")
    records[3].headers = [("trace", b"t1"), ("bp.error.type", b"old")]
    records[2].headers = [("trace", b"t2")]
    split = await keyed.split(_batch(records, clock), _queues())
    assert gate.admitted == 3 and gate.refused == [b"a"]
    producer = _Producer()
    futures = await keyed.send_split(producer, split, dead_letter=None)  # type: ignore[arg-type]
    assert futures == ["future-1"] and gate.deferred == 1
    ((topic, key, value, partition, headers),) = producer.sent
    assert (topic, key, value, partition) == ("app-per-key-deferred", b"a", b"a2", 2)
    assert headers == [("trace", b"t2"), (NOT_BEFORE, repr(clock() + 0.1).encode()),
                       (KEYED_LIMIT, b"per-key"), (SOURCE_TOPIC, b"src"),
                       (SOURCE_PARTITION, b"2"), (SOURCE_OFFSET, b"2")]
    assert gate.store[b"a"][1] == 1  # the level says one deferred record


async def test_a_batch_abandoned_after_its_split_gives_its_deferrals_back(
        clock: FakeClock) -> None:
    gate = _Gate(clock)
    keyed = KeyedBatches(gate)  # type: ignore[arg-type]
    batch = _batch(_records("aaaa"), clock)
    tp = batch.tp
    split = await keyed.split(batch, _queues())
    assert gate.buckets is not None and gate.buckets.deferred(b"a") == 2
    keyed.give_back(tp, split)
    assert gate.buckets.deferred(b"a") == 0  # not stuck deferred for good
    keyed.give_back(tp, None)  # abandoned before its split: nothing to give back
    clock.advance(1)  # read again: its key passes once its tokens are back
    again = await keyed.split(_batch(_records("aa"), clock), _queues())
    assert _values(again.admitted) == [b"a0", b"a1"]


def test_over_many_batches_every_record_passes_once_in_order_within_its_bound(
        clock: FakeClock) -> None:
    rate, burst = 20.0, 5.0
    rng = random.Random(7)
    buckets = KeyedTokenBuckets(rate, burst, clock=clock)
    heap: list[tuple[float, int, Any, Hashable]] = []  # the deferral agent: by not-before
    passed: dict[Hashable, list[tuple[int, float]]] = {}
    seq = 0
    for _ in range(200):  # batches of 0-30 records, 50 ms apart; one hot key
        batch = []
        for _ in range(rng.randrange(31)):
            key = "hot" if rng.random() < 0.5 else f"k{rng.randrange(6)}"
            seq += 1
            batch.append(SimpleNamespace(key=key, seq=seq))
        split = split_by_key(batch, buckets)
        for record in split.admitted:
            passed.setdefault(record.key, []).append((record.seq, clock()))
        for record, key, due in split.deferred:
            heapq.heappush(heap, (due, record.seq, record, key))
        clock.advance(0.05)
        while heap and heap[0][0] <= clock():  # back when due, oldest first
            due, _, record, key = heapq.heappop(heap)
            assert buckets.readmit(key, due) <= clock()
            passed.setdefault(key, []).append((record.seq, clock()))
    while heap:
        due, _, record, key = heapq.heappop(heap)
        clock.now = max(clock.now, due)
        buckets.readmit(key, due)
        passed.setdefault(key, []).append((record.seq, clock()))
    assert sum(len(v) for v in passed.values()) == seq  # every record, once
    for key, seen in passed.items():
        assert [s for s, _ in seen] == sorted(s for s, _ in seen), key  # the key's order
        times = [t for _, t in seen]
        worst = max(j - i + 1 - rate * (times[j] - times[i])
                    for i in range(len(times)) for j in range(i, len(times)))
        assert worst <= burst + 1e-6, key
    assert len(passed["hot"]) > rate * 10  # the hot key was over its limit: it was deferred


async def test_a_deferred_record_back_is_processed_alone() -> None:
    calls: list[list[Any]] = []

    def process_batch(values: list[Any]) -> list[Any]:
        calls.append(values)
        return [ValueError("no") if v == "bad" else v.upper() for v in values]

    async def async_batch(values: list[Any]) -> list[Any]:
        return process_batch(values)

    for fn in (process_batch, async_batch):
        process = one_at_a_time(fn)
        assert await process("a") == "A"
        with pytest.raises(ValueError, match="no"):  # then retried, dead-lettered per event
            await process("bad")
    assert calls == [["a"], ["bad"]] * 2
    with pytest.raises(BatchResultError):
        await one_at_a_time(lambda values: [1, 2])("a")
