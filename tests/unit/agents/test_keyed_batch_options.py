"""A keyed limit's ``key=``, ``cost=``, ``on_limit="shed"`` and ``"wait"`` in a batch (pure, on
a virtual clock): the functions get the record as an event; refused costs go to the DLQ; costs
are summed per key; shed records leave on their own; a waiting batch is cut within each key's
burst and takes its tokens when it goes on. Over many batches, in every mode: every record
once, each key in order (defer, wait), each key within its bound counting costs."""

from __future__ import annotations

import asyncio
import heapq
import math
import random
from collections.abc import Hashable
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP as FaustTP

from faust_backpressure.agents.batch import BatchQueues
from faust_backpressure.agents.headers import SHED_REASON, SOURCE_OFFSET
from faust_backpressure.agents.keyed_batch import (
    BatchEvent,
    KeyedBatches,
    cut_for_wait,
    keys_and_costs,
    permits_of,
    run_beside_readmitted,
    split_by_key,
    wait_for_keys,
)
from faust_backpressure.limiters.keyed_buckets import KeyedTokenBuckets
from tests.unit.agents.test_keyed_batch import _batch, _Gate, _Producer, _Record, _values
from tests.unit.limiters.conftest import FakeClock

TP = FaustTP("src", 2)


def _costed(spec: str) -> list[_Record]:
    """``"a2 b1 a0"``: records of key a (cost 2), b (cost 1), a (cost 0); the cost in the
    value, after the key and the position."""
    return [_Record(item[0].encode(), b"%s%d:%s" % (item[0].encode(), i, item[1:].encode()),
                    offset=i) for i, item in enumerate(spec.split())]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _cost(event: Any) -> int:
    return int(event.value.split(b":")[1])


class _Sleeper:
    """A sleep on the virtual clock: advances it; False once ``stop_after`` sleeps."""

    def __init__(self, clock: FakeClock, stop_after: int | None = None) -> None:
        self.clock, self.stop_after, self.slept = clock, stop_after, []  # type: list[float]

    async def __call__(self, delay: float) -> bool:
        if self.stop_after is not None and len(self.slept) >= self.stop_after:
            return False
        self.slept.append(delay)
        self.clock.advance(delay)
        return True


def test_the_functions_get_the_record_as_a_pipelines_event() -> None:
    record = _Record(b"k", b"v", headers=[("trace", b"t1")], offset=7)
    event = BatchEvent.of(record)
    # what a per-event pipeline's Faust Event of its raw source has: bytes, a dict, the message
    assert (event.key, event.value, event.headers) == (b"k", b"v", {"trace": b"t1"})
    assert event.message is record and event.message.offset == 7


def test_a_cost_is_a_finite_number_at_least_0_truncated_as_per_event() -> None:
    assert [permits_of(c) for c in (0, 1, 3, 2.9, 0.5)] == [0, 1, 3, 2, 0]
    for bad in (-1, -0.5, math.nan, math.inf, "3", None, True, b"1"):
        with pytest.raises((TypeError, ValueError), match="cost must be"):
            permits_of(bad)


def test_records_whose_functions_refuse_them_leave_with_their_stage(clock: FakeClock) -> None:
    def key_of(event: Any) -> Hashable:
        if event.value.startswith(b"x"):
            raise KeyError("no customer")
        return event.value[:1]

    def cost_of(event: Any) -> Any:
        return {b"a": 2, b"b": -1, b"c": "two"}.get(event.value[:1], 1)

    gate = _Gate(clock, key=key_of, cost=cost_of)
    records = [_Record(b"r", v, offset=i) for i, v in enumerate([b"a0", b"x1", b"b2", b"c3",
                                                                  b"d4"])]
    entries, refused = keys_and_costs(gate, records)
    assert [(r.value, key, permits) for r, key, permits in entries] == [(b"a0", b"a", 2),
                                                                          (b"d4", b"d", 1)]
    assert [(r.value, f.stage, type(f.error).__name__, f.attempts) for r, f in refused] == [
        (b"x1", "key", "KeyError", 0), (b"b2", "cost", "ValueError", 0),
        (b"c3", "cost", "TypeError", 0)]
    # the key function's keys checked against their partition, as per event
    assert [key for _, key in gate.checked] == [b"a", b"d"]
    assert all(isinstance(event, BatchEvent) for event, _ in gate.checked)


