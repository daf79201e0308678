"""Priority shedding in a batch pipeline (docs/batching.md, "Priority shedding in a batch"):
the split below the shed level, no tokens for shed records, the shed sends as outputs of the
batch with the per-event gate's headers and counts, a cut batch's later shed records decided
again. A real (unstarted) pipeline and its runner; a fake producer stands in for aiokafka's."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import faust
import pytest
from faust.types import TP

from faust_backpressure.agents import headers as h
from faust_backpressure.agents.batch import Batch
from faust_backpressure.agents.batch_priority import split_low
from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.limiters import TokenBucketRateLimiter
from tests.unit.limiters.conftest import FakeClock


@dataclass
class _Record:
    """An aiokafka ``ConsumerRecord``'s fields a batch reads."""

    value: bytes
    offset: int
    key: bytes = b"k"
    topic: str = "src"
    partition: int = 1
    headers: list[tuple[str, bytes]] = field(default_factory=lambda: [("trace", b"t")])


def _records(values: str) -> list[_Record]:
    """One record per character: its priority digit (``x``: no priority), offset 10 + i."""
    return [_Record(b"%s-%d" % (c.encode(), i), 10 + i) for i, c in enumerate(values)]


def _priority(value: bytes) -> int:
    return int(value[:1])  # b"x..." raises: no priority, not shed


class _Sensor:
    def __init__(self) -> None:
        self.shed: list[tuple[str, str, str, int]] = []

    def on_rate_limit_shed(self, agent: str, limiter: str, topic: str, permits: int) -> None:
        self.shed.append((agent, limiter, topic, permits))


class _Producer:
    """aiokafka's ``send``: returns a future of the record's ack (done at once here, but
    for the ``held`` topic's records, acked by :meth:`ack_held`)."""

    def __init__(self, held: str | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, dict[str, bytes]]] = []
        self.held = held
        self.unacked: list[asyncio.Future[str]] = []

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[str]:
        self.sent.append((topic, value, key, dict(headers or [])))
        future = asyncio.get_running_loop().create_future()
        if topic == self.held:
            self.unacked.append(future)
        else:
            future.set_result(f"{topic}@{len(self.sent)}")
        return future

    def ack_held(self) -> None:
        for future in self.unacked:
            future.set_result("held")


def _pipeline(limiter: TokenBucketRateLimiter, calls: list[list[bytes]]) -> Any:
    app = faust.App("batch-priority-unit", broker="kafka://localhost:1")
    sensor = _Sensor()
    app.sensors.add(sensor)  # type: ignore[arg-type]

    def process(values: list[bytes]) -> list[bytes]:
        calls.append(list(values))
        return [b"out:" + v for v in values]

    pipe = Backpressure(app, settings=BackpressureSettings()).pipeline(
        "p", source="src", sink="out", process_batch=process, batch_size=16,
        limiter=limiter, priority=_priority)
    pipe.sensor = sensor
    return pipe


def _batch(records: list[_Record]) -> Batch:
    return Batch(TP("src", 1), list(records), records[0].offset, records[-1].offset, 1, 0.0)


def test_records_below_the_level_are_split_off_the_others_kept_in_order() -> None:
    pipe = _pipeline(TokenBucketRateLimiter(100, 16), [])
    gate = pipe.gate
    records = _records("0213x12")
    assert split_low(gate, records) == (records, [])  # no level: all kept, none decoded
    gate.shed_threshold = 2
    kept, low = split_low(gate, records)
    assert [r.value for r in kept] == [b"2-1", b"3-3", b"x-4", b"2-6"]  # x: no priority
    assert [(r.value, why) for r, why in low] == [
        (b"0-0", (0, 2)), (b"1-2", (1, 2)), (b"1-5", (1, 2))]


