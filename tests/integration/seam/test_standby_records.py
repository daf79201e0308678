"""A standby keeps the changelog records fetched while the table recovery completes.

Faust's recovery starts the standby partitions, then awaits the rebalance-complete signal, the
tables' callbacks and a seek, then resumes the flow, which clears the changelog queue: standby
records fetched meanwhile were dropped, the consumer past them, and the standby's store missed
them for good (faust_seam/standby_records.py). The worker here holds that window open until
standby records are queued; its standby store must still end with every record.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rocksdict import AccessType, Options, Rdict

from faust_backpressure.testing.kafka_io import create_topics, produce, read_to_end
from faust_backpressure.testing.workers import FaustWorker

pytestmark = pytest.mark.kafka

KEYS = 4000
APP = "tests.integration.apps.standby"


def _report(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being written
        return {}


async def _until(what: str, check: Callable[[], Any], timeout: float = 90.0,
                 state: Callable[[], Any] = lambda: None) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout:.0f} s: {what} ({state()})")
        await asyncio.sleep(0.2)
    return found


def _stored_keys(worker: FaustWorker, partition: int) -> set[str]:
    """The keys of the worker's RocksDB store of ``partition`` (read after it stopped)."""
    [path] = worker.data_dir.glob(f"state/**/tables/values-{partition}.db")
    db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        # an Rdict in raw mode iterates its keys through keys() only
        keys = db.keys()
        return {key.decode().strip('"') for key in keys if key.startswith(b'"')}
    finally:
        db.close()


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
        assert time.monotonic() < deadline, "the first worker did not store every key"
        await asyncio.sleep(0.5)

    # exactly_once: each changelog partition ends with a transaction marker that Faust's
    # standby count takes for a record still to read (one per standby partition)
    markers = 1 if guarantee == "exactly_once" else 0
    report_path = tmp_path / "b"
    second = faust_workers(APP, name="second", env={
        **env, "FBP_REPORT": str(report_path), "FBP_HOLD_STANDBY": "1"})
    second.wait_ready()
    report = await _until("the second worker's standbys caught up", lambda: (
        (r := _report(report_path)).get("held") and r.get("standbys")
        and r.get("standby_started") == len(r["standbys"])
        and r.get("standby_left") <= markers * len(r["standbys"])
        and "queued_after_resume" in r and r),
        state=lambda: _report(report_path))
    # the window was open: standby records were queued when the recovery completed
    assert report["queued_at_end"] >= 50, report
    second.stop()  # a graceful stop applies what the recovery still buffers

    written: dict[int, set[str]] = {}
    for record in await read_to_end(kafka_bootstrap, changelog,
                                    isolation_level="read_committed"):
        assert record.key is not None
        written.setdefault(record.partition, set()).add(record.key.decode().strip('"'))
    for partition in report["standbys"]:
        stored = _stored_keys(second, partition)
        missing = written[partition] - stored
        assert not missing, (f"standby partition {partition}: {len(missing)} of "
                             f"{len(written[partition])} records missing")
    assert report["queued_after_resume"] >= report["queued_at_end"], report  # none cleared
