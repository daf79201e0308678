"""``unless_flow_stops`` and ``StopWatch``: the waits of an event that Faust stopping the flow
cuts short."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from faust_backpressure.agents.flow import STOPPED, StopWatch, unless_flow_stops


def _app(suspend_flow: asyncio.Event | None) -> Any:
    """An app whose consumer has Faust's "flow stopped" event (none: not started)."""
    return SimpleNamespace(_consumer=None if suspend_flow is None
                           else SimpleNamespace(suspend_flow=suspend_flow))


async def test_without_a_consumer_it_just_awaits() -> None:
    assert await unless_flow_stops(_app(None), asyncio.sleep(0.01))


async def test_completed_before_the_flow_stops() -> None:
    assert await unless_flow_stops(_app(asyncio.Event()), asyncio.sleep(0.01))


async def test_the_flow_stopping_first_cancels_the_work() -> None:
    stopped = asyncio.Event()
    cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    asyncio.get_running_loop().call_later(0.01, stopped.set)
    assert not await unless_flow_stops(_app(stopped), work())
    assert cancelled.is_set()  # it has finished leaving when the call returns


async def test_an_already_stopped_flow_gives_up_at_once() -> None:
    stopped = asyncio.Event()
    stopped.set()
    assert not await asyncio.wait_for(
        unless_flow_stops(_app(stopped), asyncio.sleep(60)), 1)


async def test_the_work_s_error_is_raised() -> None:
    async def fail() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await unless_flow_stops(_app(asyncio.Event()), fail())
    with pytest.raises(ValueError, match="no"):
        await unless_flow_stops(_app(None), fail())


async def test_a_stop_watch_returns_what_completed_and_stops_what_still_waits() -> None:
    watch, stopped, left = StopWatch(), asyncio.Event(), []

    async def wait(forever: bool) -> str:
        try:
            if forever:
                await asyncio.get_running_loop().create_future()
            return "done"
        except asyncio.CancelledError:
            left.append("left")
            raise

    assert await watch.until_set(stopped, wait(False)) == "done"
    waits = [asyncio.ensure_future(watch.until_set(stopped, wait(True))) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waits)
    stopped.set()
    assert await asyncio.gather(*waits) == [STOPPED] * 3
    assert left == ["left"] * 3  # each wait was cancelled inside, and has left
    # set already: what completes at once is kept, what would wait is not
    assert await watch.until_set(stopped, wait(False)) == "done"
    assert await asyncio.wait_for(watch.until_set(stopped, wait(True)), 1) is STOPPED
    # cleared again (the flow resumed): a new watcher for the next stop
    stopped.clear()
    again = asyncio.ensure_future(watch.until_set(stopped, wait(True)))
    await asyncio.sleep(0)
    stopped.set()
    assert await again is STOPPED
    watch.stop()


async def test_a_stop_watch_lets_another_cancel_through_and_raises_errors() -> None:
    watch, stopped = StopWatch(), asyncio.Event()
    waiting = asyncio.ensure_future(
        watch.until_set(stopped, asyncio.get_running_loop().create_future()))
    await asyncio.sleep(0)
    waiting.cancel()  # the caller's own cancel is not a stop
    with pytest.raises(asyncio.CancelledError):
        await waiting

    async def fail() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await watch.until_set(stopped, fail())
    watch.stop()


async def test_a_wait_that_swallows_the_stop_keeps_its_result_and_no_cancel_is_left() -> None:
    watch, stopped = StopWatch(), asyncio.Event()

    async def stubborn() -> str:
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            return "kept"  # (a limiter must not do this: it would take what it got)
        return "never"

    async def call() -> tuple[object, int]:
        result = await watch.until_set(stopped, stubborn())
        task = asyncio.current_task()
        assert task is not None
        return result, task.cancelling()

    waiting = asyncio.ensure_future(call())
    await asyncio.sleep(0)
    stopped.set()
    assert await waiting == ("kept", 0)
    watch.stop()
