"""A table restore whose records a fetch left over from the last generation takes (issue 25).

Faust hands aiokafka its *live* set of active partitions; aiokafka's ``fetched_records`` waits
for the next assignment when a fetch lands during a rejoin, and reads that set again when it
wakes. After the rejoin Faust pauses every partition (the set is empty, which aiokafka reads as
*every* partition) until the recovery has sought the changelog and resumed it. A fetch that
lands in between is taken whole, the restore's records included, and Faust, finding the flow
stopped, "seeks back to committed offsets": a changelog has none, so its records are gone and
the restore waits for ever (at_least_once) or ends without them (exactly_once).

The test forces that order: the new assignment's fetches are held until the recovery has sought
the changelog, and the recovery waits after its seek until the left-over fetch has returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaProducer
from faust.types import TP

from faust_backpressure.faust_seam import recovery_watch
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import produce
from tests.integration.agents.helpers import table_app

pytestmark = pytest.mark.kafka


class _Interleaving:
    """Holds the new generation's fetches until the recovery has sought the changelog, then
    holds the recovery until a fetch begun in the old generation has returned."""

    def __init__(self, app: faust.App, changelog: TP) -> None:
        self.app, self.changelog = app, changelog
        consumer: Any = app.consumer
        self.thread = consumer._thread
        self.fetcher = self.thread._ensure_consumer()._fetcher
        self.first_assignment = self.fetcher._subscriptions.subscription.assignment
        self.generation = app.consumer_generation_id
        self.release = threading.Event()
        self.rejoin_requested = False
        self.stale_returned = asyncio.Event()
        #: per fetch begun in one generation and returned in a later one: whether it returned
        #: after the release, and the offsets it returned per partition
        self.stale: list[tuple[bool, dict[TP, list[int]]]] = []
        self._fetch = self.fetcher._proc_fetch_request
        self._getmany = consumer._getmany
        self._seek_wait = consumer.seek_wait
        self.fetcher._proc_fetch_request = self._held_fetch
        consumer._getmany = self._tracked_getmany
        consumer.seek_wait = self._seek_then_wait

    async def _held_fetch(self, assignment: Any, node_id: int, request: Any) -> Any:
        # in the consumer's thread: a fetch of the new assignment waits for the release
        while assignment is not self.first_assignment and not self.release.is_set():
            await asyncio.sleep(0.005)
        return await self._fetch(assignment, node_id, request)

    async def _tracked_getmany(self, active_partitions: Any, timeout: float) -> Any:
        generation = self.app.consumer_generation_id
        records = await self._getmany(active_partitions, timeout)
        while (not records and self.rejoin_requested and generation == self.generation
               and not self.release.is_set()):
            # the fetch begun before the rejoin must outlast the recovery's seek, as it does
            # when Faust's 1 s timeout is long enough; under load it returned empty first
            records = await self._getmany(active_partitions, 30.0)
        if generation != self.app.consumer_generation_id:
            self.stale.append((self.release.is_set(),
                               {TP(tp.topic, tp.partition): [r.offset for r in batch]
                                for tp, batch in records.items()}))
            self.stale_returned.set()
        return records

    async def _seek_then_wait(self, partitions: Any) -> None:
        await self._seek_wait(partitions)
        if self.changelog in partitions and self.app.consumer_generation_id > self.generation:
            self.release.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stale_returned.wait(), 3.0)

    async def rejoin(self, bootstrap: str, source: str) -> None:
        """Make the group rejoin while records keep coming (a fetch lands during the rejoin)."""
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        await producer.start()
        try:
            for i in range(25):
                await producer.send_and_wait(source, b"before-%d" % i)
                await asyncio.sleep(0.02)
            coordinator = self.thread._ensure_consumer()._coordinator

            async def request_rejoin() -> None:
                coordinator.request_rejoin()

            self.rejoin_requested = True
            await self.thread.call_thread(request_rejoin)
            for i in range(200):
                if self.app.consumer_generation_id > self.generation:
                    break
                await producer.send_and_wait(source, b"during-%d" % i)
                await asyncio.sleep(0.02)
        finally:
            await producer.stop()


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_restore_whose_first_fetch_a_left_over_fetch_took_still_gets_its_records(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, guarantee: str) -> None:
    monkeypatch.setattr(recovery_watch, "RECOVERY_QUIET", 1000.0)  # its second seek: not here
    app, table, changelog, source = await table_app(kafka_bootstrap, unique_name, tmp_path,
                                                    guarantee, "kept", counting=False)
    tp = TP(changelog, 0)
    async with running_app(app):
        recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
        await asyncio.wait_for(recovery.completed.wait(), 60)
        # written while this worker owns the partition, as another writer's or its own records
        # with no offset persisted: the next restore reads them from offset 0
        records = ((b'"k%d"' % i, b"%d" % (i + 1)) for i in range(5))
        await produce(kafka_bootstrap, changelog, records)
        forced = _Interleaving(app, tp)
        recovery.completed.clear()
        await forced.rejoin(kafka_bootstrap, source)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(recovery.completed.wait(), 25)
        restored = {key: table[key] for key in (f"k{i}" for i in range(5))}
        completed = recovery.completed.is_set()
    print("fetches spanning the rejoin (returned after the seek, offsets):", forced.stale)
    assert any(after for after, _ in forced.stale), "no fetch spanned the rejoin and the seek"
    assert completed, "the restore never ended"
    assert restored == {f"k{i}": i + 1 for i in range(5)}
