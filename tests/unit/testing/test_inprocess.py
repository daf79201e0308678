"""running_app's bounded stop: a stop that never returns fails the test, saying where it waits."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from faust_backpressure.testing import inprocess


class HangingApp:
    def __init__(self) -> None:
        self.conf = SimpleNamespace(id="hanging")
        self.in_worker = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self.flush_for_ever()

    async def flush_for_ever(self) -> None:
        await asyncio.Event().wait()


async def test_a_stop_that_hangs_is_an_error_naming_where_it_waits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inprocess, "STOP_TIMEOUT", 0.05)
    app: Any = HangingApp()
    with pytest.raises(inprocess.AppStopHang, match="did not stop") as caught:
        async with inprocess.running_app(app):
            assert app.in_worker
    assert "stop (" in str(caught.value) and "flush_for_ever (" in str(caught.value)
    for task in asyncio.all_tasks():  # the hanging stop is left behind: end it here
        if task is not asyncio.current_task():
            task.cancel()
