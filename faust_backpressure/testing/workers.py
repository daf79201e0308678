"""Real ``faust worker`` processes for tests and demos.

Each worker gets its own data dir, no web server (several on one machine would clash on the web
port), a log file, and dies with the process that started it even if that one is SIGKILLed.

Example::

    with FaustWorker("myapp.module", env={"KAFKA_BOOTSTRAP_SERVERS": bootstrap}) as worker:
        worker.wait_ready()
        ...
        worker.kill()          # SIGKILL, as a crash would
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from faust_backpressure.errors import BackpressureError
from faust_backpressure.testing.broker import _die_with_parent, stop_group

__all__ = ["READY_PATTERN", "REBALANCED_PATTERN", "FaustWorker", "WorkerError",
           "wait_until_settled"]

# Logged once per process, when the worker has started.
READY_PATTERN = r"\[\^Worker\]: Ready"
# Logged by the recovery service after each partition assignment, once streams flow again.
REBALANCED_PATTERN = r"\[\^-*Recovery\]: Worker ready"
# Logged by Faust when a worker gets its partitions for a group generation.
GENERATION_PATTERN = re.compile(r"generation id (\d+) app consumers id")


class WorkerError(BackpressureError, RuntimeError):
    """A worker exited or did not become ready in time; the message carries its log tail.

    ``summary`` is one line for people (what happened and the log's last line), without the
    log pattern that was awaited."""

    def __init__(self, summary: str, log_tail: str = "") -> None:
        super().__init__(f"{summary}:\n{log_tail}" if log_tail else summary)
        self.summary = summary
        self.log_tail = log_tail


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(empty log)"


class FaustWorker:
    """One ``faust -A <app> worker`` process."""

    def __init__(self, app: str, *, env: Mapping[str, str] | None = None, name: str = "worker",
                 data_dir: Path | None = None, loglevel: str = "info",
                 cwd: Path | None = None, web: bool = False) -> None:
        """``web``: run the app's web server as its settings say (give each worker its own
        port); by default none."""
        self.app = app
        self.web = web
        self.name = name
        self._own_data_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix=f"fbp-{name}-"))
        self.log_path = self.data_dir / f"{name}.log"
        self.loglevel = loglevel
        self.cwd = cwd or Path.cwd()
        self.env = {**os.environ, "FBP_WORKER_NAME": name, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._log_text = ""  # the complete lines read so far
        self._log_bytes = 0  # their size in the file

    def start(self) -> FaustWorker:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pythonpath = os.pathsep.join(filter(None, [str(self.cwd), self.env.get("PYTHONPATH")]))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "faust", "-A", self.app, "--datadir",
                 str(self.data_dir / "state"), "-l", self.loglevel, "worker",
                 *([] if self.web else ["--without-web"])],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**self.env, "PYTHONPATH": pythonpath}, cwd=self.cwd,
                preexec_fn=_die_with_parent, start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "worker not started"
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        """The log's complete lines, read incrementally: waits poll it every 0.1 s and a
        log grows to megabytes."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_bytes)
                new = log.read()
        except FileNotFoundError:
            return self._log_text
        complete = new.rfind(b"\n") + 1  # a line still being written is read next time
        if complete:
            self._log_text += new[:complete].decode(errors="replace")
            self._log_bytes += complete
        return self._log_text

    def wait_for_log(self, pattern: str, timeout: float = 60.0, *, new_only: bool = True,
                     what: str | None = None) -> str:
        """Wait until ``pattern`` appears in the log (after the last match when ``new_only``);
        ``what`` says in words what is awaited (errors name it, not the regex)."""
        what = what or f"/{pattern}/"
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.logs()
            match = regex.search(text, self._log_offset if new_only else 0)
            if match:
                self._log_offset = match.end()
                return match.group(0)
            if not self.alive:
                raise WorkerError(f"{self.name} exited (code {self._exit_code()}) before "
                                  f"{what}: {_last_line(text)}", text[-5000:])
            if time.monotonic() > deadline:
                raise WorkerError(f"{self.name}: not {what} within {timeout:.0f} s (log: "
                                  f"{self.log_path}): {_last_line(text)}", text[-5000:])
            time.sleep(0.1)

    def wait_ready(self, timeout: float = 60.0) -> FaustWorker:
        """Wait until the worker has started and joined its group."""
        self.wait_for_log(READY_PATTERN, timeout, what="it was ready")
        return self

    def wait_rebalanced(self, timeout: float = 60.0) -> FaustWorker:
        """Wait for the next completed partition assignment (after a worker joins or dies)."""
        self.wait_for_log(REBALANCED_PATTERN, timeout, what="rebalanced")
        return self

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for the process to exit by itself (e.g. after a crash); its exit code."""
        assert self.proc is not None, "worker not started"
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            text = self.logs()
            raise WorkerError(f"{self.name}: still running after {timeout:.0f} s (log: "
                              f"{self.log_path}): {_last_line(text)}", text[-5000:]) from None

    def _exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no commit, no flush; exactly what a crash does."""
        if self.proc is not None:
            stop_group(self.proc, kill=True)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait for a clean exit (SIGKILL after ``timeout``)."""
        if self.proc is not None:
            stop_group(self.proc, timeout)
        return self._exit_code()

    def cleanup(self) -> None:
        self.stop()
        if self._own_data_dir and not os.environ.get("FBP_KEEP_WORKER_DIRS"):  # for debugging
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> FaustWorker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()


def _settled_generation(worker: FaustWorker) -> int | None:
    """The generation this worker last finished a rebalance of, or None while it is in one."""
    text = worker.logs()
    last = None
    for last in GENERATION_PATTERN.finditer(text):  # noqa: B007  (the last match is wanted)
        pass
    if last is None or not re.search(REBALANCED_PATTERN, text[last.end():]):
        return None
    return int(last.group(1))


def wait_until_settled(workers: list[FaustWorker], timeout: float = 60.0) -> int:
    """Wait until every worker has finished the same, latest rebalance; return its generation.

    After starting several workers, the group rebalances once per join; waiting for this (not
    for a fixed time) makes sure no rebalance is still pending when the test starts its load.
    """
    deadline = time.monotonic() + timeout
    while True:
        generations = {_settled_generation(w) for w in workers}
        if None not in generations and len(generations) == 1:
            return int(generations.pop() or 0)
        dead = [w.name for w in workers if not w.alive]
        if dead:
            raise WorkerError(f"workers exited while waiting for the group to settle: {dead}")
        if time.monotonic() > deadline:
            raise WorkerError(f"group did not settle within {timeout:.0f} s: {generations}")
        time.sleep(0.1)
