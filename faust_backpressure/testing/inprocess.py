"""Run a Faust app inside the test's own event loop (no CLI, no subprocess)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import faust

from faust_backpressure.errors import BackpressureError

__all__ = ["STOP_TIMEOUT", "AppStopHang", "running_app"]


@contextlib.asynccontextmanager
async def running_app(app: faust.App) -> AsyncIterator[faust.App]:
    """``async with running_app(app):`` starts the app (agents, tables, consumer) and stops it.

    ``app.start()`` returns once the app's services are started; stopping also stops the
    consumer so the group is left cleanly. The app runs as in a worker: Faust only uses
    transactions (``processing_guarantee="exactly_once"``) in one.
    """
    app.in_worker = True
    await _within(app.start(), STOP_TIMEOUT, f"app {app.conf.id!r} did not start")
    try:
        yield app
    finally:
        await _within(app.stop(), STOP_TIMEOUT, f"app {app.conf.id!r} did not stop")


async def _within(step: Any, timeout: float, what: str) -> None:
    """Await ``step``; if it has not returned after ``timeout`` s, raise :class:`AppStopHang`
    with every waiting task's await chain, instead of a test timeout killing the process
    without a trace (``asyncio.wait_for`` would wait for ever on a step that ignores its
    cancellation)."""
    running = asyncio.ensure_future(step)
    done, _ = await asyncio.wait([running], timeout=timeout)
    if not done:
        raise AppStopHang(f"{what} within {timeout:g} s; waiting tasks:\n{_waiting_tasks()}")
    running.result()


#: Seconds an app's start or stop may take in a test (a clean one takes a few).
STOP_TIMEOUT = 90.0


class AppStopHang(BackpressureError):
    """``app.start()`` or ``app.stop()`` did not return: a defect (something waits for
    ever)."""


def _waiting_tasks() -> str:
    """Each pending task and the chain of awaits it is suspended in (asyncio's own stack
    print stops at the first async generator or awaited future)."""
    lines = []
    for task in asyncio.all_tasks():
        if task.done():
            continue
        chain: list[str] = []
        frame_of: Any = task.get_coro()
        while frame_of is not None:
            frame = getattr(frame_of, "cr_frame", None) or getattr(frame_of, "ag_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename}:"
                             f"{frame.f_lineno})")
            frame_of = getattr(frame_of, "cr_await", None) or getattr(frame_of, "ag_await", None)
        lines.append(f"- {task.get_name()}: {' -> '.join(chain) if chain else repr(task)}")
    return "\n".join(lines)
