"""Stores one value per key in a changelog-backed RocksDB table with a standby replica.

``FBP_HOLD_STANDBY=1`` widens the window in which Faust's recovery clears standby records:
the table's changelog callback holds the recovery's reader on its first standby record, and a
rebalance-complete receiver (the first await of ``on_recovery_completed``) waits until
``FBP_HOLD_QUEUED`` standby records are queued; the reader goes on once the recovery has
completed (right after the flow's resume cleared the queue, or did not). ``FBP_REPORT`` gets
what was queued then and how much standby catching up is left. ``FBP_SEAM=1`` installs
faust-backpressure on the app.
"""

import asyncio
import json
import os
from typing import Any

import faust

from faust_backpressure.testing.settings import fast_faust_settings

app = faust.App(os.environ["FBP_APP_ID"], store="rocksdict://", table_standby_replicas=1,
                **fast_faust_settings(processing_guarantee=os.environ["FBP_GUARANTEE"]))
if os.environ.get("FBP_SEAM") == "1":
    from faust_backpressure import Backpressure

    Backpressure(app)

HOLD = os.environ.get("FBP_HOLD_STANDBY") == "1"
QUEUED = int(os.environ.get("FBP_HOLD_QUEUED", "50"))
report: dict[str, Any] = {"held": False}
reader_free = asyncio.Event()
_tasks: set[asyncio.Future[None]] = set()


def _standby_records_queued() -> int:
    standbys = app.tables.recovery.standby_tps
    return sum(1 for event in list(app.tables.changelog_queue._queue)
               if event.message.tp in standbys)


async def _hold_standby_reader(event: faust.types.EventT) -> None:
    if HOLD and not reader_free.is_set() \
            and event.message.tp in app.tables.recovery.standby_tps:
        await reader_free.wait()


source = app.topic(os.environ["FBP_SOURCE"], key_type=str, value_type=int,
                   key_serializer="raw", value_serializer="json")
values = app.Table("values", default=int, partitions=4, key_type=str, value_type=int,
                   on_changelog_event=_hold_standby_reader)


@app.agent(source)
async def store(stream: faust.StreamT[int]) -> None:
    async for key, value in stream.items():
        values[key] = value


@app.on_rebalance_complete.connect
async def _hold_the_recovery_end(sender: Any, **kwargs: Any) -> None:
    if not HOLD or reader_free.is_set():
        return
    for _ in range(1000):  # at most 10 s
        if _standby_records_queued() >= QUEUED:
            break
        await asyncio.sleep(0.01)
    report.update(held=True, queued_at_end=_standby_records_queued())
    task = asyncio.ensure_future(_free_after_completion())
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _free_after_completion() -> None:
    await app.tables.recovery.completed.wait()  # set right before the flow's resume
    report["queued_after_resume"] = _standby_records_queued()
    reader_free.set()


@app.timer(0.5)
async def _write_report() -> None:
    recovery = app.tables.recovery
    standbys = set(recovery.standby_tps)
    # read here, not with Faust's standby_remaining_total(): an offset or end not known yet
    # is None there (a TypeError in a timer stops the worker), and a partition with no record
    # read counts as nothing left, so also how many have one
    seen = {tp: recovery.standby_offsets.get(tp) for tp in standbys}
    ends = {tp: recovery.standby_highwaters.get(tp) for tp in standbys}
    report.update(standbys=sorted(tp.partition for tp in standbys),
                  standby_started=sum(1 for offset in seen.values()
                                      if offset is not None and offset >= 0),
                  standby_left=sum(max(0, ends[tp] - seen[tp]) for tp in standbys
                                   if ends[tp] is not None and seen[tp] is not None
                                   and ends[tp] >= 0 and seen[tp] >= 0))
    with open(os.environ["FBP_REPORT"], "w") as out:
        json.dump(report, out)