def test_costs_are_summed_per_key_and_a_free_record_does_not_overtake(clock: FakeClock) -> None:
    buckets = KeyedTokenBuckets(10, 4, clock=clock)
    records = _costed("a2 b3 a2 b2 c9 a0")
    split = split_by_key(records, buckets, cost_of=lambda r: _cost(r))
    # a: 2+2+0 = 4 at once; b: 3+2 > 4, so 3 passes, 2 is deferred; c: 9 capped at the burst
    assert _values(split.admitted) == [b"a0:2", b"b1:3", b"a2:2", b"c4:9", b"a5:0"]
    assert [r.value for r, _, _ in split.deferred] == [b"b3:2"]
    # b's 2 permits reserved: due when its bucket has them again (1 left, +1 at 10/s)
    assert split.deferred[0][2] - clock() == pytest.approx(0.1)
    assert buckets.tokens(b"a") == pytest.approx(0, abs=1e-9)
    assert buckets.tokens(b"c") == pytest.approx(0, abs=1e-9)
    free = split_by_key(_costed("b0 a0"), buckets, cost_of=lambda r: _cost(r))
    assert _values(free.admitted) == [b"a1:0"]  # a takes nothing for 0
    assert [r.value for r, _, _ in free.deferred] == [b"b0:0"]  # behind b's deferred record


def test_shedding_refuses_each_record_on_its_own(clock: FakeClock) -> None:
    buckets = KeyedTokenBuckets(10, 4, clock=clock)
    split = split_by_key(_costed("a3 a3 a1 b2"), buckets, cost_of=lambda r: _cost(r), shed=True)
    # a: 7 > 4, so one by one: 3 passes, 3 is shed, then 1 still fits (as per event)
    assert _values(split.admitted) == [b"a0:3", b"a2:1", b"b3:2"]
    assert [(r.value, key, permits) for r, key, permits in split.shed] == [(b"a1:3", b"a", 3)]
    assert split.deferred == [] and buckets.deferred(b"a") == 0


async def test_shed_and_refused_records_are_outputs_of_the_batch(clock: FakeClock) -> None:
    gate = _Gate(clock, on_limit="shed", cost=_cost)
    keyed = KeyedBatches(gate)  # type: ignore[arg-type]
    records = _costed("a2 a1 a2 b-1")
    records[2].headers = [("trace", b"t2")]
    split = await keyed.split(_batch(records, clock), BatchQueues(100, 0.05))
    assert _values(split.admitted) == [b"a0:2"]
    assert [r.value for r, _, _ in split.shed] == [b"a1:1", b"a2:2"]  # 2 of 2 gone: 1 shed
    assert [(r.value, f.stage) for r, f in split.rejected] == [(b"b3:-1", "cost")]
    assert gate.refused == [b"a", b"a"]
    producer, dead = _Producer(), []

    async def dead_letter(producer: Any, record: Any, failure: Any) -> str:
        dead.append((record.value, failure.stage))
        return "dlq-future"

    futures = await keyed.send_split(producer, split, dead_letter)
    assert futures == ["future-1", "future-2", "dlq-future"] and gate.shed == 2
    assert dead == [(b"b3:-1", "cost")]
    (t1, k1, v1, p1, h1), (_, _, v2, _, h2) = producer.sent
    assert (t1, k1, v1, p1) == ("src-shed", b"a", b"a1:1", None)  # the default partitioner
    assert dict(h1)[SHED_REASON] == b"rate limit: 1 permit(s) refused (keyed)"
    assert dict(h1)[SOURCE_OFFSET] == b"1" and ("trace", b"t2") in h2 and v2 == b"a2:2"


