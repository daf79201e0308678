"""The soak's worker (``bench/soak.py``): every feature at once, sampling its own footprint.

``orders -> price -> priced`` (a pipeline with a DLQ, behind the distributed limiter
``soak-api``), a per-customer keyed limit on a second stage (``priced -> billing``, deferring),
and a control loop on ``soak-api`` that watches the billing stage's lag. Every 10 s the worker
logs one ``soak-sample`` line (JSON): RSS, open file descriptors, asyncio tasks, Python objects
tracked by the garbage collector, and the total
length of every list, dict, set and deque held by each of the library's components (one level
deep: the in-memory histories an unbounded growth would show in).

Env: ``FBP_APP_ID``, ``FBP_SOURCE``, ``FBP_SINK``, ``FBP_BILLED``, ``FBP_DLQ``, ``FBP_RATE``
(the shared limit, per second), ``FBP_KEY_RATE`` (per customer), ``FBP_GUARANTEE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import resource
import sys
from collections import deque
from typing import Any

import faust

from bench.soak_census import Census
from faust_backpressure.app import Backpressure
from faust_backpressure.control import BackpressureThresholds
from faust_backpressure.tables.store import TABLE_OPTIONS
from faust_backpressure.testing.settings import fast_faust_settings

log = logging.getLogger("soak")

if os.environ.get("FBP_SOAK_FAUST_TABLE_DEFAULTS"):  # the A/B of the RSS (bench/soak.py)
    TABLE_OPTIONS.clear()

app = faust.App(os.environ["FBP_APP_ID"], store="rocksdict://",
                processing_guarantee=os.environ.get("FBP_GUARANTEE", "at_least_once"),
                **fast_faust_settings())
bp = Backpressure(app)
RATE = float(os.environ.get("FBP_RATE", "300"))


def price(order: Any) -> dict[str, Any]:
    if not isinstance(order, dict) or "id" not in order:
        raise ValueError(f"not an order: {order!r}"[:200])
    return {**order, "total": round(order.get("quantity", 1) * 9.99, 2)}


orders = app.topic(os.environ["FBP_SOURCE"], key_type=bytes, key_serializer="raw",
                   value_serializer="json")
priced = app.topic(os.environ["FBP_SINK"], key_type=bytes, key_serializer="raw",
                   value_serializer="json")
bp.pipeline("price", source=orders, sink=priced,
            dlq=os.environ["FBP_DLQ"], process=price, limiter="soak-api",
            tokens_per_second=RATE, burst_capacity=RATE / 5)
per_customer = bp.rate_limit_per_key("per-customer",
                                     tokens_per_second=float(os.environ.get("FBP_KEY_RATE",
                                                                            "20")),
                                     burst_capacity=10, on_limit="defer")
bp.pipeline("bill", source=priced, sink=os.environ["FBP_BILLED"],
            dlq=os.environ["FBP_DLQ"], process=lambda order: order, limiter=per_customer)
bp.control_loop("soak-api", downstream_group=str(app.conf.id),
                downstream_topics=[os.environ["FBP_SINK"]], interval=1.0,
                thresholds=BackpressureThresholds(backlog_cleared_lag=100, scaling_threshold=500,
                                                  max_consumer_lag=2000, critical_lag=5000,
                                                  cpu_threshold=1.0))


def held(obj: Any) -> int:
    """Items in the containers ``obj`` holds directly (attributes and slots)."""
    names = set(getattr(obj, "__dict__", {})) | {
        slot for cls in type(obj).__mro__ for slot in getattr(cls, "__slots__", ())}
    total = 0
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, (list, dict, set, frozenset, deque)):
            total += len(value)
    return total


def components() -> dict[str, Any]:
    found: dict[str, Any] = {"bp": bp}
    found.update({f"pipeline:{name}": p for name, p in bp.pipelines.items()})
    found.update({f"keyed:{name}": g for name, g in bp.keyed_limits.items()})
    control = getattr(bp, "_control", None)
    if control is not None:
        found["control"] = control
        found.update({f"loop:{name}": loop for name, loop in control.loops.items()})
    for pipeline in bp.pipelines.values():
        limiter = getattr(pipeline, "limiter", None)
        if limiter is not None:
            found[f"limiter:{pipeline.name}"] = limiter
    return found


def rocksdb_usage() -> dict[str, int]:
    """Bytes in the memtables, block caches and live table files of every RocksDB database
    the app's tables have open (one per table partition); a bench app may look into Faust's
    store."""
    memtables = cache = live = 0
    for table in app.tables.values():
        for db in getattr(table.data, "_dbs", {}).values():
            memtables += db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
            cache += db.property_int_value("rocksdb.block-cache-usage") or 0
            live += db.property_int_value("rocksdb.live-sst-files-size") or 0
    return {"memtable_kib": memtables // 1024, "block_cache_kib": cache // 1024,
            "live_sst_kib": live // 1024}


def sst_files(fds: list[str]) -> tuple[int, int]:
    """How many of these open fds are RocksDB table files (kept open by RocksDB's table cache;
    compaction closes them, so they rise and fall), and how many of those are of files
    already deleted (what a leak of table files would look like)."""
    count = deleted = 0
    for fd in fds:
        with contextlib.suppress(OSError):  # closed since the listing
            target = os.readlink(f"/proc/self/fd/{fd}")
            count += target.endswith(".sst") or target.endswith(".sst (deleted)")
            deleted += target.endswith(".sst (deleted)")
    return count, deleted


census = Census()


@app.timer(60.0)
async def take_census() -> None:
    """Once a minute after the warm-up: which types of object grew (bench/soak_census.py)."""
    line = census.take()
    if line is not None:
        log.warning("soak-census %s", json.dumps(line))


@app.timer(10.0)
async def sample() -> None:
    with open("/proc/self/statm") as statm:
        rss_kib = int(statm.read().split()[1]) * resource.getpagesize() // 1024
    # Python objects: flat while RSS grows points below Python (RocksDB's memtables fill up
    # to their write buffer size before a flush)
    fds = os.listdir("/proc/self/fd")
    sst, sst_deleted = sst_files(fds)
    line = {"rss_kib": rss_kib, "fds": len(fds), "sst_fds": sst, "sst_deleted_fds": sst_deleted,
            "dbs": sum(len(getattr(t.data, "_dbs", {})) for t in app.tables.values()),
            "objects": len(gc.get_objects()),
            "py_blocks": sys.getallocatedblocks(),  # every Python allocation, tracked or not
            **rocksdb_usage(),
            "tasks": len(asyncio.all_tasks()),
            "held": {name: held(obj) for name, obj in components().items()}}
    log.warning("soak-sample %s", json.dumps(line, sort_keys=True))
