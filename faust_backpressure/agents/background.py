"""Fire-and-forget work of a component (a record to publish, a timer to settle): the loop
keeps only weak references to tasks, so the set holds them until they end; a failure is
logged with what the task was for, and ``stop`` cancels what is left."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

__all__ = ["BackgroundTasks"]

log = logging.getLogger(__name__)


class BackgroundTasks:
    """The background tasks of ``owner`` (named in the log)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: dict[asyncio.Future[None], str] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Awaitable[None], what: str) -> asyncio.Future[None]:
        """Run ``work`` in the background; ``what`` says what it is for, in a failure's log."""
        task = asyncio.ensure_future(work)
        self._tasks[task] = what
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Future[None]) -> None:
        what = self._tasks.pop(task, "a task")
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("%s: %s failed", self.owner, what, exc_info=error)

    async def join(self) -> None:
        """Wait until the tasks running now have ended (failures are logged, not raised)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Cancel the tasks still running and wait until they end."""
        for task in self._tasks:
            task.cancel()
        await self.join()