def test_a_waiting_batch_is_cut_where_a_key_would_exceed_its_burst() -> None:
    def entries(spec: str) -> list[tuple[Any, Hashable, int]]:
        return [(i, item[0], int(item[1:])) for i, item in enumerate(spec.split())]

    burst = {"a": 4.0, "b": 2.0}.get
    assert cut_for_wait(entries("a2 b1 a2 b1"), burst) == (4, {"a": 4, "b": 2})  # within
    assert cut_for_wait(entries("a2 b1 a2 b2 a1"), burst) == (3, {"a": 4, "b": 1})  # b's 3 > 2
    assert cut_for_wait(entries("a9 a1"), burst) == (1, {"a": 4})  # alone, capped at the burst
    assert cut_for_wait(entries("b0 b2 b0 b1"), burst) == (3, {"b": 2})
    assert cut_for_wait([], burst) == (0, {})


async def test_a_batch_waits_for_every_key_then_takes_their_tokens(clock: FakeClock) -> None:
    buckets = KeyedTokenBuckets(10, 4, clock=clock)
    assert buckets.try_acquire("hot", 4)  # empty: 4 tokens in 0.4 s
    sleeper = _Sleeper(clock)
    waited = await wait_for_keys(lambda: _Context(buckets), {"hot": 3.0, "cold": 4.0}, clock,
                                 sleeper)
    assert waited == ["hot"] and sum(sleeper.slept) == pytest.approx(0.3)
    # taken when it went on: cold's tokens at 0.3 s, not before (no double burst later)
    assert buckets.tokens("hot") == pytest.approx(0, abs=1e-9)
    assert buckets.tokens("cold") == pytest.approx(0, abs=1e-9)
    stopped = _Sleeper(clock, stop_after=0)
    assert await wait_for_keys(lambda: _Context(buckets), {"hot": 1.0}, clock, stopped) is None
    assert buckets.tokens("hot") == pytest.approx(0, abs=1e-9)  # nothing taken: read again


class _Context:
    def __init__(self, buckets: KeyedTokenBuckets) -> None:
        self.buckets = buckets

    def __enter__(self) -> KeyedTokenBuckets:
        return self.buckets

    def __exit__(self, *exc: Any) -> None:
        pass


async def test_a_cut_batchs_rest_is_its_partitions_next_batch(clock: FakeClock) -> None:
    gate = _Gate(clock, on_limit="wait", burst=3, cost=_cost)
    keyed = KeyedBatches(gate)  # type: ignore[arg-type]
    sleeper = keyed.sleep = _Sleeper(clock)
    queues = BatchQueues(100, 0.05)
    queues.add(TP, _costed("a2 b1 a1 a1 x-3 b1"), 0, 1, clock())
    batch = queues.next_ready(clock() + 1)
    assert batch is not None
    queues.add(TP, [_Record(b"c", b"c6:1", offset=6)], 6, 1, clock())  # fetched meanwhile
    split = await keyed.split(batch, queues)
    assert _values(split.admitted) == [b"a0:2", b"b1:1", b"a2:1"] and batch.last == 2
    assert split.rejected == []  # x4 is after the cut: the next batch's
    rest = queues.next_ready(clock() + 1)
    assert rest is not None and (rest.first, rest.last) == (3, 6)
    assert _values(rest.records) == [b"a3:1", b"x4:-3", b"b5:1", b"c6:1"]
    later = await keyed.split(rest, queues)
    assert _values(later.admitted) == [b"a3:1", b"b5:1", b"c6:1"]
    assert [r.value for r, _ in later.rejected] == [b"x4:-3"]
    assert sleeper.slept == pytest.approx([0.1])  # a: 3 taken, 1 more due in 0.1 s
    assert gate.waits == 3 and gate.refused == [b"a"]


