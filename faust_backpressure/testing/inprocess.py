"""Run a Faust app inside the test's own event loop (no CLI, no subprocess)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import faust

__all__ = ["running_app"]


@contextlib.asynccontextmanager
async def running_app(app: faust.App) -> AsyncIterator[faust.App]:
    """``async with running_app(app):`` starts the app (agents, tables, consumer) and stops it.

    ``app.start()`` returns once the app's services are started; stopping also stops the
    consumer so the group is left cleanly. The app runs as in a worker: Faust only uses
    transactions (``processing_guarantee="exactly_once"``) in one.
    """
    app.in_worker = True
    await app.start()
    try:
        yield app
    finally:
        await app.stop()
