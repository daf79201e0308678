"""Outage news (issue 22): a breaker opened on failures tells the other workers, whose
breakers open at once; stale news is counted and changes nothing; a slow-down is never
news of an outage. On virtual time (one clock for the breaker and the guard's wall clock)."""

from __future__ import annotations

import asyncio
import json

import pytest

from faust_backpressure.agents.downstream import Downstream
from faust_backpressure.agents.slow_down import DependencyUnavailable, SlowDown, from_http
from faust_backpressure.app.downstream_ops import (
    FailingRecord,
    RecoveredRecord,
    failing_key,
)
from faust_backpressure.limiters import CircuitBreaker, FixedLimit
from faust_backpressure.limiters.quota import QuotaLearner
from faust_backpressure.wire.signing import RejectedRecord
from tests.unit.agents.test_downstream_probes import _VirtualTimeLoop


class _Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _guard(clock: _Clock, published: list[tuple[str, float]] | None = None,
           **options: object) -> Downstream:
    async def publish_failing(name: str, until: float) -> None:
        assert published is not None
        published.append((name, until))

    breaker = CircuitBreaker(**{"minimum_calls": 2, "wait_in_open": 1.0, "half_open_calls": 1,
                                "probe_rate": 1.0, "clock": clock, **options})  # type: ignore[arg-type]
    return Downstream("api", limit=FixedLimit(4), breaker=breaker, clock=clock,
                      wall_clock=clock, quota=QuotaLearner(clock=clock),
                      publish_failing=publish_failing if published is not None else None)


def _fail(api: Downstream, clock: _Clock) -> None:
    assert api.breaker.allow()
    clock.now += 0.01
    api.breaker.record(0.01, failed=True)


async def test_an_opening_on_failures_is_published_once_per_outage() -> None:
    clock, published = _Clock(), []
    api = _guard(clock, published)
    _fail(api, clock)
    _fail(api, clock)
    await asyncio.sleep(0)
    assert api.state.value == "open" and published == [("api", clock.now + 1.0)]
    clock.now += 1.0
    _fail(api, clock)  # a failed probe: open again, the others know already
    clock.now += 1.0
    assert api.breaker.allow()
    clock.now += 0.01
    api.breaker.record(0.01, failed=False)  # back: closed
    await asyncio.sleep(0)
    assert api.state.value == "closed" and len(published) == 1
    _fail(api, clock)
    _fail(api, clock)  # the next outage: news again
    await asyncio.sleep(0)
    assert len(published) == 2


async def test_a_slow_down_is_never_published_as_an_outage_but_a_failed_probe_after_it_is(
        ) -> None:
    clock, published = _Clock(), []
    api = _guard(clock, published)
    for answer in (SlowDown(1.0, "HTTP 429"), from_http(503, "1")):  # both pause
        with pytest.raises(SlowDown):
            async with api.call():
                raise answer
        assert api.state.value == "open" and api.paused_for > 0
        clock.now += 1.0
    await asyncio.sleep(0)
    assert published == [] and not api.breaker.failing
    with pytest.raises(DependencyUnavailable):  # the half-open probe meets an outage
        async with api.call():
            raise DependencyUnavailable("HTTP 503")
    await asyncio.sleep(0)
    assert api.state.value == "open" and len(published) == 1


def test_news_opens_a_closed_breaker_for_its_own_wait() -> None:
    clock = _Clock()
    api = _guard(clock, wait_in_open=2.0)
    assert api.failing_until(clock.now, clock.now + 0.4, source="from w2")
    assert api.state.value == "open" and api.breaker.failing
    assert api.breaker.time_until_allowed() == 2.0  # its own wait, not the sender's 0.4 s
    assert api.outcomes["opened_on_news"] == 1
    assert not api.failing_until(clock.now, clock.now + 1.0)  # already in the outage
    assert api.outcomes["opened_on_news"] == 1 and api.outcomes["stale_news"] == 0


