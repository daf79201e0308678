"""The deferral agent's releaser on fakes of Faust's consumer, stream and messages: what it
hands back and the stream never acks (Faust clears the streams' queues when the flow stops)
is let go, so Faust's stop and rebalances do not wait for it for ever. And, on a virtual
clock, records back before their key's shifted time go back to the heap instead of making the
stream sleep: each key in order, within its bound, every record acked once."""

from __future__ import annotations

import asyncio
import heapq
import random
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from faust.exceptions import Skip

from faust_backpressure.agents.keyed import KeyedRateLimitGate
from faust_backpressure.agents.keyed_deferral import NOT_BEFORE, Deferrals
from faust_backpressure.limiters.keyed_buckets import KeyedTokenBuckets
from tests.unit.limiters.conftest import FakeClock


@dataclass(eq=False)
class _Message:
    topic: str = "hot-deferred"
    partition: int = 0
    offset: int = 11
    refcount: int = 1
    acked: bool = False
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    key: Any = None
    seq: int = 0

    def incref(self) -> None:
        self.refcount += 1


@dataclass(eq=False)
class _Event:
    message: _Message

    def ack(self) -> None:
        self.message.refcount -= 1


@dataclass
class _Consumer:
    suspend_flow: asyncio.Event = field(default_factory=asyncio.Event)
    _unacked_messages: set[Any] = field(default_factory=set)

    def assignment(self) -> set[Any]:
        return {("hot-deferred", 0)}


class _Channel:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    async def decode(self, message: _Message, propagate: bool = True) -> _Event:
        return _Event(message)


@dataclass
class _Stream:
    channel: _Channel = field(default_factory=_Channel)


@dataclass
class _App:
    _consumer: _Consumer = field(default_factory=_Consumer)

    @property
    def consumer(self) -> _Consumer:
        return self._consumer


async def test_a_record_handed_back_and_never_acked_is_let_go_when_the_flow_stops() -> None:
    app, target = _App(), _Stream()
    deferrals = Deferrals(app, "per-customer", clock=lambda: 100.0,  # type: ignore[arg-type]
                          target=lambda: target)  # type: ignore[arg-type,return-value]
    message = _Message()
    app.consumer._unacked_messages.add(message)
    heap: list[tuple[float, int, Any]] = []
    heapq.heappush(heap, (99.0, 1, _Event(message)))  # due
    releaser = asyncio.ensure_future(deferrals._release(heap, asyncio.Event()))
    try:
        handed = await asyncio.wait_for(target.channel.queue.get(), 2)
        assert handed.message is message and message.refcount == 1  # the stream holds it
        # (handed back and acked by the agent in the releaser's one step, before this resumes)
        assert message in app.consumer._unacked_messages  # flowing: Faust waits for its ack
        app.consumer.suspend_flow.set()  # a stop or rebalance; the queue's event is dropped
        for _ in range(40):
            if message not in app.consumer._unacked_messages:
                break
            await asyncio.sleep(0.05)
        assert message not in app.consumer._unacked_messages  # Faust's wait_empty can end
        assert not message.acked  # not acked: its offset is not committed, it is read again
    finally:
        releaser.cancel()


def _worst_excess(times: list[float], rate: float) -> float:
    return max(j - i + 1 - rate * (times[j] - times[i])
               for i in range(len(times)) for j in range(i, len(times)))


