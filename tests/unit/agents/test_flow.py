"""``unless_flow_stops``: the one wait of an event that Faust stopping the flow cuts short."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from faust_backpressure.agents.flow import unless_flow_stops


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