def test_stale_news_is_counted_and_changes_nothing() -> None:
    clock = _Clock()
    api = _guard(clock)
    assert not api.failing_until(clock.now - 5.0, clock.now - 4.0)  # its end is past
    assert api.breaker.allow()
    clock.now += 0.02
    api.breaker.record(0.02, failed=False)
    api._record("success", clock.now - 0.02, failed=False, permit=_Permit(), dropped=False)
    # failures seen before a call sent here succeeded: older than what this worker saw
    assert not api.failing_until(clock.now - 0.05, clock.now + 1.0)
    assert api.state.value == "closed" and api.outcomes["stale_news"] == 2
    assert api.failing_until(clock.now, clock.now + 1.0)  # fresh: opens


def test_news_changes_nothing_under_an_operators_state() -> None:
    clock = _Clock()
    api = _guard(clock)
    for state in ("open", "close"):
        api.force(state)
        assert not api.failing_until(clock.now, clock.now + 1.0)
        assert api.state.value == f"forced_{'open' if state == 'open' else 'closed'}"
    api.force("auto")
    assert api.state.value == "closed" and api.breaker.allow()
    assert api.failing_until(clock.now, clock.now + 1.0)  # auto: news counts again


def test_news_during_a_slow_down_keeps_the_pause_and_makes_its_end_probe_only() -> None:
    clock = _Clock()
    api = _guard(clock)
    api.pause_until(clock.now + 0.5)
    assert api.failing_until(clock.now, clock.now + 1.0)
    assert api.breaker.failing and api.breaker.time_until_allowed() == pytest.approx(0.5)
    clock.now += 0.5
    assert api.state.value == "half_open" and not api.breaker.allow()  # no token yet
    clock.now += 0.5
    assert api.breaker.allow()  # one probe, a second after the news


class _Permit:
    def success(self) -> None: ...

    def dropped(self) -> None: ...

    def ignore(self) -> None: ...


def test_after_an_outage_the_first_interval_is_a_partial_reading() -> None:
    clock = _Clock()
    api = _guard(clock)
    learner = api.quota.learner  # type: ignore[union-attr]
    learner.rate, learner.ceiling = 270.0, 300.0  # learnt before the outage
    assert api.failing_until(clock.now, clock.now + 1.0)
    clock.now += 1.0
    assert api.breaker.allow()
    clock.now += 0.01
    api.breaker.record(0.01, failed=False)  # back: closed, the learner restarts
    assert api.state.value == "closed"
    for _ in range(112):  # the restart's ramp: 112 calls in its first second
        learner.started()
        clock.now += 1 / 112
        learner.succeeded()
    assert not learner.whole
    before = learner.rate  # 270, and a step up for each second since (as if served)
    assert 270.0 < before < 300.0
    api.pause_until(clock.now + 1.0)  # a 429: a loss at the rate, not a quota of 112/s
    assert learner.rate == pytest.approx(0.9 * before)


def _failing_record_checks(secret: bytes, now: float) -> None:
    record = FailingRecord("api", now + 1.2, "w1", now)
    raw, key = record.encode(secret), failing_key("api")
    assert FailingRecord.decode(raw, key, secret, now=now, max_skew=10) == record
    hostile = {
        "bad_signature": (raw, key, b"other", now),
        "future": (FailingRecord("api", now + 101, "w1", now + 100).encode(secret), key,
                   secret, now),
    }
    for code, (value, k, s, at) in hostile.items():
        with pytest.raises(RejectedRecord) as rejected:
            FailingRecord.decode(value, k, s, now=at, max_skew=10)
        assert rejected.value.code == code
    others = [
        (raw, failing_key("other")),  # another dependency's record under this key
        (FailingRecord("api", now - 1, "w1", now).encode(secret), key),  # ends before sent
        (FailingRecord("api", now + 4000, "w1", now).encode(secret), key),  # over an hour
        (RecoveredRecord("api", "w1", now).encode(secret), key),  # another kind
    ]
    for value, k in others:
        with pytest.raises(RejectedRecord):
            FailingRecord.decode(value, k, secret, now=now, max_skew=10)
    unsigned = {"type": "failing", "dependency": "api", "until": "soon", "by": "w1", "at": now}
    with pytest.raises(RejectedRecord):  # no secret set: still range-checked
        FailingRecord.decode(json.dumps(unsigned).encode(), key, None, now=now, max_skew=10)