class _Partition:
    """One partition on a virtual clock: source events of a few hot keys and many quiet ones
    through the keyed gate's readmission (the real ``_readmit``), a deferral agent that is
    sometimes away and then releases everything due at once (so a key's records reach the
    stream out of their shifted order), and a stream that never sleeps (a wait fails)."""

    def __init__(self, seed: int, rate: float, burst: float) -> None:
        self.rng = random.Random(seed)
        self.clock = FakeClock()
        self.buckets = KeyedTokenBuckets(rate, burst, clock=self.clock)
        self.deferrals = Deferrals(_App(), "per-key", self.clock,  # type: ignore[arg-type]
                                   lambda: None)
        self.heap = self.deferrals._open()
        self.gate = SimpleNamespace(deferrals=self.deferrals, clock=self.clock, readmitted=0,
                                    _wait_until=self._no_wait)
        self.admitted: dict[Any, list[tuple[int, float]]] = {}
        self.messages: list[_Message] = []
        self.away_until = 0.0

    def _no_wait(self, value: Any, due: float) -> Any:
        raise AssertionError(f"the stream slept until {due}")

    def source(self, seq: int, key: str) -> None:
        if self.buckets.try_acquire(key):
            self.admitted.setdefault(key, []).append((seq, self.clock()))
            return
        not_before = self.buckets.defer(key)
        message = _Message(offset=seq, key=key, seq=seq,
                           headers=[(NOT_BEFORE, repr(not_before).encode())])
        self.messages.append(message)
        self.deferrals._push(not_before, _Event(message))  # the agent reads it

    def release_and_stream(self) -> None:
        if self.rng.random() < 0.003:
            self.away_until = self.clock() + self.rng.uniform(0.2, 2.0)
        queue: deque[_Event] = deque()  # the limited stream's queue
        while self.clock() >= self.away_until and self.heap and self.heap[0][0] <= self.clock():
            _, _, held = heapq.heappop(self.heap)  # the releaser: everything due, in order
            held.message.incref()  # redeliver
            queue.append(_Event(held.message))
            held.ack()  # the agent's (or the held event's) reference
        while queue:  # the stream, at once: nothing in it sleeps
            event = queue.popleft()
            try:
                KeyedRateLimitGate._readmit(self.gate, event, None,  # type: ignore[arg-type]
                                            self.buckets, event.message.key)
                self.admitted.setdefault(event.message.key, []).append(
                    (event.message.seq, self.clock()))
            except Skip:
                pass
            event.ack()  # the stream's ack


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_records_back_before_their_time_wait_in_the_heap_in_order_within_the_bound(
        seed: int) -> None:
    run = _Partition(seed, rate=20.0, burst=2.0)
    for seq in range(1, 4_001):
        run.clock.advance(run.rng.expovariate(400))
        run.release_and_stream()
        run.source(seq, run.rng.choice(["h1", "h2", "h3"]) if run.rng.random() < 0.5
                   else f"q{seq}")
    for _ in range(100_000):  # no more source events: the held ones drain
        if not run.heap:
            break
        run.clock.advance(max(0.001, run.heap[0][0] - run.clock()))
        run.release_and_stream()
    deferrals, messages = run.deferrals, run.messages
    assert deferrals.held_back > 50  # the agent came back late: records were held again
    for key, passed in run.admitted.items():
        assert [s for s, _ in passed] == sorted(s for s, _ in passed), key  # in order
        assert _worst_excess([t for _, t in passed], 20.0) <= 2.0 + 1e-6, key
    assert not run.heap and all(m.refcount == 0 for m in messages)  # every record acked
    passed = sorted((k, s) for k, p in run.admitted.items() for s, _ in p)
    assert len(passed) == len(set(passed))  # once each
    assert {(m.key, m.seq) for m in messages} <= set(passed)  # nothing lost
    assert deferrals._held == {} and deferrals._held_keys == {}


@dataclass
class _TransactionalApp(_App):
    in_transaction: bool = True  # exactly_once (Faust's ``App.in_transaction``)


class _AssignedConsumer(_Consumer):
    def assignment(self) -> set[Any]:
        return {("hot-deferred", 0), ("hot-deferred", 1)}


async def test_under_exactly_once_a_partitions_records_go_back_in_offset_order() -> None:
    """Offset 5 of partition 0 is due after 6 and 7 (another key's): 6 and 7 wait for it, so
    no record is processed, and its outputs committed, ahead of an earlier offset that is
    still held; partition 1 is not held back by partition 0."""
    clock = FakeClock(start=0.0)
    app, target = _TransactionalApp(_consumer=_AssignedConsumer()), _Stream()
    deferrals = Deferrals(app, "per-key", clock,  # type: ignore[arg-type]
                          target=lambda: target)  # type: ignore[arg-type,return-value]
    heap = deferrals._open()
    dues = {(0, 5): 3.0, (0, 6): 1.0, (0, 7): 1.0, (1, 2): 1.0}
    for (partition, offset), due in dues.items():
        deferrals._push(due, _Event(_Message(partition=partition, offset=offset)))
    releaser = asyncio.ensure_future(deferrals._release(heap, deferrals._wake))
    handed: list[tuple[int, int]] = []

    async def take() -> None:
        while not target.channel.queue.empty():
            event = target.channel.queue.get_nowait()
            handed.append((event.message.partition, event.message.offset))
        await asyncio.sleep(0.01)

    try:
        clock.advance(1.5)  # 6, 7 and partition 1's 2 are due; 5 is not
        deferrals._wake.set()
        for _ in range(20):
            await take()
        assert handed == [(1, 2)] and deferrals.backlog == 3  # 6 and 7 parked behind 5
        assert deferrals.hold("k", _Event(_Message()), 9.0) is False  # the stream waits
        clock.advance(2.0)
        deferrals._wake.set()
        for _ in range(20):
            await take()
        assert handed == [(1, 2), (0, 5), (0, 6), (0, 7)] and deferrals.backlog == 0
    finally:
        releaser.cancel()
