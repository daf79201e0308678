"""Issue 14: a bad FAUST_BP_* setting stops ``faust -A app worker`` with one line naming it,
not a 53-line traceback opening with Faust's ``AttributeError: module ... has no attribute``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from faust_backpressure.testing.workers import FaustWorker, WorkerError

REPO = Path(__file__).resolve().parents[3]


def _worker(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "faust", "-A", "examples.pipeline_app", "worker",
         "--without-web"], capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
             **env})


@pytest.mark.parametrize(("env", "line"), [
    ({"FAUST_BP_MAX_CONSUMER_LAG": "abc"},
     "FAUST_BP_MAX_CONSUMER_LAG must be an integer >= 1, got 'abc'"),
    ({"FAUST_BP_SCALING_THRESHOLD": "20000"},
     "FAUST_BP_SCALING_THRESHOLD must be <= max_consumer_lag (10000), got 20000"),
])
def test_a_worker_with_a_bad_setting_exits_with_one_line_naming_it(env: dict[str, str],
                                                                   line: str) -> None:
    done = _worker(env)
    assert done.returncode != 0
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert lines == [f"faust-backpressure: invalid setting: {line}"], done.stderr


def test_worker_error_summary_is_the_workers_last_line_not_a_regex(tmp_path: Path) -> None:
    worker = FaustWorker("examples.pipeline_app", name="bad", cwd=REPO, data_dir=tmp_path,
                         env={"FAUST_BP_ON_LIMIT": "drop",
                              "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    with pytest.raises(WorkerError) as caught:
        worker.start().wait_ready(timeout=60)
    summary = caught.value.summary
    assert summary.startswith("bad exited (code 1) before it was ready: faust-backpressure: "
                              "invalid setting: FAUST_BP_ON_LIMIT must be one of wait, shed")
    assert "\\[" not in summary and "\n" not in summary


@pytest.mark.parametrize(("code", "env", "line"), [
    ("BackpressureSettings.from_env()", {"FAUST_BP_REPLAY_RATE": "0"},
     "FAUST_BP_REPLAY_RATE must be a finite number > 0, got 0.0"),
    ("BackpressureSettings(max_retries=-1)", {},
     "max_retries must be an integer >= 0, got -1"),
])
def test_a_top_level_app_module_with_a_bad_setting_is_one_line_too(
        tmp_path: Path, code: str, env: dict[str, str], line: str) -> None:
    # Faust reports a top-level module's import error as ValueError("Cannot import ...")
    (tmp_path / "badapp.py").write_text(
        "import faust\n"
        "from faust_backpressure.app import Backpressure\n"
        "from faust_backpressure.config import BackpressureSettings\n"
        "app = faust.App('badapp', broker='kafka://127.0.0.1:1')\n"
        f"bp = Backpressure(app, settings={code})\n")
    done = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "badapp", "worker", "--without-web"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}", **env})
    assert done.returncode != 0
    assert [x for x in done.stderr.splitlines() if x.strip()] == [
        f"faust-backpressure: invalid setting: {line}"], done.stderr
