"""``ordered_by_key=True`` in batch pipelines (docs/batching.md, "Order per key"): which events
a batch holds back, the per-key chains, and a runner's sends in order (a fake producer)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import faust

from faust_backpressure.agents.batch import Batch
from faust_backpressure.agents.batch_order import KeyChains, hold_back
from faust_backpressure.app import Backpressure
from faust_backpressure.config import BackpressureSettings


class Broken(Exception):
    pass


def test_a_failing_key_holds_back_its_later_events_only() -> None:
    keys = ["a", "b", "a", "c", "a", "b", "b", "c"]
    failed = [False, False, True, False, False, True, False, False]
    now, held = hold_back(keys, failed, held=())
    assert now == [0, 1, 3, 7]  # a's and b's events before their failure go out at once
    assert held == {"a": [2, 4], "b": [5, 6]}


def test_a_key_held_from_an_earlier_batch_holds_all_its_events() -> None:
    now, held = hold_back(["a", "b", "a"], [False, False, False], held={"a"})
    assert now == [1] and held == {"a": [0, 2]}
    assert hold_back([], [], held={"a"}) == ([], {})


def test_a_chain_starts_after_the_keys_previous_chain_and_is_forgotten_when_done() -> None:
    async def main() -> None:
        chains = KeyChains(broken=Broken)
        order: list[str] = []
        first_may_end = asyncio.Event()

        async def first() -> str:
            await first_may_end.wait()
            order.append("a1")
            return "a1"

        async def record(name: str) -> str:
            order.append(name)
            return name

        one = chains.chain("p0", "a", first)
        two = chains.chain("p0", "a", lambda: record("a2"))
        other = chains.chain("p0", "b", lambda: record("b1"))  # another key: not held up
        assert "a" in chains.held("p0") and "a" not in chains.held("p1")
        assert await other == "b1" and order == ["b1"]
        first_may_end.set()
        assert (await one, await two) == ("a1", "a2")
        assert order == ["b1", "a1", "a2"]
        await asyncio.sleep(0)  # the done callbacks
        assert len(chains) == 0 and "a" not in chains.held("p0")

    asyncio.run(main())


def test_a_chain_after_a_failed_one_is_broken_and_forget_drops_a_partitions_chains() -> None:
    async def main() -> None:
        chains = KeyChains(broken=Broken)
        ran: list[str] = []
        gate = asyncio.Event()

        async def fails() -> None:
            await gate.wait()
            raise RuntimeError("abandoned")

        async def runs() -> None:
            ran.append("later")

        failing = chains.chain("p0", "a", fails)
        later = chains.chain("p0", "a", runs)
        gate.set()
        results = await asyncio.gather(failing, later, return_exceptions=True)
        assert isinstance(results[0], RuntimeError) and isinstance(results[1], Broken)
        assert ran == []  # the key's later outputs never went out first
        stuck = chains.chain("p1", "a", asyncio.Event().wait)
        chains.forget({"p1"})
        assert len(chains) == 0
        assert await chains.chain("p1", "a", runs) is None  # does not wait for the old one
        stuck.cancel()

    asyncio.run(main())


@dataclass
class Rec:
    key: bytes
    value: bytes
    offset: int
    topic: str = "src"
    partition: int = 0
    headers: list[Any] = field(default_factory=list)


class Producer:
    """Records sends in the order they are queued; every send is acked at once. The first
    send waits before it queues its record, as aiokafka's waits for a topic's metadata: a
    send called later may then queue first."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   headers: Any = None) -> asyncio.Future[None]:
        if not self.sent and value == b"a0":
            await asyncio.sleep(0.2)  # longer than the retry's backoff
        self.sent.append((topic, key or b"", value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def test_a_runner_sends_each_keys_outputs_in_input_order_retries_included() -> None:
    calls: dict[bytes, int] = defaultdict(int)

    def process(values: list[bytes]) -> list[Any]:
        out: list[Any] = []
        for value in values:
            calls[value] += 1
            if value == b"a1" and calls[value] == 1:
                out.append(ConnectionError("flaky"))  # succeeds on its retry
            elif value == b"b1":
                out.append(ValueError("poison"))  # dead-lettered
            else:
                out.append(value)
        return out

    app = faust.App("batch-order-unit", broker="kafka://localhost:1")
    pipe = Backpressure(app, settings=BackpressureSettings()).pipeline(
        "p", source="src", sink="out", dlq="dlq", process_batch=process, ordered_by_key=True,
        max_retries=1, retry_backoff=lambda attempt: 0.05)
    runner = pipe.batch
    first = [Rec(v[:1], v, i) for i, v in enumerate(
        [b"a0", b"b0", b"a1", b"c0", b"a2", b"b1", b"b2", b"c1"])]
    second = [Rec(b"a", b"a3", 8), Rec(b"c", b"c2", 9)]

    async def main() -> Producer:
        producer = Producer()
        one = await runner._send_batch(Batch("p0", first, 0, 7, 1, 0.0), producer)
        # the next batch while a's chain still waits for its retry: a3 waits for it too
        two = await runner._send_batch(Batch("p0", second, 8, 9, 1, 0.0), producer)
        await asyncio.gather(one, two)
        await asyncio.sleep(0)
        assert len(runner.chains) == 0
        return producer

    sent = asyncio.run(main()).sent
    by_key: dict[bytes, list[bytes]] = defaultdict(list)
    for topic, key, value in sent:
        if topic == "out":
            by_key[key].append(value)
    assert by_key == {b"a": [b"a0", b"a1", b"a2", b"a3"], b"b": [b"b0", b"b2"],
                      b"c": [b"c0", b"c1", b"c2"]}
    assert [v for t, _, v in sent if t == "dlq"] == [b"b1"]
    order = [v for _, _, v in sent]
    # keys without a failure are not held up: c's events went out before the retries
    assert order.index(b"c2") < order.index(b"a1") and order.index(b"c1") < order.index(b"b2")
    # b2 only after b1 was dead-lettered
    assert order.index(b"b1") < order.index(b"b2")
    assert pipe.stats.produced == 9 and pipe.stats.dead_lettered == 1
    assert pipe.stats.retries == 2
