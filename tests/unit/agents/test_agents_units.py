"""Pure parts of agents/: headers, outputs, backoff, limiter resolution, the gate's processor."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.exceptions import Skip
from faust.types import TP

from faust_backpressure.agents import (
    Failure,
    RateLimitGate,
    dlq_headers,
    exponential_backoff,
    resolve_limiter,
)
from faust_backpressure.agents import headers as h
from faust_backpressure.agents.batch import outputs_of
from faust_backpressure.agents.flow import never_block_conductor
from faust_backpressure.limiters import MultiTierRateLimiter, TokenBucketRateLimiter


def _raise() -> None:
    try:
        raise KeyError("inner")
    except KeyError as exc:
        raise ValueError("outer " + "x" * 5000) from exc


def test_dlq_headers_keep_originals_and_say_why() -> None:
    try:
        _raise()
    except ValueError as exc:
        error = exc
    failure = Failure(error, "process", 4, 1_700_000_000.0, 1_700_000_001.5)
    out = dlq_headers([("trace", b"t"), (h.ERROR_TYPE, b"Old"), (h.REPLAY_COUNT, b"2")],
                      pipeline="p", topic="src", partition=3, offset=42, failure=failure,
                      traceback_limit=200)
    d = dict(out)
    assert out[0] == ("trace", b"t")
    assert d[h.ERROR_TYPE] == b"ValueError" and len(d[h.ERROR_MESSAGE]) <= 1024
    # Truncated to the limit, still recognisable as a traceback, ending with the message.
    assert len(d[h.TRACEBACK]) <= 200
    assert d[h.TRACEBACK].startswith(b"Traceback (most recent call last):\n  ...\n")
    assert d[h.TRACEBACK].rstrip().endswith(b"xxxx")
    assert (d[h.SOURCE_TOPIC], d[h.SOURCE_PARTITION], d[h.SOURCE_OFFSET]) == (b"src", b"3", b"42")
    assert d[h.ATTEMPTS] == b"4" and d[h.PIPELINE] == b"p" and d[h.REPLAY_COUNT] == b"2"
    assert d[h.FIRST_FAILURE] == b"2023-11-14T22:13:20.000+00:00"
    assert d[h.LAST_FAILURE] == b"2023-11-14T22:13:21.500+00:00"
    assert [k for k, _ in out].count(h.ERROR_TYPE) == 1  # the old reason was dropped


def test_header_helpers() -> None:
    pairs = [("a", b"1"), (h.REPLAY_COUNT, b"3"), ("a", b"2")]
    assert h.header(pairs, "a") == b"2" and h.header(None, "a") is None
    assert h.replay_count(pairs) == 3 and h.replay_count({h.REPLAY_COUNT: b"x"}) == 0
    assert h.without_bp_headers(pairs) == [("a", b"1"), ("a", b"2")]
    once = h.requeue_headers(pairs)
    assert once == [("a", b"1"), ("a", b"2"), (h.REPLAY_COUNT, b"3"), (h.REQUEUED, b"1")]
    assert h.requeue_headers(once)[-1] == (h.REQUEUED, b"2")
    assert h.requeue_headers([(h.REQUEUED, b"x")]) == [(h.REQUEUED, b"1")]


def testoutputs_of() -> None:
    assert outputs_of(None) == ()
    assert outputs_of(5) == (5,)
    assert outputs_of([1, 2]) == [1, 2] and outputs_of((1,)) == (1,)
    assert outputs_of(x for x in (1, 2)) == [1, 2]
    assert outputs_of(b"ab") == (b"ab",)


def test_exponential_backoff() -> None:
    backoff = exponential_backoff(0.1, 0.5)
    assert [backoff(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.5]


def test_resolve_limiter() -> None:
    bucket = TokenBucketRateLimiter(10, 20, rate_limiter_id="api")
    assert resolve_limiter(None, bucket) is bucket
    tiers = resolve_limiter(None, [("global", 100, 100), ("topic", 10, 20)])
    assert isinstance(tiers, MultiTierRateLimiter)
    assert bucket.name == "api" and bucket.max_permits == 20
    assert tiers.max_permits == 20
    with pytest.raises(TypeError):
        resolve_limiter(None, 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs tokens_per_second"):
        resolve_limiter(None, "api")


class FakeQueue:
    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self.size = 0

    def qsize(self) -> int:
        return self.size


class FakeChannel:
    """What SourceFlow uses of a Faust topic channel."""

    def __init__(self) -> None:
        self.topics = ("src",)
        self.maxsize: int | None = None
        self._queue: FakeQueue | None = None

    @property
    def queue(self) -> FakeQueue:
        if self._queue is None:
            self._queue = FakeQueue(self.maxsize or 4096)
        return self._queue


class FakeConsumer:
    """Records Faust's buffer flow-control calls; has no pause_partitions on purpose."""

    def __init__(self) -> None:
        self.held: set[Any] = set()
        self.calls: list[tuple[str, Any]] = []

    def assignment(self) -> set[Any]:
        return {TP("src", 0), TP("src", 1), TP("other", 0)}

    def on_buffer_full(self, tp: Any) -> None:
        self.calls.append(("full", tp))
        self.held.add(tp)

    def on_buffer_drop(self, tp: Any) -> None:
        self.calls.append(("drop", tp))
        self.held.discard(tp)


