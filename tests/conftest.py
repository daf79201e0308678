"""Session-wide fixtures: one real Kafka broker per test session, worker processes, unique names.

The broker is started lazily, only when a test asks for ``kafka_bootstrap``; unit tests never pay
for it. Set ``KAFKA_BOOTSTRAP_SERVERS`` to use an existing broker instead.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from faust_backpressure.testing.broker import kafka_bootstrap as _kafka_bootstrap
from faust_backpressure.testing.workers import FaustWorker

REPO = Path(__file__).resolve().parents[1]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


_SHARED_BROKER: contextlib.ExitStack | None = None

#: Modules whose tests take longest (tens of seconds each: real workers, SIGKILLs, soaks),
#: slowest first. Collected first, so that with ``-n N`` they start first and the short ones
#: fill the gaps, instead of one long test left running alone at the end.
SLOW_FIRST = (
    "integration/chaos/test_chaos.py",
    "integration/brokers/",
    "integration/distributed/test_failover.py",
    "integration/distributed/test_shared_bucket.py",
    "integration/downstream/",
    "integration/ops/test_commands.py",
    "integration/distributed/",
    "integration/agents/test_workers.py",
    "integration/security/",
    "integration/ops/",
    "integration/agents/test_keyed_workers.py",
    "integration/control/",
    "integration/",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.removeprefix("tests/")
        return next((i for i, prefix in enumerate(SLOW_FIRST) if path.startswith(prefix)),
                    len(SLOW_FIRST))

    items.sort(key=rank)  # stable: the order within a rank is kept


def pytest_configure(config: pytest.Config) -> None:
    """With ``-n N`` (pytest-xdist), the controller starts one broker for all N workers
    before they start (they inherit ``KAFKA_BOOTSTRAP_SERVERS``): one broker per test
    session, not one per worker."""
    global _SHARED_BROKER
    is_worker = hasattr(config, "workerinput")
    numprocesses = getattr(config.option, "numprocesses", None)
    if is_worker or not numprocesses or os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return
    _SHARED_BROKER = contextlib.ExitStack()
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = _SHARED_BROKER.enter_context(_kafka_bootstrap())


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SHARED_BROKER is not None:
        os.environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        _SHARED_BROKER.close()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of the session's broker."""
    with _kafka_bootstrap() as bootstrap:
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
        yield bootstrap


_counter = itertools.count()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique_name("src")`` -> a topic/app name no other test in any session uses."""
    run = uuid.uuid4().hex[:6]
    test = request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:40]

    def make(label: str) -> str:
        return f"{test}-{label}-{run}-{next(_counter)}"

    return make


@pytest.fixture
def faust_workers(request: pytest.FixtureRequest, kafka_bootstrap: str
                  ) -> Iterator[Callable[..., FaustWorker]]:
    """Start real ``faust worker`` processes; all are stopped after the test, logs shown on failure.

    ``faust_workers("tests.integration.apps.forward", name="a", env={...})`` returns a started
    worker (call ``wait_ready()`` on it).
    """
    started: list[FaustWorker] = []

    def start(app: str, *, name: str | None = None, env: dict[str, str] | None = None,
              data_dir: Path | None = None, web: bool = False) -> FaustWorker:
        worker = FaustWorker(app, name=name or f"worker{len(started)}", data_dir=data_dir,
                             env={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, **(env or {})},
                             cwd=REPO, web=web)
        started.append(worker)
        return worker.start()

    yield start
    failed = getattr(request.node, "rep_call", None)
    for worker in started:
        if failed is not None and failed.failed:
            worker.stop(timeout=10)  # its last lines are flushed for the log shown
            print(f"\n===== log of {worker.name} ({worker.log_path}) =====\n"
                  f"{worker.logs()[-8000:]}")
        else:  # the test is over: a clean shutdown (2-6 s of CPU per worker) shows nothing
            worker.kill()
        worker.cleanup()
