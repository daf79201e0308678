"""Helpers for the distributed limiter tests: start limited workers, read their reports."""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from faust_backpressure.testing.kafka_io import consume, create_topics
from faust_backpressure.testing.workers import FaustWorker, wait_until_settled

APP = "tests.integration.distributed.apps.limited"


@dataclass
class Cluster:
    bootstrap: str
    start_worker: Callable[..., FaustWorker]
    env: dict[str, str]
    go_file: Path
    workers: list[FaustWorker] = field(default_factory=list)

    def start(self, name: str, **extra: str) -> FaustWorker:
        worker = self.start_worker(APP, name=name, env={**self.env, **extra})
        self.workers.append(worker)
        return worker

    def start_settled(self, *names: str) -> list[FaustWorker]:
        """Start workers, wait until each is ready and the group has settled (no rebalance
        pending: one during the run would pause the owner)."""
        started = [self.start(name) for name in names]  # together: one join each, in parallel
        for worker in started:
            worker.wait_ready()
        wait_until_settled(self.workers)
        return started

    def go(self) -> float:
        self.go_file.touch()
        return time.time()

    async def reports(self, until: Callable[[list[dict[str, Any]]], bool],
                      timeout: float = 60) -> list[dict[str, Any]]:
        def done(records: list[Any]) -> bool:
            return until([json.loads(r.value) for r in records])

        records = await consume(self.bootstrap, self.env["FBP_REPORT"], until=done,
                                timeout=timeout)
        return [json.loads(r.value) for r in records]


def admissions(reports: list[dict[str, Any]], limiter: str | None = None,
               worker: str | None = None) -> list[float]:
    return sorted(t for r in reports for t in r["times"]
                  if (limiter is None or r["limiter"] == limiter)
                  and (worker is None or r["worker"] == worker))


def reported_until(reports: list[dict[str, Any]], worker: str | None = None) -> float:
    return max((r["at"] for r in reports if worker is None or r["worker"] == worker),
               default=0.0)


def worst_window(times: list[float], window: float) -> int:
    """Most admissions in any interval [t, t + window]."""
    return max((bisect.bisect_right(times, t + window) - i for i, t in enumerate(times)),
               default=0)


@pytest.fixture
async def cluster(kafka_bootstrap: str, unique_name: Callable[[str], str],
                  faust_workers: Callable[..., FaustWorker], tmp_path: Path) -> Cluster:
    report = unique_name("report")
    await create_topics(kafka_bootstrap, {report: 1})
    go = tmp_path / "go"
    env = {"FBP_APP_ID": unique_name("app"), "FBP_REPORT": report, "FBP_GO_FILE": str(go),
           "FBP_LEASE_TTL": "1.0"}
    return Cluster(kafka_bootstrap, faust_workers, env, go)
