"""The deferral agent's releaser on fakes of Faust's consumer, stream and messages: what it
hands back and the stream never acks (Faust clears the streams' queues when the flow stops)
is let go, so Faust's stop and rebalances do not wait for it for ever."""

from __future__ import annotations

import asyncio
import heapq
from dataclasses import dataclass, field
from typing import Any

from faust_backpressure.agents.keyed_deferral import Deferrals


@dataclass(eq=False)
class _Message:
    topic: str = "hot-deferred"
    partition: int = 0
    offset: int = 11
    refcount: int = 1
    acked: bool = False

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
