"""The downstream guard on its own (no Kafka): outcomes, pauses, the breaker, slow-down records.

Waits here are short real ones (tens of milliseconds); the assertions are about order and
outcomes (a call never starts before a pause ends, a failure is never raised from ``run``),
never about how long something took.
"""

from __future__ import annotations

import asyncio
import email.utils
import time

import pytest

from faust_backpressure.agents.downstream import (
    RECOVERY_MIN_OPEN,
    Downstream,
    WaitAborted,
    build_downstream,
    is_unavailable,
)
from faust_backpressure.agents.quota_gate import SharedQuota
from faust_backpressure.agents.slow_down import (
    DependencyUnavailable,
    SlowDown,
    from_http,
    parse_retry_after,
    quota_from_headers,
)
from faust_backpressure.app.downstream_ops import BreakerCommand, RecoveredRecord, SlowDownRecord
from faust_backpressure.limiters import CircuitBreaker, FixedLimit, TokenBucketRateLimiter
from faust_backpressure.limiters.quota import QuotaLearner
from faust_backpressure.wire.signing import RejectedRecord


def guard(**breaker: object) -> Downstream:
    options = {"minimum_calls": 4, "wait_in_open": 0.05, "half_open_calls": 1, **breaker}
    return Downstream("api", limit=FixedLimit(4), breaker=CircuitBreaker(**options),
                      default_retry_after=0.05)


def test_retry_after_reads_seconds_and_dates_and_is_capped() -> None:
    assert parse_retry_after("3", default=1, maximum=300) == 3
    assert parse_retry_after(2.5, default=1, maximum=300) == 2.5
    assert parse_retry_after(None, default=1, maximum=300) == 1
    assert parse_retry_after("soon", default=1, maximum=300) == 1
    assert parse_retry_after("86400", default=1, maximum=300) == 300  # capped
    assert parse_retry_after("-5", default=1, maximum=300) == 0
    assert parse_retry_after("nan", default=1, maximum=300) == 1
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert parse_retry_after(date, default=1, maximum=300, now=now) == pytest.approx(7)


def test_announced_quotas_are_read_from_ratelimit_headers_and_nonsense_is_ignored() -> None:
    # IETF RateLimit-Policy (current drafts: named items with q and w; the strictest counts)
    policy = '"burst";q=100;w=1, "day";q=864000;w=86400'
    assert quota_from_headers({"RateLimit-Policy": policy}) == 10.0
    assert quota_from_headers({"ratelimit-policy": "300;w=1"}) == 300.0  # earlier drafts
    assert quota_from_headers({"RateLimit-Policy": '"a,b";q=50;w=2'}) == 25.0  # quoted comma
    # X-RateLimit-Limit has no window in it: only with the one the API documents
    assert quota_from_headers([("X-RateLimit-Limit", "5000")], window=3600) == \
        pytest.approx(5000 / 3600)
    assert quota_from_headers({"X-RateLimit-Limit": "5000"}) is None
    for bad in ("q=abc;w=1", "100", "-5;w=1", "0;w=1", "100;w=0", "1e30;w=1", "inf;w=1", ""):
        assert quota_from_headers({"RateLimit-Policy": bad}) is None, bad
    assert quota_from_headers({"Content-Type": "text/plain"}, window=1) is None


async def test_a_guard_passes_an_announced_quota_to_its_shared_rate() -> None:
    limiter = TokenBucketRateLimiter(1000, 10)
    shared = SharedQuota("api", QuotaLearner(), limiter, worker="w1", reporter=None,
                         wall_clock=time.time)
    downstream = build_downstream("api", max_concurrency=4, quota=shared)
    assert downstream.read_quota_headers({"RateLimit-Policy": "200;w=1"}) == 200.0
    assert shared.rate == 200.0 and limiter.current_rate_limit == 200.0
    downstream.read_quota_headers({"RateLimit-Policy": "400;w=1"})  # doubled
    assert limiter.current_rate_limit == 400.0
    assert build_downstream("api", max_concurrency=4, learn_quota=False).read_quota_headers(
        {"RateLimit-Policy": "200;w=1"}) == 200.0  # read, with no quota to keep it


