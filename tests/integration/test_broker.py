"""The broker harness keeps its promises: clear errors, no broker left behind, the env override."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faust_backpressure.testing import broker as broker_module
from faust_backpressure.testing.broker import (
    BrokerError,
    LocalKafkaBroker,
    ensure_kafka_jars,
    kafka_home,
    kafka_version,
)
from faust_backpressure.testing.broker import kafka_bootstrap as external_or_local_broker

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _wait_dead(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return False


def test_missing_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match="`java` was not found"):
        LocalKafkaBroker(data_dir=tmp_path / "data").start()


def test_missing_maven_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("FAUST_BP_KAFKA_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(BrokerError, match="`mvn` was not found"):
        ensure_kafka_jars()


def test_unsupported_version_is_a_clear_error(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAUST_BP_KAFKA_HOME", str(tmp_path))
    with pytest.raises(BrokerError, match=r"only Kafka 3\.x and 4\.x"):
        ensure_kafka_jars("2.8.2")


def test_external_bootstrap_starts_nothing(monkeypatch: pytest.MonkeyPatch,
                                           kafka_bootstrap: str) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a broker was started although KAFKA_BOOTSTRAP_SERVERS is set")

    monkeypatch.setattr(broker_module.LocalKafkaBroker, "start", refuse)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    with external_or_local_broker() as address:
        assert address == kafka_bootstrap


@pytest.mark.kafka
def test_broker_dies_with_the_process_that_started_it_even_on_sigkill() -> None:
    ensure_kafka_jars()
    script = (
        "import sys, time\n"
        "from faust_backpressure.testing.broker import LocalKafkaBroker\n"
        "b = LocalKafkaBroker().start()\n"
        "print(b.proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    try:
        assert parent.stdout is not None
        java_pid = int(parent.stdout.readline())
        assert _alive(java_pid)
    finally:
        parent.kill()  # SIGKILL: no finaliser, no atexit runs in the parent
        parent.wait()
    assert _wait_dead(java_pid), f"broker {java_pid} outlived its SIGKILLed parent"


@pytest.mark.kafka
def test_start_stop_command(tmp_path: Path) -> None:
    # Reuse the cached jars; keep this broker's state apart from any broker a human started.
    (tmp_path / kafka_version()).mkdir()
    for name in ("libs", ".complete"):
        (tmp_path / kafka_version() / name).symlink_to(kafka_home() / kafka_version() / name)
    env = {**os.environ, "FAUST_BP_KAFKA_HOME": str(tmp_path)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    command = [sys.executable, "-m", "faust_backpressure.testing.broker"]
    ensure_kafka_jars()
    started = subprocess.run([*command, "start"], env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=120, check=True)
    address = started.stdout.strip()
    assert address.startswith("127.0.0.1:")
    state = (tmp_path / "run" / "broker.json").read_text()
    pid = int(state.split('"pid": ')[1].split(",")[0])
    try:
        status = subprocess.run([*command, "status"], env=env, cwd=REPO, capture_output=True,
                                text=True, timeout=30)
        assert status.returncode == 0 and status.stdout.strip() == address
        stopped = subprocess.run([*command, "stop"], env=env, cwd=REPO, capture_output=True,
                                 text=True, timeout=60)
        assert stopped.returncode == 0
        assert _wait_dead(pid)
        status = subprocess.run([*command, "status"], env=env, cwd=REPO, capture_output=True,
                                text=True, timeout=30)
        assert status.returncode == 1 and status.stdout.strip() == "not running"
    finally:
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
