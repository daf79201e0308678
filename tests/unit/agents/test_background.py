"""A component's background tasks: kept until they end, failures logged, cancelled on stop."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from faust_backpressure.agents.background import BackgroundTasks
from faust_backpressure.agents.quota_gate import SharedQuota
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.limiters.quota import QuotaLearner
from tests.unit.limiters.conftest import FakeClock


async def test_a_task_is_kept_until_it_ends_and_a_failure_is_logged_with_what_it_was_for(
        caplog: pytest.LogCaptureFixture) -> None:
    tasks = BackgroundTasks("downstream api")
    done = asyncio.Event()
    ran: list[str] = []

    async def work() -> None:
        await done.wait()
        ran.append("work")

    async def fail() -> None:
        raise ConnectionError("broker gone")

    tasks.spawn(work(), "publishing the recovery")
    tasks.spawn(fail(), "publishing the quota report")
    assert len(tasks) == 2
    with caplog.at_level(logging.ERROR, logger="faust_backpressure.agents.background"):
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    assert len(tasks) == 1  # the failed one is gone, the other still held
    (record,) = caplog.records
    assert record.getMessage() == "downstream api: publishing the quota report failed"
    assert isinstance(record.exc_info and record.exc_info[1], ConnectionError)
    done.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # (done callbacks run a loop turn after the task ends)
    assert ran == ["work"] and len(tasks) == 0


async def test_stop_cancels_the_tasks_still_running_and_waits_for_them(
        caplog: pytest.LogCaptureFixture) -> None:
    tasks = BackgroundTasks("downstream api")
    cleaned: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append("forever")

    task = tasks.spawn(forever(), "settling the episode")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR):
        await tasks.stop()
    assert task.cancelled() and cleaned == ["forever"] and len(tasks) == 0
    assert not caplog.records  # a cancelled task is no failure
    await tasks.stop()  # nothing left: a no-op


async def test_a_shared_quota_stops_its_settling_episode() -> None:
    clock = FakeClock()
    learner = QuotaLearner(clock=clock)
    limiter = TokenBucketRateLimiter(1000, 20, clock=clock)
    quota = SharedQuota("api", learner, limiter, worker="w1", reporter=None,
                        wall_clock=time.time, settle=60.0)
    for _ in range(100):
        learner.started()
        clock.advance(0.01)
        learner.succeeded()
    quota.episode(time.time() + 1.0, 1.0)
    await asyncio.sleep(0)
    await quota.stop()  # the worker stops within the settle time: no rate is set
    assert quota.rate is None and limiter.current_rate_limit == 1000


async def test_join_waits_for_the_running_tasks_to_end_and_raises_none_of_their_failures() -> None:
    tasks = BackgroundTasks("downstream api")
    done = asyncio.Event()
    ran: list[str] = []

    async def work() -> None:
        await done.wait()
        ran.append("work")

    async def fail() -> None:
        raise ConnectionError("broker gone")

    tasks.spawn(work(), "settling the episode")
    tasks.spawn(fail(), "publishing the quota report")
    joined = asyncio.ensure_future(tasks.join())
    await asyncio.sleep(0)
    assert not joined.done()  # work is still waiting
    done.set()
    await joined  # no ConnectionError out of it
    assert ran == ["work"]
