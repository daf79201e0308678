"""A real Apache Kafka broker (one KRaft node) that the project starts by itself.

The broker jars come from Maven Central through Maven and are cached under ``.kafka/`` at the
repo root (or ``$FAUST_BP_KAFKA_HOME``), so they are fetched once per checkout (Maven's own
``~/.m2`` makes later checkouts on the same machine copy, not download).

Three ways to use it:

* :func:`kafka_bootstrap` / :class:`LocalKafkaBroker` from Python (the pytest session fixture);
* ``python -m faust_backpressure.testing.broker start|stop|status|fetch`` for humans and the demo;
* ``KAFKA_BOOTSTRAP_SERVERS=host:port`` set in the environment: that broker is used and nothing is
  started (for example a ``docker compose up`` broker).

Example::

    with LocalKafkaBroker() as broker:
        print(broker.bootstrap_servers)   # 127.0.0.1:<free port>
        broker.halt()                     # an outage: stopped, data dir kept (kill=True: SIGKILL)
        broker.restart()                  # same ports, same data: topics, offsets, transactions
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

# The distribution's names are re-exported: tests and tools import them from here.
from faust_backpressure.testing.kafka_dist import (
    DEFAULT_KAFKA_VERSION,
    BrokerError,
    ensure_kafka_jars,
    kafka_home,
    kafka_version,
    run_kafka_tool,
)
from faust_backpressure.testing.kafka_dist import java as kafka_java

__all__ = ["DEFAULT_KAFKA_VERSION", "BrokerError", "LocalKafkaBroker", "ensure_kafka_jars",
           "kafka_bootstrap", "kafka_home", "run_kafka_tool", "wait_for_broker"]

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"


def free_port() -> int:
    """A TCP port nothing listens on now (for brokers and test web servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_bindable(port: int) -> bool:
    """Whether a listener could bind ``127.0.0.1:port`` now (as the broker does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cluster_id(raw: bytes | None = None) -> str:
    """A KRaft cluster id: 22 base64url characters of 16 random bytes (or of ``raw``).

    The first byte's top bit is cleared so the id never starts with ``-`` or ``_``: Kafka's
    ``StorageTool`` would take a leading ``-`` for an option.
    """
    data = bytearray(uuid.uuid4().bytes if raw is None else raw)
    if len(data) != 16:
        raise ValueError(f"a cluster id is made of 16 bytes, got {len(data)}")
    data[0] &= 0x7F
    return base64.urlsafe_b64encode(bytes(data)).decode().rstrip("=")


def _die_with_parent() -> None:
    """Runs in the broker's child process: SIGKILL it when the test process dies, however.

    Linux sends the signal when the *thread* that launched the broker exits: a broker
    (re)started from ``asyncio.to_thread`` dies when the event loop shuts its executor down."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 15.0, *,
               kill: bool = False) -> None:
    """End a child started in a session of its own: SIGTERM its process group and wait for a
    clean exit (SIGKILL after ``timeout``), or SIGKILL it at once (``kill``). A paused
    (SIGSTOPped) group is continued first: it could not shut down."""
    if proc.poll() is None and not kill:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _port_open(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1):
            return True
    except OSError:
        return False