def test_http_statuses_map_to_slow_down_unavailable_or_the_events_fault() -> None:
    assert isinstance(from_http(429, "2"), SlowDown)
    assert isinstance(from_http(429), SlowDown)
    assert isinstance(from_http(503, "1"), SlowDown)
    assert isinstance(from_http(503), DependencyUnavailable)
    assert isinstance(from_http(500), DependencyUnavailable)
    assert isinstance(from_http(400), ValueError)
    assert is_unavailable(ConnectionRefusedError()) and is_unavailable(asyncio.TimeoutError())
    assert not is_unavailable(ValueError())


async def test_a_slow_down_pauses_the_guard_and_run_retries_the_same_call_after_it() -> None:
    api = guard()
    published: list[tuple[str, float]] = []

    async def publish(name: str, until: float) -> None:
        published.append((name, until))

    api.publish = publish
    calls: list[float] = []

    async def charge(order: str) -> str:
        calls.append(time.time())
        if len(calls) == 1:
            raise api.slow_down(retry_after=0.05)
        return f"charged {order}"

    assert await api.run(charge, "o-1") == "charged o-1"
    assert len(calls) == 2 and len(published) == 1
    name, until = published[0]
    assert name == "api" and calls[1] >= until  # not before the pause ended
    assert api.outcomes["slow_down"] == 1 and api.outcomes["success"] == 1
    assert api.breaker.stats().failure_rate == 0  # a slow-down is not a failure


async def test_a_pause_from_another_worker_holds_calls_and_a_shorter_one_changes_nothing() -> None:
    api = guard()
    until = time.time() + 0.05
    assert api.pause_until(until, source="from w2")
    assert not api.pause_until(until - 0.01, source="from w3")  # coalesced
    assert api.paused_for > 0
    started: list[float] = []

    async def call() -> None:
        started.append(time.time())

    await api.run(call)
    assert started[0] >= until


async def test_an_outage_opens_the_breaker_and_run_waits_instead_of_failing() -> None:
    api = guard()
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts <= 4:
            raise DependencyUnavailable("503")
        return "ok"

    assert await api.run(flaky) == "ok"  # never raised: waited for the breaker
    assert api.breaker.stats().opened >= 1
    assert api.outcomes["unavailable"] == 4 and api.outcomes["retried"] == 4


async def test_an_outage_does_not_shrink_the_calls_in_flight_but_timeouts_do() -> None:
    # an outage's quick 503s are the breaker's business: counted as overload they took the
    # limit to its floor, and the restart was held by it (then burst out: a 429)
    api = build_downstream("api", max_concurrency=64, initial_concurrency=20,
                           limit="aimd", breaker={"minimum_calls": 1000})

    async def down() -> None:
        raise DependencyUnavailable("503")

    async def refused() -> None:
        raise ConnectionRefusedError("refused")

    for fn in (down, refused) * 20:
        with pytest.raises((DependencyUnavailable, ConnectionRefusedError)):
            async with api.call():
                await fn()
    assert api.stats().limit == 20

    async def slow() -> None:
        raise asyncio.TimeoutError

    with pytest.raises(asyncio.TimeoutError):
        async with api.call():
            await slow()
    assert api.stats().limit < 20  # a timeout: too many calls in flight
    assert api.outcomes["unavailable"] == 41


async def test_other_errors_are_the_events_fault_and_are_raised() -> None:
    api = guard()

    async def bad() -> None:
        raise ValueError("bad request")

    with pytest.raises(ValueError, match="bad request"):
        await api.run(bad)
    assert api.outcomes["error"] == 1


async def test_a_wait_for_the_breaker_ends_when_the_flow_stops_and_nothing_is_called() -> None:
    api = guard()
    api.force("open")
    stopped = asyncio.Event()
    called = False

    async def call() -> None:
        nonlocal called
        called = True

    waiting = asyncio.ensure_future(api.run_unless(stopped, call))
    await asyncio.sleep(0)
    assert not waiting.done()
    stopped.set()
    with pytest.raises(WaitAborted):
        await waiting
    assert not called
    api.force("auto")
    await api.run(call)
    assert called


