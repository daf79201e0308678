"""Dead-lettered records are logged as a summary, at most one WARNING line per interval.

One line per record would drown the log. The first dead-lettered record of a pipeline is
logged in full (so its reason is seen at once); later ones are counted by error type and
summarised every ``interval`` seconds (a timer writes the last summary even if no further
record fails). Every record is still logged at DEBUG, and the DLQ keeps every reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

__all__ = ["SUMMARY_INTERVAL", "DeadLetterLog"]

#: Seconds between two summary lines of one pipeline.
SUMMARY_INTERVAL = 10.0


class DeadLetterLog:
    """Counts a pipeline's dead-lettered records and logs them as rate-limited summaries."""

    def __init__(self, pipeline: str, logger: logging.Logger, *,
                 interval: float = SUMMARY_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pipeline = pipeline
        self.log = logger
        self.interval = interval
        self.clock = clock
        self._counts: Counter[str] = Counter()
        self._last = ""
        self._since: float | None = None  # when the last WARNING line was written
        self._timer: asyncio.TimerHandle | None = None

    def record(self, where: str, error: BaseException, attempts: int) -> None:
        """One record went to the DLQ; ``where`` is ``topic[partition]@offset``."""
        detail = f"{where} after {attempts} attempt(s): {type(error).__name__}: {error}"
        self.log.debug("pipeline %s: %s -> DLQ", self.pipeline, detail)
        now = self.clock()
        if self._since is None:
            self.log.warning("pipeline %s: record dead-lettered: %s (further ones are "
                             "summarised every %g s)", self.pipeline, detail, self.interval)
            self._since = now
            return
        self._counts[type(error).__name__] += 1
        self._last = detail
        if now - self._since >= self.interval:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (a unit test): the next record past the interval flushes
            self._timer = loop.call_later(self._since + self.interval - now, self.flush)

    def flush(self) -> None:
        """Write the summary of what was counted since the last line (nothing if none)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._counts:
            return
        now = self.clock()
        kinds = ", ".join(f"{k}: {n}" for k, n in self._counts.most_common())
        self.log.warning("pipeline %s: %d record(s) dead-lettered in the last %.0f s (%s); "
                         "last: %s", self.pipeline, sum(self._counts.values()),
                         now - (self._since if self._since is not None else now), kinds,
                         self._last)
        self._counts.clear()
        self._since = now
