"""acquire() with a real event loop: ordering and outcomes, never wall-clock durations."""

from __future__ import annotations

import asyncio

import pytest

from faust_backpressure.limiters import (
    LeakyBucketRateLimiter,
    MultiTierRateLimiter,
    RateLimitTimeout,
    SlidingWindowRateLimiter,
    TokenBucketRateLimiter,
)

from .conftest import FakeClock

GUARD = 5.0  # generous guard so a bug hangs the test for 5 s, not forever


async def test_immediate_acquire_does_not_wait() -> None:
    tb = TokenBucketRateLimiter(10, 5)
    await tb.acquire(5)
    s = tb.stats()
    assert (s.granted, s.waits, s.sleeps) == (5, 0, 0)


async def test_fifo_large_request_not_starved_by_later_small_ones() -> None:
    tb = TokenBucketRateLimiter(200, 10, initial_tokens=0)
    done: list[str] = []

    async def take(name: str, n: int) -> None:
        await tb.acquire(n)
        done.append(name)

    big = asyncio.create_task(take("big", 10))
    await asyncio.sleep(0)
    smalls = [asyncio.create_task(take(f"s{i}", 1)) for i in range(5)]
    await asyncio.sleep(0)
    assert tb.queued_waiters == 6
    # tokens exist for the small ones long before 10 do, yet nobody jumps the queue
    await asyncio.wait_for(asyncio.gather(big, *smalls), GUARD)
    assert done == ["big", "s0", "s1", "s2", "s3", "s4"]
    assert tb.stats().granted == 15


async def test_try_acquire_does_not_jump_the_queue(clock: FakeClock) -> None:
    tb = TokenBucketRateLimiter(10, 10, initial_tokens=5, clock=clock)
    waiter = asyncio.create_task(tb.acquire(10))
    await asyncio.sleep(0)
    assert tb.current_tokens == 5
    assert not tb.try_acquire()
    assert not await tb.try_acquire_async()
    clock.advance(1.0)
    tb.update_rate_limit(10)  # wakes the head to recheck the clock now
    await asyncio.wait_for(waiter, GUARD)
    assert tb.try_acquire() is False  # bucket is empty now, queue is gone
    clock.advance(0.1)
    assert tb.try_acquire()


async def test_timeout_raises_and_takes_nothing() -> None:
    tb = TokenBucketRateLimiter(0.001, 1, initial_tokens=0)
    with pytest.raises(RateLimitTimeout, match=r"within 0\.02 s"):
        await tb.acquire(timeout=0.02)
    with pytest.raises(TimeoutError):
        await tb.acquire(timeout=0)
    assert tb.queued_waiters == 0
    assert tb.stats().granted == 0
    with pytest.raises(ValueError, match="timeout"):
        await tb.acquire(timeout=-1)


async def test_queued_waiter_times_out_behind_a_slow_head() -> None:
    tb = TokenBucketRateLimiter(0.001, 5, initial_tokens=0)
    head = asyncio.create_task(tb.acquire(5))
    await asyncio.sleep(0)
    with pytest.raises(RateLimitTimeout):
        await tb.acquire(1, timeout=0.02)
    assert tb.queued_waiters == 1
    head.cancel()
    with pytest.raises(asyncio.CancelledError):
        await head
    assert tb.queued_waiters == 0


async def test_cancelled_head_takes_nothing_and_next_waiter_proceeds() -> None:
    tb = TokenBucketRateLimiter(100, 10, initial_tokens=0)
    head = asyncio.create_task(tb.acquire(10))  # needs 0.1 s
    await asyncio.sleep(0)
    nxt = asyncio.create_task(tb.acquire(1))
    await asyncio.sleep(0)
    head.cancel()
    await asyncio.wait_for(nxt, GUARD)
    assert head.cancelled()
    assert tb.stats().granted == 1
    assert tb.queued_waiters == 0
    assert tb.try_acquire() or tb.time_until_available() > 0  # the fast path is live again


async def test_acquire_with_fake_clock_rechecks_after_waking(clock: FakeClock) -> None:
    tb = TokenBucketRateLimiter(100, 1, initial_tokens=0, clock=clock)
    task = asyncio.create_task(tb.acquire())
    await asyncio.sleep(0)
    assert not task.done()
    # its timer fires after 10 ms of loop time; the virtual clock has not moved yet
    await asyncio.sleep(0.03)
    assert not task.done()
    assert tb.stats().sleeps >= 2  # it woke, rechecked the injected clock, slept again
    clock.advance(0.01)
    await asyncio.wait_for(task, GUARD)
    assert tb.stats().granted == 1


async def test_rate_change_wakes_the_head_early() -> None:
    tb = TokenBucketRateLimiter(0.01, 1, initial_tokens=0)  # would wait 100 s
    task = asyncio.create_task(tb.acquire())
    await asyncio.sleep(0)
    tb.update_rate_limit(1000)
    await asyncio.wait_for(task, GUARD)
    assert tb.stats().sleeps <= 3


async def test_reset_wakes_the_head_early() -> None:
    tb = TokenBucketRateLimiter(0.01, 2)
    assert tb.try_acquire(2)
    task = asyncio.create_task(tb.acquire(2))
    await asyncio.sleep(0)
    tb.reset()  # full again
    await asyncio.wait_for(task, GUARD)
    assert tb.stats().granted == 2  # counters were reset, then the waiter took 2


async def test_no_polling_one_wait_is_a_few_sleeps() -> None:
    tb = TokenBucketRateLimiter(50, 5, initial_tokens=0)
    await asyncio.wait_for(tb.acquire(5), GUARD)  # 0.1 s of waiting
    s = tb.stats()
    assert s.waits == 1
    assert 1 <= s.sleeps <= 3


async def test_no_polling_patched_sleep_never_called(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    real_sleep = asyncio.sleep

    async def spy(delay: float, *args: object) -> None:
        calls.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr(asyncio, "sleep", spy)
    tb = TokenBucketRateLimiter(100, 3, initial_tokens=0)
    await asyncio.wait_for(tb.acquire(3), GUARD)
    assert calls == []  # waits on one timer-backed future, not sleep loops
    assert tb.stats().sleeps <= 3


async def test_multi_tier_acquire_waits_for_the_slowest_tier() -> None:
    m = MultiTierRateLimiter([("fast", 1000, 10), ("slow", 100, 2)])
    for _ in range(4):
        await asyncio.wait_for(m.acquire(), GUARD)
    s = m.stats()
    assert s.granted == 4
    assert s.sleeps <= 3 * s.waits
    assert m.tiers["fast"].stats().granted == 4


@pytest.mark.parametrize(
    "limiter",
    [LeakyBucketRateLimiter(200, 1), SlidingWindowRateLimiter(2, 0.02, sub_windows=2)],
    ids=["leaky", "window"],
)
async def test_other_limiters_acquire(
    limiter: LeakyBucketRateLimiter | SlidingWindowRateLimiter,
) -> None:
    order: list[int] = []

    async def take(i: int) -> None:
        await limiter.acquire()
        order.append(i)

    await asyncio.wait_for(asyncio.gather(*(take(i) for i in range(6))), GUARD)
    assert order == list(range(6))
    s = limiter.stats()
    assert s.granted == 6
    assert s.sleeps <= 3 * s.waits
