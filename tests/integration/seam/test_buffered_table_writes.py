"""A table's changelog record is sent before its event's offset is committed.

Faust sends a table's changelog records from its producer buffer, in a background task, and
commits without waiting for that task: at_least_once its flush before a commit stops waiting
after 0.1 s and does not count a record the task is sending; exactly_once it does not flush
at all. A record still in the buffer at a commit was sent after it: at_least_once a crash
then loses it, and exactly_once it joins the partition's next transaction, committed only
when another event of that partition is (never, for the last one: the broker aborts it
after the transaction timeout). The seam's commit first waits for what the buffer holds
(faust_seam/buffered_writes.py). Here one key's record leaves the buffer 3 s late; once its
offset is committed the worker is SIGKILLed, and the changelog must hold every write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from faust_backpressure.testing.kafka_io import (
    committed_offsets,
    create_topics,
    produce,
    read_to_end,
)
from faust_backpressure.testing.workers import FaustWorker

pytestmark = pytest.mark.kafka

APP = "tests.integration.apps.buffered_table"
KEYS = 6


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_table_write_is_in_the_changelog_before_its_offset_is_committed(
        kafka_bootstrap: str, unique_name: Callable[[str], str],
        faust_workers: Callable[..., FaustWorker], guarantee: str) -> None:
    app_id, source = unique_name("app"), unique_name("src")
    await create_topics(kafka_bootstrap, {source: 1})
    worker = faust_workers(APP, env={"FBP_APP_ID": app_id, "FBP_SOURCE": source,
                                     "FBP_GUARANTEE": guarantee, "FBP_SEAM": "1",
                                     "FBP_SLOW_KEY": f"k{KEYS - 1}", "FBP_SLOW_SECONDS": "3"})
    worker.wait_ready()
    await produce(kafka_bootstrap, source, ((f"k{i}".encode(), b"1") for i in range(KEYS)))
    deadline = time.monotonic() + 60
    while (await committed_offsets(kafka_bootstrap, app_id, source)).get(0, 0) < KEYS:
        assert time.monotonic() < deadline, "the worker did not commit every event"
        await asyncio.sleep(0.1)
    worker.kill()  # SIGKILL: what was sent is in the changelog, nothing more is

    isolation = "read_committed" if guarantee == "exactly_once" else "read_uncommitted"
    written = {record.key for record in await read_to_end(
        kafka_bootstrap, f"{app_id}-values-changelog", isolation_level=isolation)}
    assert len(written) == KEYS, sorted(written)