class OwnerAway:
    """A shared quota whose permits need its owner, away for a rebalance: none comes."""

    rate = 10.0

    async def acquire(self) -> None:
        await asyncio.get_running_loop().create_future()

    def started(self) -> None: ...
    def succeeded(self) -> None: ...
    def recovered(self) -> None: ...
    def episode(self, until: float, seconds: float) -> str: return ""
    def report(self, worker: str, episode: float, served: float, whole: bool = True) -> None: ...
    def announced(self, quota: float) -> None: ...


@pytest.mark.parametrize("held", ["slot", "rate", "quota"])
async def test_every_wait_of_a_call_ends_when_the_flow_stops_and_takes_nothing(
        held: str) -> None:
    # Faust's rebalance waits for every event in progress. A call waiting for a shared
    # quota's permit held it until the group went on without the worker, whose producers were
    # then fenced (test_guarded_workers.py::test_a_rebalance_while_events_wait_for_the_quota_...).
    api = Downstream("api", limit=FixedLimit(1), breaker=CircuitBreaker(minimum_calls=4),
                     rate=TokenBucketRateLimiter(0.001, 1) if held == "rate" else None,
                     quota=OwnerAway() if held == "quota" else None)
    release = asyncio.Event()
    if held == "slot":  # a call in flight holds the only slot
        busy = asyncio.ensure_future(api.run(release.wait))
    elif held == "rate":
        assert api.rate is not None and api.rate.try_acquire(1)  # the only permit taken
    stopped, called = asyncio.Event(), []
    waiting = asyncio.ensure_future(api.run_unless(stopped, called.append, "called"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()
    stopped.set()
    with pytest.raises(WaitAborted):
        await asyncio.wait_for(waiting, timeout=10)  # (without the fix: for ever)
    assert called == [] and api.outcomes["aborted_waits"] == 1
    if held == "slot":
        release.set()
        await busy
    assert api.concurrency.in_flight == 0 and api.concurrency.queued == 0
    if held == "rate":
        assert api.rate is not None and api.rate.queued_waiters == 0


@pytest.mark.parametrize("held", ["rate", "quota"])
async def test_a_plain_agents_call_goes_unpaced_when_the_flow_stops(held: str) -> None:
    # A plain agent has no record to requeue: its call must not hold the rebalance (the
    # permit may need it over), so it goes with a slot only; the breaker's pause still holds.
    api = Downstream("api", limit=FixedLimit(1), breaker=CircuitBreaker(minimum_calls=4),
                     rate=TokenBucketRateLimiter(0.001, 1) if held == "rate" else None,
                     quota=OwnerAway() if held == "quota" else None)
    if held == "rate":
        assert api.rate is not None and api.rate.try_acquire(1)  # the only permit taken
    flow = asyncio.Event()
    api.flow_stopped = lambda: flow
    called: list[str] = []
    waiting = asyncio.ensure_future(api.run(called.append, "first"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()
    flow.set()
    await asyncio.wait_for(waiting, timeout=10)  # (without the fix: for ever)
    assert called == ["first"] and api.outcomes["overdrafts"] == 1
    await asyncio.wait_for(api.run(called.append, "during"), timeout=10)  # still stopped
    assert called == ["first", "during"] and api.outcomes["overdrafts"] == 2
    assert api.concurrency.in_flight == 0 and api.concurrency.queued == 0
    if held == "rate":
        assert api.rate is not None and api.rate.queued_waiters == 0
    flow.clear()  # the flow resumed: paced again
    resumed = asyncio.ensure_future(api.run(called.append, "resumed"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not resumed.done() and api.outcomes["overdrafts"] == 2
    resumed.cancel()
    flow.set()
    api.pause_until(time.time() + 30)  # a slow-down in force is waited for all the same
    paused = asyncio.ensure_future(api.run(called.append, "paused"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not paused.done() and called[-1] == "during"
    paused.cancel()


async def test_the_guard_never_has_more_calls_in_flight_than_its_limit() -> None:
    api = build_downstream("db", max_concurrency=3, limit="fixed")
    in_flight = peak = 0

    async def query() -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1

    await asyncio.gather(*(api.run(query) for _ in range(30)))
    assert peak == 3
    stats = api.stats()
    assert stats.outcomes["success"] == 30 and stats.in_flight == 0
    assert sum(stats.latency_buckets) == 30 and stats.latency_p99 is not None


def test_operators_force_the_breaker_and_bad_states_are_refused() -> None:
    api = guard()
    api.force("open")
    assert api.state.value == "forced_open"
    api.force("close")
    assert api.state.value == "forced_closed"
    api.force("auto")
    assert api.state.value == "closed"
    with pytest.raises(ValueError, match="open, close or auto"):
        api.force("half")
    with pytest.raises(ValueError, match="limit must be"):
        build_downstream("x", max_concurrency=4, limit="magic")


def test_slow_down_records_are_signed_range_checked_and_rejected_when_hostile() -> None:
    secret, now = b"s3cret", 1_700_000_000.0
    record = SlowDownRecord("api", now + 2, "w1", now)
    raw, key = record.encode(secret), b"downstream/api"
    assert SlowDownRecord.decode(raw, key, secret, now=now, max_pause=300,
                                 max_skew=10) == record
    with pytest.raises(RejectedRecord) as forged:
        SlowDownRecord.decode(raw, key, b"other", now=now, max_pause=300, max_skew=10)
    assert forged.value.code == "bad_signature"
    long = SlowDownRecord("api", now + 3000, "w1", now).encode(secret)
    with pytest.raises(RejectedRecord) as too_long:
        SlowDownRecord.decode(long, key, secret, now=now, max_pause=300, max_skew=10)
    assert too_long.value.code == "out_of_range"
    future = SlowDownRecord("api", now + 102, "w1", now + 100).encode(secret)
    with pytest.raises(RejectedRecord) as ahead:
        SlowDownRecord.decode(future, key, secret, now=now, max_pause=300, max_skew=10)
    assert ahead.value.code == "future"
    with pytest.raises(RejectedRecord):
        SlowDownRecord.decode(raw, b"downstream/other", secret, now=now, max_pause=300,
                              max_skew=10)
    with pytest.raises(RejectedRecord):
        SlowDownRecord.decode(b"\xff not json", key, None, now=now, max_pause=300,
                              max_skew=10)


def test_breaker_commands_round_trip_and_unknown_states_are_rejected() -> None:
    command = BreakerCommand.new("api", "open", "ops@host", "maintenance")
    assert BreakerCommand.decode(command.encode(b"k"), command.key, b"k") == command
    with pytest.raises(ValueError, match="breaker state"):
        BreakerCommand.new("api", "half", "ops")
    bad = command.encode(None).replace(b'"open"', b'"halfway"')
    with pytest.raises(RejectedRecord, match="state"):
        BreakerCommand.decode(bad, command.key, None)


async def test_a_call_paced_before_a_pause_waits_for_its_end_instead_of_going_out() -> None:
    from faust_backpressure.limiters import TokenBucketRateLimiter

    api = guard()
    api.rate = TokenBucketRateLimiter(20, 1, initial_tokens=0)  # paced: 50 ms
    started: list[float] = []

    async def call() -> None:
        started.append(time.time())

    waiting = asyncio.ensure_future(api.run(call))
    await asyncio.sleep(0)  # admitted, now waiting for its token
    until = time.time() + 0.1
    assert api.pause_until(until, source="from w2")  # a pause begins meanwhile
    await waiting
    assert started[0] >= until and api.outcomes["held_by_pause"] == 1


async def test_a_pause_from_another_worker_before_any_call_here_sets_no_rate() -> None:
    api = build_downstream("api", max_concurrency=4)
    assert api.pause_until(time.time() + 0.05, source="from w2")  # no call made here yet
    assert api.stats().learnt_rate is None  # nothing learnt: still no limit

    async def call() -> str:
        return "ok"

    assert await api.run(call) == "ok"


async def test_a_call_waiting_for_its_slot_when_the_breaker_opens_does_not_go_out() -> None:
    api = Downstream("api", limit=FixedLimit(1), breaker=CircuitBreaker(wait_in_open=0.05))
    release = asyncio.Event()
    calls: list[str] = []

    async def hold() -> None:
        calls.append("first")
        await release.wait()

    async def second() -> None:
        calls.append("second")

    first = asyncio.ensure_future(api.run(hold))
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(api.run(second))  # admitted, waits for the only slot
    await asyncio.sleep(0)
    api.breaker.open_for(0.05)  # the breaker opens meanwhile
    release.set()
    await first
    await waiting
    assert calls == ["first", "second"] and api.outcomes["held_by_pause"] >= 1


class _Clocks:
    """One virtual time for the breaker (monotonic) and the guard's wall clock."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_a_worker_whose_probes_pass_tells_the_others_and_they_probe_at_once() -> None:
    clock = _Clocks()
    published: list[tuple[str, float]] = []

    async def publish_recovery(name: str, at: float) -> None:
        published.append((name, at))

    def make() -> Downstream:
        breaker = CircuitBreaker(minimum_calls=2, wait_in_open=5.0, half_open_calls=1,
                                 clock=clock)
        return Downstream("api", limit=FixedLimit(4), breaker=breaker, clock=clock,
                          wall_clock=clock, publish_recovery=publish_recovery)

    here, there = make(), make()
    for api in (here, there):  # the outage: both open
        for _ in range(2):
            api.breaker.record(0.01, failed=True)
        assert api.state.value == "open"
    clock.now += 5.0  # here: half-open, its probe passes
    assert here.breaker.allow()
    clock.now += 0.01
    here.breaker.record(0.01, failed=False)
    await asyncio.sleep(0)
    assert here.state.value == "closed" and published == [("api", clock.now)]
    # there opened at the same moment: a probe now, not at the end of its own wait
    there.breaker.open_for(5.0)  # (its wait restarts: a failed probe of its own)
    assert there.breaker.time_until_allowed() == 5.0
    clock.now += 1.0
    assert there.recovered_at(published[0][1] + 1.0, source="from here")
    assert there.state.value == "half_open" and there.outcomes["probed_on_news"] == 1
    assert not here.recovered_at(clock.now)  # closed: nothing to do


def test_recovery_news_older_than_the_opening_or_during_a_slow_down_changes_nothing() -> None:
    clock = _Clocks()
    api = Downstream("api", limit=FixedLimit(4), clock=clock, wall_clock=clock,
                     breaker=CircuitBreaker(minimum_calls=1, wait_in_open=5.0, clock=clock))
    api.breaker.record(0.01, failed=True)
    clock.now += 1.0
    assert not api.recovered_at(clock.now - 2.0)  # seen back before this opening: stale
    assert api.state.value == "open"
    api.pause_until(clock.now + 30.0)  # a slow-down in force: it holds the breaker
    assert not api.recovered_at(clock.now)
    assert api.state.value == "open" and api.paused_for == 30.0


def test_recovery_news_probes_at_most_once_per_min_open_period() -> None:
    clock = _Clocks()
    api = Downstream("api", limit=FixedLimit(4), clock=clock, wall_clock=clock,
                     breaker=CircuitBreaker(minimum_calls=1, wait_in_open=5.0,
                                            half_open_calls=1, clock=clock))
    api.breaker.record(0.01, failed=True)
    assert api.recovered_at(clock.now)  # just opened: probes RECOVERY_MIN_OPEN s later
    assert api.state.value == "open"
    assert api.breaker.time_until_allowed() == pytest.approx(RECOVERY_MIN_OPEN)
    clock.now += RECOVERY_MIN_OPEN
    assert api.breaker.allow() and api.state.value == "half_open"


def test_recovery_records_are_signed_range_checked_and_rejected_when_hostile() -> None:
    secret, now = b"s3cret", 1_700_000_000.0
    record = RecoveredRecord("api", "w1", now)
    raw, key = record.encode(secret), b"recovered/api"
    assert RecoveredRecord.decode(raw, key, secret, now=now, max_skew=10) == record
    with pytest.raises(RejectedRecord) as forged:
        RecoveredRecord.decode(raw, key, b"other", now=now, max_skew=10)
    assert forged.value.code == "bad_signature"
    ahead = RecoveredRecord("api", "w1", now + 100).encode(secret)
    with pytest.raises(RejectedRecord) as future:
        RecoveredRecord.decode(ahead, key, secret, now=now, max_skew=10)
    assert future.value.code == "future"
    with pytest.raises(RejectedRecord):  # a record for another dependency under this key
        RecoveredRecord.decode(raw, b"recovered/other", secret, now=now, max_skew=10)
    slow_down = SlowDownRecord("api", now + 2, "w1", now).encode(secret)
    with pytest.raises(RejectedRecord):  # another kind of record
        RecoveredRecord.decode(slow_down, key, secret, now=now, max_skew=10)


def _learning_guard(clock: _Clocks) -> tuple[Downstream, QuotaLearner]:
    learner = QuotaLearner(clock=clock)
    breaker = CircuitBreaker(minimum_calls=2, wait_in_open=0.5, half_open_calls=1, clock=clock)
    api = Downstream("api", limit=FixedLimit(4), breaker=breaker, clock=clock,
                     wall_clock=clock, quota=learner)
    return api, learner


def _serve(api: Downstream, learner: QuotaLearner, clock: _Clocks, per_second: int,
           seconds: float) -> None:
    for _ in range(round(per_second * seconds)):
        assert api.breaker.allow()
        learner.started()
        clock.now += 1 / per_second
        api.breaker.record(0.001, failed=False)
        learner.succeeded()


def test_a_slow_down_after_an_outage_learns_what_is_served_since_it_ended() -> None:
    # The outage's probes kept the learner's interval open: a 429 right after it learnt
    # what the outage served (1.2/s for two workers in the demo) and stayed near it.
    clock = _Clocks()
    api, learner = _learning_guard(clock)
    _serve(api, learner, clock, 100, 3)
    while api.state.value == "closed":  # the outage: failures open the breaker
        learner.started()
        clock.now += 0.01
        api.breaker.record(0.01, failed=True)
    for _ in range(10):  # a failed probe every wait (the calls never pause for a second)
        clock.now += 0.5
        assert api.breaker.allow()
        learner.started()
        clock.now += 0.01
        api.breaker.record(0.01, failed=True)
    clock.now += 0.5
    _serve(api, learner, clock, 100, 0.6)  # the probe passes: closed, then 100/s
    assert api.state.value == "closed"
    api.pause_until(clock.now + 1.0)  # a 429 within the first interval after the outage
    assert learner.rate == pytest.approx(90.0, rel=0.02)  # 0.9 x what was served since it was back


def test_a_slow_down_soon_after_a_pause_still_learns_from_what_was_served() -> None:
    # Only an outage restarts the measurement: a pause opens the breaker too, and restarting
    # at each close left nothing measured for a 429 soon after (no rate was learnt).
    clock = _Clocks()
    api, learner = _learning_guard(clock)
    _serve(api, learner, clock, 100, 2)
    api.pause_until(clock.now + 1.0)
    assert learner.rate == pytest.approx(90.0, rel=0.02)
    clock.now += 1.0
    # the pause ended: half-open, closed, 80/s (the first two seconds are the pause's ramp)
    _serve(api, learner, clock, 80, 3)
    assert api.state.value == "closed"
    clock.now += 0.2
    api.pause_until(clock.now + 1.0)  # a second slow-down soon after: fast backoff
    assert learner.rate == pytest.approx(0.7 * 80.0, rel=0.05)