async def _metadata_ok(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    if not _port_open(bootstrap):
        return False

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.describe_cluster()
        return True
    except Exception:  # broad: any failure while it starts means "not ready yet"
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def wait_for_broker(bootstrap: str, timeout: float = 60.0,
                    proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    """Block until the broker answers a metadata request (not merely accepts TCP)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-4000:] if log and log.exists() else ""
            raise BrokerError(f"Kafka exited with code {proc.returncode} while starting:\n{tail}")
        if asyncio.run(_metadata_ok(bootstrap)):
            return
        if time.monotonic() > deadline:
            raise BrokerError(
                f"Kafka at {bootstrap} did not answer metadata within {timeout:.0f} s")
        time.sleep(0.3)


class LocalKafkaBroker:
    """One combined broker+controller KRaft node on 127.0.0.1 with test-friendly settings."""

    def __init__(self, version: str | None = None, *, data_dir: Path | None = None,
                 tie_to_parent: bool = True, heap: str = "512m", node_id: int = 1,
                 cluster_id: str | None = None,
                 properties: Mapping[str, str] | None = None) -> None:
        self.version = version or kafka_version()
        self.node_id = node_id
        #: ``server.properties`` entries added to (or replacing) the defaults.
        self.extra_properties = dict(properties or {})
        self.port = free_port()
        self.controller_port = free_port()
        self._own_data_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="fbp-kafka-"))
        self.tie_to_parent = tie_to_parent
        self.heap = heap
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        #: Fixed for the broker's life: a restart finds its storage formatted with this id.
        self.cluster_id = cluster_id or _cluster_id()
        #: ``id@host:port,...`` of the controller quorum (this node alone unless in a cluster).
        self.quorum_voters = f"{node_id}@127.0.0.1:{self.controller_port}"
        self.starts = 0

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    def _format_arguments(self) -> list[str]:
        """Extra ``StorageTool format`` arguments (e.g. SCRAM users of a secured broker)."""
        return []

    def _properties(self) -> str:
        settings = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.quorum_voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
                         f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.segment.bytes": str(16 * 1024 * 1024),
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
            "log.cleaner.backoff.ms": "1000",
            **self.extra_properties,
        }
        return "".join(f"{k}={v}\n" for k, v in settings.items())

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def formatted(self) -> bool:
        return (self.data_dir / "logs" / "meta.properties").exists()

    def start(self, timeout: float = 90.0) -> LocalKafkaBroker:
        """Format the storage (first start only) and start the broker; wait until it answers."""
        began = time.monotonic()
        for attempt in range(3):
            fresh = self.starts == 0
            self.launch()
            try:
                return self.wait_ready(timeout, began)
            except BrokerError as exc:
                # A free port is picked, closed, then bound by the JVM: another process on
                # the machine (a parallel test run) may take it in between. Only a first
                # start may move: a restart keeps its ports.
                if not (fresh and attempt < 2 and "Address already in use" in str(exc)):
                    raise
                self.starts = 0
                self.port, self.controller_port = free_port(), free_port()
                self.quorum_voters = f"{self.node_id}@127.0.0.1:{self.controller_port}"
        raise AssertionError("unreachable")

    def launch(self) -> None:
        """Format the storage (first start only) and start the JVM; do not wait for it (the
        nodes of a cluster answer only once a quorum of them runs)."""
        java = kafka_java()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(self._properties())
        classpath = f"{ensure_kafka_jars(self.version)}/*"
        if not self.formatted:
            fmt = run_kafka_tool("kafka.tools.StorageTool", "format", "-t", self.cluster_id,
                                 "-c", str(props), "--ignore-formatted",
                                 *self._format_arguments(), version=self.version)
            if fmt.returncode != 0:
                raise BrokerError(
                    f"formatting the KRaft storage failed:\n{fmt.stdout}{fmt.stderr}")
        # Appended: a restarted broker's log follows the one of its previous life.
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [java, f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             "-Djava.awt.headless=true", "-cp", classpath, "kafka.Kafka", str(props)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if self.tie_to_parent else None,
            start_new_session=True,
        )
        log.close()
        self.starts += 1

    def wait_ready(self, timeout: float = 90.0, began: float | None = None) -> LocalKafkaBroker:
        """Block until the launched broker answers metadata (stop it if it does not)."""
        began = time.monotonic() if began is None else began
        try:
            wait_for_broker(self.bootstrap_servers, timeout, self.proc, self.log_path)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self, *, keep_data: bool = False, kill: bool = False,
             timeout: float = 15.0) -> None:
        """Stop the broker: SIGTERM (a clean shutdown; SIGKILL after ``timeout``) or SIGKILL.

        The data dir is removed when the broker made it, unless ``keep_data`` (see
        :meth:`restart`).
        """
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc, timeout, kill=kill)
        if self._own_data_dir and not keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def halt(self, *, kill: bool = False, timeout: float = 15.0) -> None:
        """Stop the broker keeping its data dir, to :meth:`restart` it later (an outage)."""
        self.stop(keep_data=True, kill=kill, timeout=timeout)

    def restart(self, timeout: float = 90.0) -> LocalKafkaBroker:
        """Start a halted broker again on the same ports with the same data dir.

        Topics, records, committed offsets and transaction state are those of the data dir
        (what a SIGKILL had not flushed, Kafka recovers from its logs as after a crash).
        Blocks until the broker answers; from a coroutine: ``await asyncio.to_thread(...)``.
        """
        if self.running:
            raise BrokerError("the broker is running: halt() it before restart()")
        if not self.formatted:
            raise BrokerError(f"{self.data_dir} holds no formatted broker storage to restart")
        for port in (self.port, self.controller_port):
            if not _port_bindable(port):
                raise BrokerError(f"port {port} was taken while the broker was down")
        return self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP the broker: connections stay open but nothing answers (a hung broker)."""
        if not self.running:
            raise BrokerError("the broker is not running")
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused broker."""
        if not self.running:
            raise BrokerError("the broker is not running")
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def __enter__(self) -> LocalKafkaBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def kafka_bootstrap() -> Iterator[str]:
    """Yield a bootstrap address: ``$KAFKA_BOOTSTRAP_SERVERS`` if set, else a new local broker."""
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        wait_for_broker(external, timeout=30)
        yield external
        return
    with LocalKafkaBroker() as broker:
        yield broker.bootstrap_servers


# ---- command line: python -m faust_backpressure.testing.broker start|stop|status|fetch ----

def _state_file() -> Path:
    return kafka_home() / "run" / "broker.json"


def _read_state() -> dict[str, object] | None:
    path = _state_file()
    if not path.exists():
        return None
    state: dict[str, object] = json.loads(path.read_text())
    pid = int(str(state["pid"]))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return None
    return state


def _cmd_start() -> int:
    if (state := _read_state()) is not None:
        print(state["bootstrap"])
        return 0
    data_dir = kafka_home() / "run" / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    broker = LocalKafkaBroker(data_dir=data_dir, tie_to_parent=False)
    broker.start()
    assert broker.proc is not None
    _state_file().write_text(json.dumps(
        {"pid": broker.proc.pid, "bootstrap": broker.bootstrap_servers,
         "data_dir": str(data_dir), "version": broker.version}))
    print(f"Kafka {broker.version} ready in {broker.startup_seconds:.1f} s", file=sys.stderr)
    print(broker.bootstrap_servers)
    return 0


def _cmd_stop() -> int:
    state = _read_state()
    if state is None:
        print("no broker running", file=sys.stderr)
        return 0
    pid = int(str(state["pid"]))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    _state_file().unlink(missing_ok=True)
    shutil.rmtree(str(state["data_dir"]), ignore_errors=True)
    print("stopped", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faust_backpressure.testing.broker",
                                     description="A local Apache Kafka broker for tests and demos.")
    parser.add_argument("command", choices=["start", "stop", "status", "fetch"])
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(ensure_kafka_jars())
            return 0
        if args.command == "start":
            return _cmd_start()
        if args.command == "stop":
            return _cmd_stop()
        state = _read_state()
        print(state["bootstrap"] if state else "not running")
        return 0 if state else 1
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