def fake_app(stream_buffer_maxsize: int = 100) -> Any:
    conf = SimpleNamespace(stream_buffer_maxsize=stream_buffer_maxsize)
    return SimpleNamespace(conf=conf, consumer=FakeConsumer())


class FakeStream:
    def __init__(self) -> None:
        self._processors: list[Any] = []
        self.current_event: Any = None
        self.channel = FakeChannel()

    def add_processor(self, fn: Any) -> None:
        self._processors.append(fn)

    async def take_events(self, max_: int, within: Any) -> Any:  # pragma: no cover
        yield []


def _event(size: int) -> Any:
    message = SimpleNamespace(key=b"k", value=b"v" * size, headers=[], topic="t", partition=0,
                              offset=1)
    return SimpleNamespace(message=message, value=b"v" * size)


async def test_gate_fast_path_returns_the_value_without_a_coroutine() -> None:
    gate = RateLimitGate(fake_app(), TokenBucketRateLimiter(1000, 5))
    stream = FakeStream()
    gate.install(stream)  # type: ignore[arg-type]
    gate.install(stream)  # type: ignore[arg-type]
    assert len(stream._processors) == 1
    admit = stream._processors[0]
    assert [admit(i) for i in range(5)] == list(range(5))
    pending = admit(6)  # bucket empty: a coroutine that waits
    assert asyncio.iscoroutine(pending)
    assert await pending == 6 and gate.waits == 1


async def test_gate_cost_function_and_shed() -> None:
    gate = RateLimitGate(fake_app(), TokenBucketRateLimiter(1, 10), on_limit="shed",
                         cost=lambda e: len(e.message.value))
    sent: list[Any] = []

    async def send(event: Any, permits: int, low: Any = None) -> None:
        sent.append((event, permits))

    gate._send_to_shed = send  # type: ignore[method-assign]
    stream = FakeStream()
    gate.install(stream)  # type: ignore[arg-type]
    admit = stream._processors[0]
    stream.current_event = _event(6)
    assert admit("a") == "a"  # 6 of 10 tokens
    stream.current_event = big = _event(50)  # dearer than the bucket: costs the whole bucket
    with pytest.raises(Skip):
        await admit("b")
    assert sent == [(big, 10)]


