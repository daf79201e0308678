"""exactly_once: each event's outputs join its input partition's transaction, and commits
happen between events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import IllegalOperation
from aiokafka.producer.transaction_manager import TransactionState
from aiokafka.structs import RecordMetadata
from faust.sensors import Sensor
from faust.streams import current_event
from faust.transport.consumer import TransactionManager
from faust.types import TP, AppT, Message

from faust_backpressure.config.errors import one_line
from faust_backpressure.errors import BackpressureError
from faust_backpressure.faust_seam.control_topics import is_control_topic
from faust_backpressure.faust_seam.crash import crash_worker

#: The seam's one logger, named as when the seam was one module.
log = logging.getLogger("faust_backpressure.faust_seam")


class TransactionLost(BackpressureError, RuntimeError):
    """exactly_once: a partition's transaction broke; its worker stops to read it again."""


def transactional_id_of(app: AppT, tp: TP, group: int | None = None) -> str:
    """Faust's transactional id of input partition ``tp`` (``group``: its topic's group)."""
    if group is None:
        group = app.assignor.group_for_topic(tp.topic)
    return f"{app.conf.id}-{group}-{tp.partition}"


async def abort_open_transactions(producers: dict[str, Any]) -> int:
    """Abort every transaction still open in ``producers`` (transactional id -> aiokafka
    producer); how many were.

    At a rebalance: the revoke's last commit leaves out a transaction still being written
    (:meth:`InputTransactionManager.commit_point`), with its partitions' offsets, and Faust
    then reads every partition it keeps again from the committed offset: kept open, that
    transaction would commit the same events' outputs twice (docs/batching.md). Aborted, the
    outputs go with it and the events run once more. A producer that cannot abort is stopped:
    the next one started for its id fences it, which aborts the transaction on the broker."""
    aborted = 0
    for tid, producer in sorted(producers.items()):
        if not producer._txn_manager.is_in_transaction():
            continue
        log.info("aborting the open transaction %s: its partitions are read again from their "
                 "committed offsets", tid)
        try:
            await producer.abort_transaction()
        except Exception as exc:  # any failure: fall back to fencing
            log.warning("the transaction %s could not be aborted (%s); stopping its producer",
                        tid, one_line(exc))
            del producers[tid]
            with contextlib.suppress(Exception):
                await producer.stop()
        aborted += 1
    return aborted


