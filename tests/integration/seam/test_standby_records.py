"""A standby keeps the changelog records fetched while the table recovery completes.

Faust's recovery starts the standby partitions, then awaits the rebalance-complete signal, the
tables' callbacks and a seek, then resumes the flow, which clears the changelog queue: standby
records fetched meanwhile were dropped, the consumer past them, and the standby's store missed
them for good (faust_seam/standby_records.py). The worker here holds that window open until
standby records are queued; its standby store must still end with every record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from faust_backpressure.testing.kafka_io import create_topics, produce, read_to_end
from faust_backpressure.testing.workers import FaustWorker
from tests.integration.seam.standby_check import (
    APP,
    caught_up,
    changelog_keys,
    read_report,
    stored_keys,
)

pytestmark = pytest.mark.kafka

KEYS = 4000


async def _until(what: str, check: Callable[[], Any], timeout: float = 90.0,
                 state: Callable[[], Any] = lambda: None) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout:.0f} s: {what} ({state()})")
        await asyncio.sleep(0.2)
    return found


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_standby_keeps_the_records_fetched_while_the_recovery_completes(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker], tmp_path: Path, guarantee: str) -> None:
    app_id, source = unique_name("app"), unique_name("src")
    changelog = f"{app_id}-values-changelog"
    await create_topics(kafka_bootstrap, {source: 4})
    await produce(kafka_bootstrap, source, ((f"k{i}".encode(), b"1") for i in range(KEYS)))
    env = {"FBP_APP_ID": app_id, "FBP_SOURCE": source, "FBP_GUARANTEE": guarantee,
           "FBP_SEAM": "1"}
    first = faust_workers(APP, name="first", env={**env, "FBP_REPORT": str(tmp_path / "a")})
    first.wait_ready()

    async def all_stored() -> bool:
        return len(await read_to_end(kafka_bootstrap, changelog,
                                     isolation_level="read_committed")) >= KEYS

    deadline = time.monotonic() + 90
    while not await all_stored():
        if time.monotonic() > deadline:
            uncommitted = await read_to_end(kafka_bootstrap, changelog)
            committed = await read_to_end(kafka_bootstrap, changelog,
                                          isolation_level="read_committed")
            raise AssertionError(
                f"the first worker did not store every key: {len(committed)} committed, "
                f"{len(uncommitted)} written of {KEYS}")
        await asyncio.sleep(0.5)

    markers = 1 if guarantee == "exactly_once" else 0  # standby_check.caught_up
    report_path = tmp_path / "b"
    second = faust_workers(APP, name="second", env={
        **env, "FBP_REPORT": str(report_path), "FBP_HOLD_STANDBY": "1"})
    second.wait_ready()
    report = await _until("the second worker's standbys caught up", lambda: (
        (r := read_report(report_path)).get("held") and caught_up(r, markers)
        and "queued_after_resume" in r and r),
        state=lambda: read_report(report_path))
    # the window was open: standby records were queued when the recovery completed
    assert report["queued_at_end"] >= 50, report
    second.stop()  # a graceful stop applies what the recovery still buffers

    written = await changelog_keys(kafka_bootstrap, changelog, "read_committed")
    for partition in report["standbys"]:
        stored = stored_keys(second, partition)
        missing = written[partition] - stored
        assert not missing, (f"standby partition {partition}: {len(missing)} of "
                             f"{len(written[partition])} records missing")
    assert report["queued_after_resume"] >= report["queued_at_end"], report  # none cleared