async def test_shed_records_cost_no_tokens_and_are_outputs_of_the_batch() -> None:
    clock = FakeClock()
    limiter = TokenBucketRateLimiter(1, 16, clock=clock)
    calls: list[list[bytes]] = []
    pipe = _pipeline(limiter, calls)
    gate, runner = pipe.gate, pipe.batch
    gate.shed_threshold = 2
    batch = _batch(_records("0213x12" + "0" * 9))  # 12 low of 16
    await runner._gates(batch)
    assert len(batch) == 4 and len(batch.low) == 12
    assert limiter.try_acquire(12) and not limiter.try_acquire(1)  # 4 of 16 taken
    producer = _Producer()
    completion = await runner._send_batch(batch, producer)
    await completion  # every send acked: what the batch's offsets wait for
    assert calls == [[b"2-1", b"3-3", b"x-4", b"2-6"]]  # process_batch gets the kept only
    sinks = [s for s in producer.sent if s[0] == "out"]
    shed = [s for s in producer.sent if s[0] == "src-shed"]
    assert len(sinks) == 4 and len(shed) == 12 and len(producer.sent) == 16
    _, value, key, headers = shed[0]
    assert (value, key) == (b"0-0", b"k")  # the raw record as it came
    assert headers[h.SHED_REASON] == (b"load shedding: priority 0 < shed level 2 "
                                      b"(critical downstream lag)")
    assert headers[h.SHED_PRIORITY] == b"0" and headers["trace"] == b"t"
    assert headers[h.SHED_AGENT] == b"pipeline:p"
    assert (headers[h.SOURCE_TOPIC], headers[h.SOURCE_PARTITION],
            headers[h.SOURCE_OFFSET]) == (b"src", b"1", b"10")
    assert shed[1][3][h.SHED_PRIORITY] == b"1"
    # counted as the per-event gate counts: shed, shed_by_priority, sensors; not consumed
    assert gate.shed == gate.shed_by_priority == 12
    assert gate.stats().shed_by_priority == 12
    assert pipe.sensor.shed == [("pipeline:p", gate.name, "src-shed", 0)] * 12
    assert pipe.stats.consumed == 4 and pipe.stats.produced == 4


async def test_a_batch_shed_entirely_asks_the_limiter_for_nothing() -> None:
    clock = FakeClock()
    limiter = TokenBucketRateLimiter(1, 16, clock=clock)
    calls: list[list[bytes]] = []
    pipe = _pipeline(limiter, calls)
    assert limiter.try_acquire(16)  # empty: a batch asking for anything would wait
    pipe.gate.shed_threshold = 5
    batch = _batch(_records("0123"))
    await asyncio.wait_for(pipe.batch._gates(batch), 1.0)
    producer = _Producer()
    await (await pipe.batch._send_batch(batch, producer))
    assert calls == [] and [s[0] for s in producer.sent] == ["src-shed"] * 4
    assert pipe.gate.waits == 0


async def test_a_batch_is_complete_only_once_its_shed_records_are_acked() -> None:
    """At_least_once a batch's offsets are acked when its completion is done: the shed
    records must be in Kafka by then (exactly_once they are in its transaction)."""
    pipe = _pipeline(TokenBucketRateLimiter(100, 16), [])
    pipe.gate.shed_threshold = 1
    batch = _batch(_records("0101"))
    await pipe.batch._gates(batch)
    producer = _Producer(held="src-shed")
    completion = await pipe.batch._send_batch(batch, producer)
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(producer.unacked) == 2 and not completion.done()  # the sinks' acks came
    producer.ack_held()
    await asyncio.wait_for(completion, 1.0)


def test_a_cut_batch_gives_its_later_shed_records_back_with_the_rest() -> None:
    records = _records("02120")
    batch = _batch(records)
    batch.records = [records[1], records[3]]
    batch.low = [(records[0], (0, 2)), (records[2], (1, 2)), (records[4], (0, 2))]
    rest = batch.cut(1)  # a keyed wait ends the batch before offset 13
    assert batch.last == 12 and batch.records == [records[1]]
    assert [r for r, _ in batch.low] == [records[0], records[2]]  # within its range
    assert rest == [records[3], records[4]]  # in offset order, decided again next batch


def test_priority_is_taken_in_batch_mode_and_still_needs_a_limiter() -> None:
    pipe = _pipeline(TokenBucketRateLimiter(100, 16), [])
    assert pipe.batch is not None and pipe.gate.priority is not None
    app = faust.App("batch-priority-unit-2", broker="kafka://localhost:1")
    with pytest.raises(ValueError, match="priority= needs a limiter"):
        Backpressure(app, settings=BackpressureSettings()).pipeline(
            "p", source="src", sink="out", process_batch=list, priority=_priority)
