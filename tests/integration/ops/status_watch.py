"""``backpressure status --json --watch`` for the operator tests: one CLI process per test
whose reports are read as they come, instead of a new process (~2 s of CPU to start) for each
look at the cluster."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]


class StatusWatch:
    """One ``faust -A APP backpressure status --json --watch INTERVAL`` process."""

    def __init__(self, app: str, env: dict[str, str], interval: float = 0.5) -> None:
        before_start = time.time()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", app, "backpressure", "status", "--json",
             "--watch", str(interval)],
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **env})
        self.interval = interval
        self._previous_end = before_start - interval  # so the first began after before_start
        self._reports: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self._reports.put(json.loads(line))
        self._reports.put(None)

    def fresh(self, timeout: float = 60.0, since: float | None = None) -> dict[str, Any]:
        """The first report that began after this call (or ``since``): a report begins
        ``interval`` s after the one before it ended, the first one after the process
        started."""
        asked = time.time() if since is None else since
        deadline = time.monotonic() + timeout
        while True:
            try:
                report = self._reports.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no status report in {timeout:.0f} s") from None
            if report is None:
                self._stderr.seek(0)
                raise AssertionError("status --watch exited: "
                                     + self._stderr.read().decode(errors="replace")[-3000:])
            began_after = self._previous_end + self.interval > asked
            self._previous_end = report["at"]
            if began_after:
                return report

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


class StatusWatches:
    """A test's watches, one per app id (``env["FBP_APP_ID"]``); :meth:`close` ends them."""

    def __init__(self, app: str) -> None:
        self.app = app
        self._by_app_id: dict[str, StatusWatch] = {}

    def report(self, env: dict[str, str]) -> dict[str, Any]:
        """``status --json`` as of this call."""
        app_id, asked = env["FBP_APP_ID"], time.time()
        if app_id not in self._by_app_id:
            self._by_app_id[app_id] = StatusWatch(self.app, env)
        return self._by_app_id[app_id].fresh(since=asked)

    def close(self) -> None:
        for watch in self._by_app_id.values():
            watch.close()
        self._by_app_id.clear()
