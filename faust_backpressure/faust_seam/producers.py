"""Producers that do not forget a topic's partitions (an aiokafka metadata defect).

aiokafka tracks a topic only when a send finds no partitions for it: a topic first seen in an
all-topics refresh is dropped by the next refresh once any other topic is tracked, and a record
sent to it waits for ever, so does Faust's flush before each commit (docs/reliability.md, "a
worker that could not stop"). :class:`TopicKeepingProducer` tracks every topic it sends to;
:func:`keep_producer_topics` makes an app's Faust producers of that type.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from aiokafka import AIOKafkaProducer
from faust.transport.drivers.aiokafka import Producer as FaustAIOKafkaProducer


def keep_topic(producer: AIOKafkaProducer, topic: str) -> None:
    """Track ``topic`` in ``producer``'s metadata (a refresh is only forced for a new one)."""
    client: Any = producer.client
    if topic not in client._topics:
        client.add_topic(topic)


class TopicKeepingProducer(AIOKafkaProducer):  # type: ignore[misc]  # aiokafka is untyped
    """An :class:`aiokafka.AIOKafkaProducer` that keeps the metadata of every topic it sent to."""

    # Plain functions returning aiokafka's coroutines: awaited the same, without a coroutine
    # of their own to create and resume (``send`` runs once per record).
    def send(self, topic: str, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        keep_topic(self, topic)
        return super().send(topic, *args, **kwargs)  # type: ignore[no-any-return]

    def send_batch(self, batch: Any, topic: str, *, partition: int) -> Awaitable[Any]:
        keep_topic(self, topic)
        return super().send_batch(batch, topic, partition=partition)  # type: ignore[no-any-return]


class _TopicKeepingFaustProducer:
    """Faust producer mixin: its aiokafka producers (transactional ones included) keep topics."""

    @property
    def _producer_type(self) -> type[AIOKafkaProducer]:
        return TopicKeepingProducer


def keep_producer_topics(transport: Any) -> None:
    """Make ``transport``'s Faust producers :class:`TopicKeepingProducer` s (before
    ``app.producer`` is first used; Faust's ``producer_threaded`` producer is not covered)."""
    base = transport.Producer
    if issubclass(base, FaustAIOKafkaProducer) and not issubclass(
            base, _TopicKeepingFaustProducer):
        transport.Producer = type(f"TopicKeeping{base.__name__}",
                                  (_TopicKeepingFaustProducer, base), {})