class InputTransactionManager(TransactionManager):
    """A Faust transaction manager that keeps each event's outputs with its offset.

    Every output made while processing an event goes into the transaction of that event's
    partition, where its offset commits (Faust's own choice, the output's partition, is known
    only for subscribed topics). A commit first lets events that already wrote finish and holds
    back the first output of any other event (Kafka Streams' rule: commit between records), so
    no output is committed without its offset. Writes to control topics go outside every
    transaction (docs/agents.md, "Pipelines with a DLQ").
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writers: set[Message] = set()  # sent outputs, not acked yet
        self._writer_acked = asyncio.Event()
        self._commit_done: asyncio.Event | None = None  # set while a commit runs
        self.dropped_outputs = 0
        #: per transactional id, the batches (docs/batching.md) writing into its transaction
        self.batch_writers: Counter[str] = Counter()
        self.transaction_lost: TransactionLost | None = None  # set once: the worker stops
        self.transactions_begun_again = 0
        #: Transactions left open by the revoke's last commit and aborted at the rebalance.
        self.transactions_aborted = 0
        self._rebalance_over = asyncio.Event()  # clear while Faust swaps the producers
        self._rebalance_over.set()
        self._starting = asyncio.Lock()

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, timestamp: float | None, headers: Any, *,
                   transactional_id: str | None = None) -> Any:
        if is_control_topic(self.app, topic):
            return await self.producer.send(topic, key, value, partition, timestamp, headers)
        event = current_event()
        if event is not None:
            message = event.message
            try:
                group = self.app.assignor.group_for_topic(message.tp.topic)
            except KeyError:  # not from a subscribed topic (e.g. a channel): Faust's rule
                pass
            else:
                if self._is_stale(message):
                    return self._dropped(topic, partition, message)
                tid = transactional_id_of(self.app, message.tp, group)
                if message not in self._writers:
                    while self._commit_done is not None:  # into the next transaction
                        await self._commit_done.wait()
                    if not message.acked:
                        self._writers.add(message)
                if await self.open_transaction(tid) is None:
                    if self.transaction_lost is None:  # revoked meanwhile: read again there
                        return self._dropped(topic, partition, message)
                    await asyncio.get_running_loop().create_future()  # the worker stops
                return await self.producer.send(
                    topic, key, value, partition, timestamp, headers, transactional_id=tid)
        return await super().send(topic, key, value, partition, timestamp, headers,
                                  transactional_id=transactional_id)

    # A transaction can break under Faust unnoticed (aiokafka #1004: its sender dies and
    # leaves the transaction in an error state; Faust swallows a failed begin at a rebalance).
    # One only not begun is begun; one that broke lost outputs of events Faust has acked, so
    # the worker stops and they are read again (as Kafka Streams does; docs/reliability.md).

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP],
                           newly_assigned: set[TP]) -> None:
        # Faust stops the revoked partitions' producers, then starts the assigned ones'. A
        # producer started meanwhile for the same id (a batch's open_transaction) fenced
        # Faust's, or Faust began a transaction it had begun: IN_TRANSACTION -> IN_TRANSACTION.
        self._rebalance_over.clear()
        try:
            await self._stop_standby_producers(assigned)
            self.transactions_aborted += await abort_open_transactions(
                self.producer._transaction_producers)  # type: ignore[attr-defined]
            await super().on_rebalance(assigned, revoked, newly_assigned)
        finally:
            self._rebalance_over.set()

    async def _stop_standby_producers(self, assigned: set[TP]) -> None:
        # Faust keeps the producer of a partition revoked and kept as a standby; the new
        # owner's fences it, and Faust reuses it if the partition comes back (ProducerFenced).
        # Only active partitions keep one (an id is a partition number of a topic group, which
        # a standby of another topic of the group may share).
        producers = self.producer._transaction_producers  # type: ignore[attr-defined]
        stale = set(producers) - self._tps_to_transactional_ids(assigned)
        if stale:
            log.info("stopping %d transactional producer(s) of partitions no longer active "
                     "here: %s", len(stale), sorted(stale))
            await self._stop_transactions(sorted(stale))

    async def open_transaction(self, tid: str) -> Any:
        """The aiokafka producer of ``tid``, in a transaction; None if it broke (the worker
        is then stopping: see above) or its partitions are no longer assigned here."""
        faust_producer: Any = self.producer
        producers = faust_producer._transaction_producers
        if not self._rebalance_over.is_set():  # (per output: no await when not needed)
            await self._rebalance_over.wait()
        if self.transaction_lost is not None:
            return None
        if tid not in producers:  # Faust's begin at the last rebalance failed: start it again
            if tid not in self._tps_to_transactional_ids(self.consumer.assignment()):
                return None  # revoked: a producer started now would fence the new owner's
            async with self._starting:  # one producer per id
                if tid not in producers:
                    await self.producer.begin_transaction(tid)
            if tid not in producers:
                self.lose_transactions(f"the transactional producer {tid} could not start")
                return None
        producer = producers[tid]
        txn = producer._txn_manager
        if txn.is_in_transaction():
            return producer
        async with faust_producer._trn_locks[tid]:  # a commit holds it from commit to begin
            sender = producer._sender.sender_task
            if txn.is_in_transaction():
                return producer
            if txn.state is not TransactionState.READY or sender is None or sender.done():
                self.lose_transactions(f"the transaction {tid} broke (state {txn.state.name})")
                return None
            await producer.begin_transaction()
            self.transactions_begun_again += 1
        return producer

    def lose_transactions(self, why: str) -> None:
        """Stop the worker, committing nothing more: see :meth:`open_transaction`."""
        if self.transaction_lost is None:
            self.transaction_lost = TransactionLost(
                f"{why}: its events' outputs are aborted with it, so the worker stops and "
                "their partitions are read again from the last committed offsets")
            crash_worker(self.app, self.transaction_lost)

    async def commit(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        if self.transaction_lost is not None:
            return False
        by_tid: dict[str, dict[TP, int]] = {}
        for tp, offset in offsets.items():
            by_tid.setdefault(transactional_id_of(self.app, tp), {})[tp] = offset
        if not by_tid:
            return True
        try:  # Faust's commit, but a fenced producer also stops the worker (it crashes the
            # app, which may not end the process: faust_seam.crash)
            await self.producer.commit_transactions(
                by_tid, self.app.conf.id, start_new_transaction=start_new_transaction)
        except (OSError, RuntimeError, IllegalOperation) as error:  # KafkaError: RuntimeError
            self.lose_transactions(f"a transaction's commit failed ({one_line(error)})")
            return False
        return True

    def _is_stale(self, message: Message) -> bool:
        is_stale = getattr(self.consumer, "is_stale", None)
        return is_stale is not None and bool(is_stale(message))

    def _dropped(self, topic: str, partition: int | None, message: Message) -> asyncio.Future[Any]:
        """An output of an event fetched before the last revocation goes nowhere: the event
        is read again (its ack does not count) and writes it then. Sent, it would join the
        next generation's transaction (Faust keeps one producer per partition across a
        rebalance) and be committed twice."""
        self.dropped_outputs += 1
        # Acked now, so that its ack (Faust's compiled stream inlines it, past Consumer.ack)
        # does not record the offset: the commit stops before it.
        message.acked = True
        consumer: Any = self.consumer
        consumer._unacked_messages.discard(message)
        log.info("dropped an output of %s@%d, fetched before the rebalance: it is read again",
                 message.tp, message.offset)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        tp = TopicPartition(topic, -1 if partition is None else partition)
        done.set_result(RecordMetadata(topic, tp.partition, tp, -1, -1, -1, -1))
        return done

    @contextlib.asynccontextmanager
    async def batch_writer(self, tp: TP) -> AsyncIterator[None]:
        """A batch writes into ``tp``'s transaction: not committed meanwhile, and no commit
        running when it starts (its outputs would join a transaction committed without them)."""
        while self._commit_done is not None:
            await self._commit_done.wait()
        tid = transactional_id_of(self.app, tp)
        self.batch_writers[tid] += 1
        try:
            yield
        finally:
            self.batch_writers[tid] -= 1
            if not self.batch_writers[tid]:
                del self.batch_writers[tid]
            self._writer_acked.set()

    def on_ack(self, message: Message) -> None:
        """Every stream is done with ``message``: it has finished writing."""
        if message in self._writers:
            self._writers.discard(message)
            self._writer_acked.set()

    @contextlib.asynccontextmanager
    async def commit_point(self, timeout: float) -> AsyncIterator[set[str]]:
        """Wait (at most ``timeout`` s) until no event is half-written, and keep it so; yields
        the transactional ids still being written then (empty: every one can commit)."""
        if self._commit_done is not None:  # nested: the outer commit holds the point
            yield set()
            return
        done = self._commit_done = asyncio.Event()
        try:
            yield await self._wait_writers_acked(timeout)
        finally:
            self._commit_done = None
            done.set()

    async def _wait_writers_acked(self, timeout: float) -> set[str]:
        event = current_event()  # a commit from inside an agent cannot wait for its own event
        own = {event.message} if event is not None else set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            # Acked without a notice, or fetched before a rebalance (Faust drops those events;
            # their outputs were in a transaction that is aborted): nothing to wait for.
            generation = self.app.consumer_generation_id
            self._writers = {m for m in self._writers
                             if not m.acked and m.generation_id in (None, generation)}
            if ((not self._writers - own and not self.batch_writers)
                    or self.transaction_lost is not None):
                return set()
            self._writer_acked.clear()
            try:
                await asyncio.wait_for(self._writer_acked.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                busy = self._tids_of(m.tp for m in self._writers - own) | set(self.batch_writers)
                log.warning("not committing the transaction(s) %s now: %d event(s) and %d "
                            "batch(es) that sent outputs into them are still running (> %.1f "
                            "s); committed, their outputs would repeat after a crash",
                            sorted(busy), len(self._writers - own),
                            sum(self.batch_writers.values()), timeout)
                return busy

    def _tids_of(self, tps: Iterable[TP]) -> set[str]:
        tids = set()
        for tp in tps:
            with contextlib.suppress(KeyError):  # not a subscribed topic: in no transaction
                tids.add(transactional_id_of(self.app, tp))
        return tids

    def tps_outside(self, tps: Iterable[TP], tids: set[str]) -> set[TP]:
        """The partitions of ``tps`` whose transactional id is not one of ``tids``."""
        return {tp for tp in tps if not self._tids_of([tp]) & tids}


class _CommitBetweenEvents:
    """Consumer mixin (exactly_once): a commit takes its offsets at a commit point."""

    transactions: Any
    commit_interval: float

    _acked: Any

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        manager = self.transactions
        if not isinstance(manager, InputTransactionManager):
            return await super().force_commit(  # type: ignore[misc, no-any-return]
                topics, start_new_transaction=start_new_transaction)
        async with manager.commit_point(timeout=max(self.commit_interval, 1.0)) as busy:
            if busy:  # a transaction being written waits for the next commit, whole
                topics = manager.tps_outside(
                    (tp for tp in self._acked
                     if topics is None or tp in topics or tp.topic in topics), busy)
                if not topics:
                    return False
            return await super().force_commit(  # type: ignore[misc, no-any-return]
                topics, start_new_transaction=start_new_transaction)


class _WriterAcks(Sensor):
    """Tells the manager when an event has finished (Faust's compiled stream acks inline, so
    ``Consumer.ack`` is not always called; the sensor hook is)."""

    def __init__(self, app: AppT) -> None:
        super().__init__()
        self._app = app

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        manager = self._app.consumer.transactions
        if isinstance(manager, InputTransactionManager):
            manager.on_ack(message)