@pytest.mark.parametrize("mode", ["defer", "shed", "wait"])
async def test_over_many_batches_every_record_once_in_order_within_its_bound(
        mode: str, clock: FakeClock) -> None:
    rate, burst = 20.0, 6.0
    rng = random.Random(11)
    gate = _Gate(clock, on_limit=mode, cost=_cost, rate=rate, burst=burst)
    assert gate.buckets is not None
    keyed = KeyedBatches(gate)  # type: ignore[arg-type]
    keyed.sleep = _Sleeper(clock)
    queues = BatchQueues(40, 0.05)
    heap: list[tuple[float, int, Any, Hashable]] = []  # the deferral agent: by not-before
    passed: dict[Hashable, list[tuple[int, float, int]]] = {}  # key: (offset, time, cost)
    gone: list[int] = []  # shed or refused offsets
    offset = 0
    for _ in range(150):  # 0-30 records a step, 50 ms apart; one hot key; costs 0-3, some bad
        chunk = []
        for _ in range(rng.randrange(31)):
            key = b"hot" if rng.random() < 0.5 else b"k%d" % rng.randrange(6)
            cost = rng.choice([0, 1, 1, 2, 3, -1] if rng.random() < 0.05 else [0, 1, 1, 2, 3])
            chunk.append(_Record(key, b"%s%d:%d" % (key, offset, cost), offset=offset))
            offset += 1
        if chunk:
            queues.add(TP, chunk, chunk[0].offset, 1, clock())
        while (batch := queues.next_ready(clock() + 1)) is not None:
            split = await keyed.split(batch, queues)
            for record in split.admitted:
                passed.setdefault(record.key, []).append((record.offset, clock(), _cost(record)))
            for record, key, due in split.deferred:
                heapq.heappush(heap, (due, record.offset, record, key))
            gone += [r.offset for r, _, _ in split.shed] + [r.offset for r, _ in split.rejected]
        clock.advance(0.05)
        while heap and heap[0][0] <= clock():  # back when due, oldest first
            due, _, record, key = heapq.heappop(heap)
            assert gate.buckets.readmit(key, due) <= clock() + 1e-9
            passed.setdefault(key, []).append((record.offset, clock(), _cost(record)))
    while heap:
        due, _, record, key = heapq.heappop(heap)
        clock.now = max(clock.now, due)
        gate.buckets.readmit(key, due)
        passed.setdefault(key, []).append((record.offset, clock(), _cost(record)))
    seen = sorted([o for v in passed.values() for o, _, _ in v] + gone)
    assert seen == list(range(offset))  # every record, once
    for key, admitted in passed.items():
        if mode != "shed":
            assert [o for o, _, _ in admitted] == sorted(o for o, _, _ in admitted), key
        assert _worst(admitted, rate, burst) <= burst + 1e-6, key
    hot_cost = sum(c for _, _, c in passed[b"hot"])
    assert hot_cost > rate * 7.5 * 0.5  # the hot key was over its limit, and held to it
    assert (len(gone) > 50) == (mode == "shed")


def _worst(admitted: list[tuple[int, float, int]], rate: float, burst: float) -> float:
    """The most permits (each capped at the burst) admitted in any window [t_i, t_j] less
    ``rate * (t_j - t_i)``: at most the burst if the bound holds (prefix sums: O(n))."""
    worst, best_start, taken = -math.inf, -math.inf, 0.0
    for _, at, cost in admitted:
        best_start = max(best_start, rate * at - taken)  # window starting here
        taken += min(cost, burst)
        worst = max(worst, taken - rate * at + best_start)
    return worst


async def test_a_readmitted_record_puts_its_limit_key_in_flight(clock: FakeClock) -> None:
    gate = _Gate(clock, key=lambda event: event.value[:1])  # the limit's key: a value field
    keyed = KeyedBatches(gate)  # type: ignore[arg-type]
    seen: list[tuple[bool, bool]] = []

    async def handle(event: Any) -> None:
        seen.append((b"v" in keyed.in_flight, event.key in keyed.in_flight))

    class _Stream:
        async def events(self) -> Any:
            yield SimpleNamespace(key=b"record-key", value=b"v1")

    async def run_forever() -> None:
        await asyncio.Event().wait()

    pipeline = SimpleNamespace(batch=SimpleNamespace(run=run_forever), handle=handle)
    await run_beside_readmitted(pipeline, keyed, _Stream())  # type: ignore[arg-type]
    assert seen == [(True, False)] and b"v" not in keyed.in_flight
