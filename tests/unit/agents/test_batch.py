"""Batch assembly and result mapping of batch pipelines (pure; clocks are passed in)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import faust
import pytest

from faust_backpressure.agents.batch import BatchQueues, BatchResultError, check_results, outputs_of
from faust_backpressure.agents.batch_pipeline import BatchRunner
from faust_backpressure.agents.downstream import build_downstream
from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.limiters import TokenBucketRateLimiter


@dataclass
class Rec:
    offset: int


def recs(*offsets: int) -> list[Rec]:
    return [Rec(o) for o in offsets]


def test_a_full_batch_is_ready_at_once_and_covers_consecutive_ranges() -> None:
    queues = BatchQueues(batch_size=3, batch_timeout=1.0)
    queues.add("p0", recs(10, 11, 12, 14, 15), first=8, generation=1, now=0.0)
    first = queues.next_ready(now=0.0)
    assert first is not None
    assert [r.offset for r in first.records] == [10, 11, 12]
    # offsets 8-9 (before the chunk's first record) and 13 (before the next batch's) are
    # markers: each batch's range reaches the next one's, no hole for the commit to stop at
    assert (first.first, first.last) == (8, 13)
    assert queues.next_ready(now=0.5) is None  # two records left: not full, not timed out
    queues.add("p0", recs(16, 17), first=16, generation=1, now=0.6)
    second = queues.next_ready(now=0.6)
    assert second is not None and [r.offset for r in second.records] == [14, 15, 16]
    assert (second.first, second.last) == (14, 16)
    assert queues.next_ready(now=1.5) is None  # the rest arrived at 0.6: times out at 1.6
    last = queues.next_ready(now=1.6)
    assert last is not None and (last.first, last.last) == (17, 17) and len(queues) == 0


def test_partitions_take_turns_and_a_busy_one_can_be_skipped() -> None:
    queues = BatchQueues(batch_size=2, batch_timeout=0.05)
    queues.add("a", recs(0, 1, 2, 3), first=0, generation=1, now=0.0)
    queues.add("b", recs(0, 1, 2, 3), first=0, generation=1, now=0.0)
    order = [queues.next_ready(0.0) for _ in range(4)]
    assert [b.tp for b in order if b is not None] == ["a", "b", "a", "b"]
    queues.add("a", recs(4, 5), first=4, generation=1, now=0.0)
    queues.add("b", recs(4, 5), first=4, generation=1, now=0.0)
    batch = queues.next_ready(0.0, skip=["a"])
    assert batch is not None and batch.tp == "b"


def test_a_batch_never_mixes_generations_and_revoked_partitions_are_dropped() -> None:
    queues = BatchQueues(batch_size=10, batch_timeout=5.0)
    queues.add("p", recs(0, 1), first=0, generation=1, now=0.0)
    queues.add("p", recs(2, 3), first=2, generation=2, now=0.0)
    batch = queues.next_ready(now=0.0)  # not full, but the generation changed: ready
    assert batch is not None and batch.generation == 1 and batch.last == 1
    queues.clear(["p"])
    assert len(queues) == 0 and queues.deadline() is None and queues.next_ready(10.0) is None


def test_deadline_is_the_oldest_record_plus_the_timeout() -> None:
    queues = BatchQueues(batch_size=10, batch_timeout=0.05)
    assert queues.deadline() is None
    queues.add("p", recs(0), first=0, generation=1, now=2.0)
    queues.add("q", recs(0), first=0, generation=1, now=1.0)
    assert queues.deadline() == pytest.approx(1.05)


def test_results_one_per_value_and_their_outputs() -> None:
    assert check_results([1, 2], (x for x in "ab")) == ["a", "b"]
    with pytest.raises(BatchResultError, match="1 result"):
        check_results([1, 2], [1])
    with pytest.raises(BatchResultError, match="list"):
        check_results([1], 1)
    assert outputs_of(None) == () and outputs_of([1, 2]) == [1, 2]
    assert outputs_of(5) == (5,) and outputs_of(x for x in (1, 2)) == [1, 2]


def _pipeline(**options: Any) -> Any:
    app = faust.App("batch-unit", broker="kafka://localhost:1")
    return Backpressure(app, settings=BackpressureSettings()).pipeline(
        "p", source="src", sink="out", **options)


def test_a_failing_call_is_split_down_to_the_poison_value() -> None:
    calls: list[int] = []

    def process(values: list[int]) -> list[int]:
        calls.append(len(values))
        if 13 in values:
            raise ValueError("13 is poison")
        return [v * 2 for v in values]

    pipe = _pipeline(process_batch=process, batch_size=16)
    results = asyncio.run(pipe.batch._call(list(range(16))))
    assert results[:13] == [v * 2 for v in range(13)] and results[14:] == [28, 30]
    assert isinstance(results[13], ValueError)
    assert len(calls) == 9  # 16, then halves down to the one value: 1 + 2 * log2(16)


class VirtualClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("guarded", [False, True])
def test_a_batch_is_timed_from_its_first_record_to_done_and_in_its_calls(guarded: bool) -> None:
    clock = VirtualClock()

    def process(values: list[int]) -> list[int]:
        clock.advance(0.01 * len(values))  # 10 ms a value
        if 13 in values:
            raise ValueError("13 is poison")
        return values

    options: dict[str, Any] = {"downstream": build_downstream(
        "api", max_concurrency=4, limit="fixed", learn_quota=False)} if guarded else {}
    pipe = _pipeline(process_batch=process, batch_size=16, **options)
    runner = BatchRunner(pipe, process, 16, 0.05, clock=clock)
    runner.divert("p0", recs(*range(16)), 0, 1)
    batch = runner.queues.next_ready(clock())
    assert batch is not None and batch.opened_at == clock()
    clock.advance(0.05)  # waited for the limiter
    asyncio.run(runner._call([r.offset for r in batch.records], batch))
    # every call counts, the split ones too: 16 + 8 + 8 + 4 + 4 + 2 + 1 + 1 + 2 values
    assert batch.processing == pytest.approx(0.46)
    clock.advance(0.1)  # its sends acked
    runner._done(batch)
    latency, processing = runner.latency.summary(), runner.processing.summary()
    assert runner.batches == latency.count == processing.count == 1
    assert latency.p50 == latency.p99 == pytest.approx(0.05 + 0.46 + 0.1)
    assert processing.p95 == pytest.approx(0.46) and sum(processing.buckets) == 1


def test_a_seek_back_drops_what_is_held_from_there_unless_it_is_sending() -> None:
    """Faust seeks a partition back twice in one generation at times (its recovery, then its
    fetcher); the records the runner still held from there on are delivered again, and run
    here as well they ran twice: exactly_once copies (docs/reliability.md)."""
    clock = VirtualClock()
    pipe = _pipeline(process_batch=lambda values: values, batch_size=4)
    runner = BatchRunner(pipe, lambda values: values, 4, 0.05, clock=clock)
    runner.divert("p0", recs(*range(10, 16)), 10, 1)
    runner.divert("p0", recs(*range(16, 22)), 16, 1)
    runner.divert("p1", recs(0, 1), 0, 1)
    runner._current = current = runner.queues.next_ready(clock())  # 10..13, in progress
    assert current is not None and current.tp == "p0"
    runner.sought("p0", 16)  # read again from 16 on: 16..21 leave the queue, 14, 15 stay
    assert not current.stale and runner.queues.size("p0") == 2
    runner.sought("p0", 12)  # within it: it goes on (giving up would leave 10, 11 unread)
    assert not current.stale and runner.seeks._recheck == {"p0": 13}  # 12, 13 skipped later
    assert runner.queues.size("p0") == 0
    runner.sought("p0", 10)  # from the batch's own first offset: it gives up as well
    assert current.stale and not current.start_sending()
    assert runner.queues.size("p0") == 0 and runner.queues.size("p1") == 2
    runner.sought("p1", 5)  # after all it holds: nothing changes
    clock.advance(0.05)
    runner._current = sending = runner.queues.next_ready(clock())
    assert sending is not None and (sending.tp, sending.first, sending.last) == ("p1", 0, 1)
    assert sending.start_sending()  # its outputs are on their way: it finishes, not given up
    runner.sought("p1", 0)
    assert not sending.stale
    # it finished (acked 0, 1; 2 was never read); its records come again from 0
    runner.app = SimpleNamespace(consumer=SimpleNamespace(  # type: ignore[assignment]
        _committed_offset={}, _acked_index={"p1": {0, 1}}))
    runner.divert("p1", recs(0, 1, 2), 0, 1)
    clock.advance(0.05)
    again = runner.queues.next_ready(clock())
    assert again is not None
    runner.seeks.skip_processed(runner.app, again)
    assert [r.offset for r in again.records] == [2] and runner.seeks.skipped == 2
    runner.divert("p1", recs(3), 3, 1)
    clock.advance(0.05)
    later = runner.queues.next_ready(clock())
    assert later is not None
    runner.app.consumer._committed_offset["p1"] = 4  # e.g. committed since: not looked at
    runner.seeks.skip_processed(runner.app, later)  # past the sending batch's end
    assert [r.offset for r in later.records] == [3]


def test_batch_options_are_checked() -> None:
    with pytest.raises(ValueError, match="process= or process_batch="):
        _pipeline()
    # ordered_by_key is built (tests/unit/agents/test_batch_order.py)
    assert _pipeline(process_batch=list, ordered_by_key=True).batch.chains is not None
    assert _pipeline(process_batch=list).batch.chains is None
    # priority= is built (tests/unit/agents/test_batch_priority.py)
    assert _pipeline(process_batch=list, priority=len,
                     limiter=TokenBucketRateLimiter(1e3, 1e3)).gate.priority is not None
    with pytest.raises(ValueError, match="above the limiter's burst"):
        _pipeline(process_batch=list, batch_size=500,
                  limiter=TokenBucketRateLimiter(100, 100))
    with pytest.raises(ValueError, match="batch_size"):
        _pipeline(process_batch=list, batch_size=0)
