"""Ending a worker that cannot go on: :func:`crash_worker`."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any

from faust.types import AppT
from mode import Worker

from faust_backpressure.config.errors import one_line

#: Seconds a crashed worker may take to stop on its own before its process is ended.
CRASH_GRACE = 15.0


def crash_worker(app: AppT, error: BaseException, grace: float = CRASH_GRACE
                 ) -> asyncio.Future[Any]:
    """Crash the app with ``error``, shown as one line on stderr (as a bad setting is); under
    ``faust worker`` the process exits with code 1.

    ``app.crash`` alone may not end the worker: it stops the consumer's thread, and the failed
    agent's error handler (``on_task_error``) commits through that thread, waiting for ever. So
    past ``grace`` seconds a timer thread ends the process: offsets not committed are read
    again."""
    _to_stderr(one_line(error))
    if any(isinstance(node.data, Worker) for node in app.beacon.walk()):
        timer = threading.Timer(grace, _end_process, (error, grace))
        timer.daemon = True  # a worker that stopped in time exits without waiting for it
        timer.start()
    return asyncio.ensure_future(app.crash(error))


def _to_stderr(line: str) -> None:
    # the real stderr: a worker logs what is printed to sys.stderr, maybe into a log file
    print(line, file=sys.__stderr__ or sys.stderr, flush=True)


def _end_process(error: BaseException, grace: float) -> None:
    _to_stderr(f"{one_line(error)} (the worker did not stop within {grace:.0f} s: exiting)")
    os._exit(1)
