"""exactly_once for topic-to-topic agents: a transaction holds the outputs of what it commits.

Two gaps in Faust (0.15.3), each seen as duplicates after a SIGKILL:

1. Faust names an output's transaction after the partition the *output* lands on, found in the
   consumer's metadata, which only knows subscribed topics. For a sink the app does not consume
   no partition is found, so the output is sent outside any transaction (hundreds of duplicates
   in the 20,000-record test). :class:`InputTransactionManager` sends every output made while
   processing an event in the transaction of that event's partition, where its offset commits.
2. Faust takes the offsets to commit, then commits, while agents keep running. An event that has
   sent an output but is not finished (not acked) has its output in the transaction and its
   offset outside it; after a crash it runs again (about a dozen duplicates per crash). Here a
   commit first lets events that already wrote finish, holds back the first output of any
   other event until the commit is done, and only then takes the offsets: Kafka Streams'
   rule of committing between records, not in the middle of one.

Installed per app by ``Backpressure(app)`` for ``processing_guarantee="exactly_once"`` apps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from faust.sensors import Sensor
from faust.streams import current_event
from faust.transport.consumer import TransactionManager
from faust.types import TP, AppT, Message
from faust.types.enums import ProcessingGuarantee

__all__ = ["InputTransactionManager", "send_outputs_in_input_transactions"]

log = logging.getLogger(__name__)


class InputTransactionManager(TransactionManager):
    """A Faust transaction manager that keeps each event's outputs with its offset."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writers: set[Message] = set()  # sent outputs, not acked yet
        self._writer_acked = asyncio.Event()
        self._commit_done: asyncio.Event | None = None  # set while a commit runs

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, timestamp: float | None, headers: Any, *,
                   transactional_id: str | None = None) -> Any:
        event = current_event()
        if event is not None:
            message = event.message
            try:
                group = self.app.assignor.group_for_topic(message.tp.topic)
            except KeyError:  # not from a subscribed topic (e.g. a channel): Faust's rule
                pass
            else:
                if message not in self._writers:
                    while self._commit_done is not None:  # into the next transaction
                        await self._commit_done.wait()
                    if not message.acked:
                        self._writers.add(message)
                return await self.producer.send(
                    topic, key, value, partition, timestamp, headers,
                    transactional_id=f"{self.app.conf.id}-{group}-{message.tp.partition}")
        return await super().send(topic, key, value, partition, timestamp, headers,
                                  transactional_id=transactional_id)

    def on_ack(self, message: Message) -> None:
        """Every stream is done with ``message``: it has finished writing."""
        if message in self._writers:
            self._writers.discard(message)
            self._writer_acked.set()

    @contextlib.asynccontextmanager
    async def commit_point(self, timeout: float) -> AsyncIterator[None]:
        """Wait (at most ``timeout`` s) until no event is half-written, and keep it so."""
        if self._commit_done is not None:  # nested: the outer commit holds the point
            yield
            return
        done = self._commit_done = asyncio.Event()
        try:
            await self._wait_writers_acked(timeout)
            yield
        finally:
            self._commit_done = None
            done.set()

    async def _wait_writers_acked(self, timeout: float) -> None:
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
            if not self._writers - own:
                return
            self._writer_acked.clear()
            try:
                await asyncio.wait_for(self._writer_acked.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                log.warning("committing while %d event(s) that sent outputs are still "
                            "running (> %.1f s): their outputs may repeat after a crash",
                            len(self._writers - own), timeout)
                return


class _CommitBetweenEvents:
    """Consumer mixin: a commit takes its offsets at a commit point."""

    transactions: Any
    commit_interval: float

    async def force_commit(self, *args: Any, **kwargs: Any) -> bool:
        manager = self.transactions
        if not isinstance(manager, InputTransactionManager):
            return await super().force_commit(*args, **kwargs)  # type: ignore[misc, no-any-return]
        async with manager.commit_point(timeout=max(self.commit_interval, 1.0)):
            return await super().force_commit(*args, **kwargs)  # type: ignore[misc, no-any-return]


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


def send_outputs_in_input_transactions(app: AppT) -> None:
    """Install the above for an exactly_once ``app`` (before it starts)."""
    guarantee: Any = app.conf.processing_guarantee  # typed as the enum class by Faust
    if guarantee != ProcessingGuarantee.EXACTLY_ONCE:
        return
    transport: Any = app.transport
    transport.TransactionManager = InputTransactionManager
    if not issubclass(transport.Consumer, _CommitBetweenEvents):
        transport.Consumer = type(f"CommitBetweenEvents{transport.Consumer.__name__}",
                                  (_CommitBetweenEvents, transport.Consumer), {})
    app.sensors.add(_WriterAcks(app))
