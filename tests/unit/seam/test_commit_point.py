"""exactly_once: the commit point, on a real (unstarted) Faust consumer and transaction manager.

Only the producer's ``commit_transactions`` (Kafka's side of a commit) is recorded instead of
sent: what the test checks is which transactions, with which offsets, the commit hands it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faust
from aiokafka.errors import ProducerFenced
from faust.types import TP, Message

from faust_backpressure.faust_seam import install
from faust_backpressure.faust_seam.transactions import InputTransactionManager, TransactionLost

SOURCE = "in"
busy, idle = TP(SOURCE, 5), TP(SOURCE, 3)


def _app(tmp_path: Path) -> tuple[Any, InputTransactionManager, list[dict[str, dict[Any, int]]]]:
    app = faust.App("commit-point", broker="kafka://127.0.0.1:1", datadir=str(tmp_path),
                    processing_guarantee="exactly_once", broker_commit_interval=0.5)
    app.in_worker = True  # as a worker's app: its consumer commits through transactions
    install(app)
    consumer: Any = app.consumer
    manager = consumer.transactions
    assert isinstance(manager, InputTransactionManager)
    app.assignor._topic_groups = {SOURCE: 2}
    consumer.assignment = lambda: {busy, idle}
    commits: list[dict[str, dict[Any, int]]] = []

    async def commit_transactions(by_tid: Mapping[str, Mapping[Any, int]], group_id: str,
                                  start_new_transaction: bool = True) -> None:
        commits.append({tid: dict(offsets) for tid, offsets in by_tid.items()})

    manager.producer.commit_transactions = commit_transactions  # type: ignore[method-assign]
    return app, manager, commits


async def test_a_commit_leaves_out_the_transaction_of_a_batch_still_writing(
        tmp_path: Path) -> None:
    # A chaos run (broker down for 23 s): a batch of p5@394..417 had sent its outputs into
    # p5's transaction and waited for their acks; the commit point gave up waiting after 1 s
    # and committed p5's transaction, the batch's outputs with offsets up to 394 only. The
    # worker then crashed before the batch's offsets were committed: the next owner read
    # 394..417 again and wrote them a second time (24 duplicates under read_committed).
    app, manager, commits = _app(tmp_path)
    consumer: Any = app.consumer
    consumer._committed_offset.update({busy: 390, idle: 100})
    consumer._acked[busy].extend(range(390, 394))  # events before the batch: done
    consumer._acked[idle].extend(range(100, 105))
    writing, release = asyncio.Event(), asyncio.Event()

    async def batch() -> None:
        async with manager.batch_writer(busy):
            writing.set()
            await release.wait()  # its sends are not acked: the broker is down

    task = asyncio.ensure_future(batch())
    await writing.wait()
    await consumer.force_commit()  # gives up waiting for the batch
    assert commits == [{"commit-point-2-3": {idle: 105}}]  # p5's transaction stays open
    assert consumer._committed_offset[busy] == 390
    release.set()
    await task
    await consumer.force_commit()  # the batch is done: p5's transaction commits, all of it
    assert commits[1:] == [{"commit-point-2-5": {busy: 394}}]


async def test_a_commit_leaves_out_the_transaction_of_an_event_still_writing(
        tmp_path: Path) -> None:
    # The per-event path has the same commit point: an event that sent an output and is not
    # finished (a second output waiting for room in the producer during an outage) keeps its
    # partition's transaction out of the commit; the other partitions commit.
    app, manager, commits = _app(tmp_path)
    consumer: Any = app.consumer
    consumer._committed_offset.update({busy: 390, idle: 100})
    consumer._acked[busy].extend(range(390, 394))
    consumer._acked[idle].extend(range(100, 105))
    event = Message(SOURCE, busy.partition, 394, 0.0, 0, None, b"k", b"v", None, tp=busy)
    manager._writers.add(event)  # as InputTransactionManager.send does at its first output
    await consumer.force_commit()
    assert commits == [{"commit-point-2-3": {idle: 105}}]
    manager.on_ack(event)
    consumer._acked[busy].append(394)
    await consumer.force_commit()
    assert commits[1:] == [{"commit-point-2-5": {busy: 395}}]


async def test_a_fenced_commit_stops_the_worker(tmp_path: Path) -> None:
    # A worker whose rebalance outlasted the group's timeout: the new owners' producers fenced
    # its own. Faust's commit crashed the app on it, which did not end the process (the test
    # of a rebalance while events wait for a quota: 93 of 300 records out in 90 s); the seam's
    # commit loses the transactions instead, and the worker exits (faust_seam.crash).
    app, manager, commits = _app(tmp_path)
    commit_transactions = manager.producer.commit_transactions
    consumer: Any = app.consumer
    consumer._committed_offset.update({idle: 100})
    consumer._acked[idle].extend(range(100, 105))

    async def fenced(by_tid: Mapping[str, Mapping[Any, int]], group_id: str,
                     start_new_transaction: bool = True) -> None:
        raise ProducerFenced()

    manager.producer.commit_transactions = fenced  # type: ignore[method-assign]
    assert not await consumer.force_commit()
    assert isinstance(manager.transaction_lost, TransactionLost)
    assert "ProducerFenced" in str(manager.transaction_lost)
    consumer._acked[idle].append(105)
    manager.producer.commit_transactions = commit_transactions  # type: ignore[method-assign]
    assert not await consumer.force_commit()
    assert commits == []  # nothing more is committed from this worker
