"""Reading a standby worker of ``tests/integration/apps/standby.py``: its report, whether its
standbys caught up, and what its store holds against the changelog (the test and
``bench/standby_join.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rocksdict import AccessType, Options, Rdict

from faust_backpressure.testing.kafka_io import read_to_end
from faust_backpressure.testing.workers import FaustWorker

APP = "tests.integration.apps.standby"


def read_report(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being written
        return {}


def caught_up(report: dict[str, Any], markers: int = 0) -> bool:
    """Every standby partition has a record read and at most ``markers`` per partition left
    (exactly_once: Faust's count takes each partition's last transaction marker for one)."""
    standbys = report.get("standbys")
    return bool(standbys) and report.get("standby_started") == len(standbys) \
        and report.get("standby_left", 0) <= markers * len(standbys)


async def changelog_keys(bootstrap: str, changelog: str,
                         isolation_level: str = "read_uncommitted") -> dict[int, set[str]]:
    """The keys written to each partition of the table's changelog."""
    written: dict[int, set[str]] = {}
    for record in await read_to_end(bootstrap, changelog, isolation_level=isolation_level):
        assert record.key is not None
        written.setdefault(record.partition, set()).add(record.key.decode().strip('"'))
    return written


def stored_keys(worker: FaustWorker, partition: int) -> set[str]:
    """The keys of the worker's RocksDB store of ``partition`` (read after it stopped)."""
    [path] = worker.data_dir.glob(f"state/**/tables/values-{partition}.db")
    db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        keys = db.keys()  # an Rdict in raw mode iterates its keys through keys() only
        return {key.decode().strip('"') for key in keys if key.startswith(b'"')}
    finally:
        db.close()
