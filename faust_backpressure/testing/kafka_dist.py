"""The Apache Kafka distribution the local brokers run: which version, where its jars are
cached (fetched with Maven the first time) and how to run its command-line tools."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from faust_backpressure.errors import BackpressureError

__all__ = ["DEFAULT_KAFKA_VERSION", "BrokerError", "ensure_kafka_jars", "java", "kafka_home",
           "kafka_version", "run_kafka_tool"]

DEFAULT_KAFKA_VERSION = "3.9.1"
VERSION_ENV = "FAUST_BP_KAFKA_VERSION"
HOME_ENV = "FAUST_BP_KAFKA_HOME"

# slf4j-api 1.7 ships with Kafka 3.x, 2.x with Kafka 4.x; the binding must match it.
_SLF4J_FOR_MAJOR = {"3": "1.7.36", "4": "2.0.17"}


class BrokerError(BackpressureError, RuntimeError):
    """The local broker could not be fetched, started or reached."""


def kafka_version() -> str:
    return os.environ.get(VERSION_ENV, DEFAULT_KAFKA_VERSION)


def kafka_home() -> Path:
    """Where jars and broker state live: ``$FAUST_BP_KAFKA_HOME``, else ``.kafka/`` of the repo."""
    if env := os.environ.get(HOME_ENV):
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").exists():
        return repo / ".kafka"
    return Path.home() / ".cache" / "faust-backpressure" / "kafka"


def _require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BrokerError(f"`{name}` was not found on PATH: {hint}")
    return path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise downloads between processes (several test sessions may start at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_kafka_jars(version: str | None = None) -> Path:
    """Return the folder of the broker's jars, fetching them with Maven the first time."""
    version = version or kafka_version()
    major = version.split(".", 1)[0]
    if major not in _SLF4J_FOR_MAJOR:
        raise BrokerError(f"{VERSION_ENV}={version}: only Kafka 3.x and 4.x are supported")
    root = kafka_home() / version
    libs = root / "libs"
    done = root / ".complete"
    if done.exists():
        return libs
    with _file_lock(root / ".lock"):
        if done.exists():
            return libs
        mvn = _require_tool("mvn", "install Maven (e.g. `apt-get install maven`) to fetch Kafka")
        pom = resources.files("faust_backpressure.testing").joinpath("kafka-pom.xml").read_text()
        pom = pom.replace("KAFKA_VERSION", version)
        pom = pom.replace("SLF4J_VERSION", _SLF4J_FOR_MAJOR[major])
        root.mkdir(parents=True, exist_ok=True)
        (root / "pom.xml").write_text(pom)
        staging = root / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        print(f"fetching Apache Kafka {version} broker jars with Maven ...", file=sys.stderr)
        proc = subprocess.run(
            [mvn, "-q", "-B", "-f", str(root / "pom.xml"), "dependency:copy-dependencies",
             "-DincludeScope=runtime", f"-DoutputDirectory={staging}"],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise BrokerError(
                f"Maven could not fetch org.apache.kafka:kafka_2.13:{version}:\n"
                f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            )
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        done.write_text(version)
    return libs


def java() -> str:
    return _require_tool("java", "install a JDK 17+ (e.g. `apt-get install openjdk-17-jre`)")


def run_kafka_tool(main_class: str, *args: str, version: str | None = None,
                   timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run one of Kafka's command-line tools (``kafka.tools.StorageTool``,
    ``kafka.admin.AclCommand``, ...) on the broker's classpath; output captured, not checked."""
    return subprocess.run(
        [java(), "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp",
         f"{ensure_kafka_jars(version)}/*", main_class, *args],
        capture_output=True, text=True, check=False, timeout=timeout)