async def test_a_gate_counts_a_wait_as_it_starts_and_an_overdraft_when_the_flow_stopped_it(
        ) -> None:
    """``GateBase.counted_wait``, both gates' one count of waits and overdrafts."""
    gate = RateLimitGate(fake_app(), TokenBucketRateLimiter(1, 1))
    outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(gate.counted_wait(outcome))
    await asyncio.sleep(0)
    assert (gate.waits, gate.overdrafts) == (1, 0)  # shown while it waits
    outcome.set_result(False)  # Faust stopped the flow first
    assert await waiting is False
    assert await gate.counted_wait(asyncio.sleep(0, True)) is True
    stats = gate.stats()
    assert (stats.waits, stats.overdrafts) == (2, 1)


def test_on_limit_is_checked() -> None:
    with pytest.raises(ValueError, match="on_limit"):
        RateLimitGate(None, TokenBucketRateLimiter(1, 1), on_limit="drop")  # type: ignore[arg-type]


def test_a_gated_buffer_is_never_full_but_faust_still_holds_back_its_partitions() -> None:
    from mode.utils.queues import FlowControlEvent, FlowControlQueue

    app, stream = fake_app(stream_buffer_maxsize=100), FakeStream()
    queue = FlowControlQueue(maxsize=100, flow_control=FlowControlEvent(initially_suspended=False))
    stream.channel._queue = queue  # type: ignore[assignment]
    never_block_conductor(app, stream)  # type: ignore[arg-type]
    held: list[str] = []

    def full() -> None:  # Faust passes one pair of callbacks per partition
        held.append("full")

    def drop() -> None:
        held.append("drop")

    for i in range(300):  # three times the high-water mark, no waiting consumer
        queue.put_nowait_enhanced(i, on_pressure_high=full, on_pressure_drop=drop)
        assert not queue.full()  # the conductor would never await room
    assert held == ["full"]  # Faust's own callback fired once, at the high-water mark
    assert queue.qsize() == 300
    while queue.qsize() > 40:
        queue.get_nowait()
    queue.get_nowait()  # at 40% of the high-water mark: released
    assert held == ["full", "drop"]


async def test_gate_sheds_priorities_below_the_threshold_before_asking_for_permits() -> None:
    limiter = TokenBucketRateLimiter(0.001, 5)  # 5 permits, no refill within the test
    gate = RateLimitGate(fake_app(), limiter, priority=lambda e: int(e.value[:1]))
    sent: list[Any] = []

    async def send(event: Any, permits: int, low: Any = None) -> None:
        sent.append((event.value, low))

    gate._send_to_shed = send  # type: ignore[method-assign]
    stream = FakeStream()
    gate.install(stream)  # type: ignore[arg-type]
    admit = stream._processors[0]

    def event(value: bytes) -> Any:
        stream.current_event = SimpleNamespace(message=None, value=value)
        return value

    assert admit(event(b"0")) == b"0"  # no threshold: no priority shedding
    gate.shed_threshold = 2
    for value in (b"0", b"1"):
        with pytest.raises(Skip):
            await admit(event(value))
    assert admit(event(b"2")) == b"2" and admit(event(b"9")) == b"9"
    assert admit(event(b"x")) == b"x"  # no priority (raises): not shed, processed or DLQ'd
    assert sent == [(b"0", (0, 2)), (b"1", (1, 2))]
    # 4 admitted of 5: the shed events took no permits
    assert limiter.try_acquire(1) and not limiter.try_acquire(1)
    pending = admit(event(b"2"))  # bucket empty: a priority above the level waits
    assert asyncio.iscoroutine(pending)
    pending.close()


def test_shed_headers_carry_the_priority_and_the_level() -> None:
    out = dict(h.shed_headers([("trace", b"t")], agent="a", limiter="l", topic="src",
                              partition=1, offset=7, permits=0, cause="critical downstream lag",
                              priority=0, threshold=2))
    assert out[h.SHED_REASON] == (b"load shedding: priority 0 < shed level 2 "
                                  b"(critical downstream lag)")
    assert out[h.SHED_PRIORITY] == b"0" and out["trace"] == b"t"
    assert h.SHED_PRIORITY not in dict(h.shed_headers(None, agent="a", limiter="l", topic="s",
                                                      partition=0, offset=0, permits=1))