def test_failing_records_are_signed_range_checked_and_rejected_when_hostile() -> None:
    _failing_record_checks(b"s3cret", 1_700_000_000.0)


async def _two_workers(loop: asyncio.AbstractEventLoop, news: bool) -> dict[str, object]:
    """Worker a is busy (8 calls of 5 ms in flight: ~3,000 successes in its breaker's 2 s
    window), worker b calls twice at a time, 0.4 s each; the outage lasts from 1 s to 11 s;
    news takes 50 ms to arrive."""
    now = loop.time
    guards: dict[str, Downstream] = {}
    opened: dict[str, float] = {}
    sent: dict[str, list[float]] = {"a": [], "b": []}

    def make(name: str, other: str) -> Downstream:
        async def publish_failing(dependency: str, until: float) -> None:
            at = now()
            await asyncio.sleep(0.05)
            guards[other].failing_until(at, until, source=f"from {name}")

        breaker = CircuitBreaker(window=2.0, minimum_calls=2, wait_in_open=1.25,
                                 open_jitter=0.2, half_open_calls=2, sequential_probes=True,
                                 probe_rate=1.0, clock=now)
        api = Downstream(name, limit=FixedLimit(8), breaker=breaker, clock=now, wall_clock=now,
                         publish_failing=publish_failing if news else None)
        breaker.on_transition(lambda old, new: opened.setdefault(name, now())
                              if new.value == "open" else None)
        return api

    guards["a"], guards["b"] = make("a", "b"), make("b", "a")

    async def call(name: str) -> None:
        sent[name].append(now())
        await asyncio.sleep(0.4 if name == "b" else 0.005)
        if 1.0 <= now() < 11.0:
            raise DependencyUnavailable("HTTP 503")

    async def stream(name: str) -> None:  # events one after another until 12 s
        while now() < 12.0:
            await guards[name].run(call, name)

    await asyncio.gather(*(stream(n) for n in "aaaaaaaabb"))
    return {"opened": opened, "sent": sent, "guards": guards}


def _run_two_workers(news: bool) -> dict[str, object]:
    loop = _VirtualTimeLoop()
    try:
        return loop.run_until_complete(_two_workers(loop, news))
    finally:
        loop.close()


def test_one_workers_failures_open_the_others_breaker_within_the_news_delay() -> None:
    alone = _run_two_workers(news=False)["opened"]
    out = _run_two_workers(news=True)
    opened: dict[str, float] = out["opened"]  # type: ignore[assignment]
    first, second = sorted(opened, key=opened.__getitem__)
    # b, with few calls in its window, opens first; busy a needs as many failures as it had
    # successes in 2 s, unless b's news opens it
    assert (first, second) == ("b", "a")
    assert alone["a"] - opened["b"] > 0.3  # type: ignore[index]
    assert opened["a"] - opened["b"] <= 0.05 + 1e-6
    guards: dict[str, Downstream] = out["guards"]  # type: ignore[assignment]
    assert guards["a"].outcomes["opened_on_news"] == 1
    assert guards["b"].outcomes["opened_on_news"] == 0  # a opened on news: nothing sent back
    sent: dict[str, list[float]] = out["sent"]  # type: ignore[assignment]
    for name in "ab":  # then probes only: at most 1/s each
        during = [t for t in sent[name] if opened[name] < t < 11.0]
        assert len(during) <= 11.0 - opened[name], name
