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


def _run_stream(seed: int) -> tuple[Deferrals, dict[Any, list[tuple[int, float]]],
                                    list[_Message], int]:
    """One partition on a virtual clock: source events of a few hot keys and many quiet ones
    through the keyed gate's readmission (the real ``_readmit``), a deferral agent that is
    sometimes away and then releases everything due at once (so a key's records reach the
    stream out of their shifted order), and a stream that never sleeps (a wait fails)."""
    rng = random.Random(seed)
    clock = FakeClock()
    rate, burst = 20.0, 2.0
    buckets = KeyedTokenBuckets(rate, burst, clock=clock)
    deferrals = Deferrals(_App(), "per-key", clock, lambda: None)  # type: ignore[arg-type]
    heap = deferrals._open()

    def no_wait(value: Any, due: float) -> Any:
        raise AssertionError(f"the stream slept until {due}")

    gate = SimpleNamespace(deferrals=deferrals, clock=clock, readmitted=0, _wait_until=no_wait)
    admitted: dict[Any, list[tuple[int, float]]] = {}
    messages: list[_Message] = []
    queue: deque[_Event] = deque()  # the limited stream's queue
    away_until = 0.0
    for seq in range(1, 4_001):
        clock.advance(rng.expovariate(400))
        if rng.random() < 0.003:
            away_until = clock() + rng.uniform(0.2, 2.0)
        if clock() >= away_until:  # the releaser: everything due, in heap order
            while heap and heap[0][0] <= clock():
                _, _, held = heapq.heappop(heap)
                held.message.incref()  # redeliver
                queue.append(_Event(held.message))
                held.ack()  # the agent's (or the held event's) reference
        key = rng.choice(["h1", "h2", "h3"]) if rng.random() < 0.5 else f"q{seq}"
        if buckets.try_acquire(key):
            admitted.setdefault(key, []).append((seq, clock()))
        else:
            message = _Message(offset=seq, key=key, seq=seq,
                               headers=[(NOT_BEFORE, repr(buckets.defer(key)).encode())])
            messages.append(message)
            deferrals._push(float(message.headers[0][1]), _Event(message))
        while queue:  # the stream, at once: nothing in it sleeps
            event = queue.popleft()
            try:
                KeyedRateLimitGate._readmit(gate, event, None, buckets,  # type: ignore[arg-type]
                                            event.message.key)
                admitted.setdefault(event.message.key, []).append((event.message.seq, clock()))
            except Skip:
                pass
            event.ack()  # the stream's ack
    return deferrals, admitted, messages, len(heap)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_records_back_before_their_time_wait_in_the_heap_in_order_within_the_bound(
        seed: int) -> None:
    deferrals, admitted, messages, left = _run_stream(seed)
    assert deferrals.held_back > 50  # the agent came back late: records were held again
    for key, passed in admitted.items():
        assert [s for s, _ in passed] == sorted(s for s, _ in passed), key  # in order
        assert _worst_excess([t for _, t in passed], 20.0) <= 2.0 + 1e-6, key
    done = {(m.key, m.seq) for m in messages if m.refcount == 0}
    passed_deferred = {(k, s) for k, p in admitted.items() for s, _ in p
                       if not k.startswith("q")} & {(m.key, m.seq) for m in messages}
    assert done == passed_deferred  # acked exactly when passed
    assert all(m.refcount == 1 for m in messages if (m.key, m.seq) not in done)  # still held
    assert len(messages) - len(done) == left  # the rest waits in the heap, nothing lost
