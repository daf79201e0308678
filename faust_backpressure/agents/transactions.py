"""exactly_once for topic-to-topic agents: outputs join the input partition's transaction.

Faust (0.15.3) commits a source partition's offsets in the transaction named after that
partition, but names an output's transaction after the partition the *output* lands on, found
in the consumer's metadata, which only knows subscribed topics. For a sink that the app does not
consume, no partition is found, so the output is sent outside any transaction: visible at once to
``read_committed`` readers and produced again when another worker reprocesses the input after a
crash. (Seen: hundreds of duplicates after a SIGKILL in the 20,000-record test.)

:class:`InputTransactionManager` sends every output made while processing an event in the
transaction of that event's partition, the one its offset is committed in, so output and offset
commit or abort together. Installed per app by ``Backpressure(app)``.
"""

from __future__ import annotations

from typing import Any

from faust.streams import current_event
from faust.transport.consumer import TransactionManager
from faust.types import AppT
from faust.types.enums import ProcessingGuarantee

__all__ = ["InputTransactionManager", "send_outputs_in_input_transactions"]


class InputTransactionManager(TransactionManager):
    """A Faust transaction manager that names an output's transaction after its input."""

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, timestamp: float | None, headers: Any, *,
                   transactional_id: str | None = None) -> Any:
        event = current_event()
        if event is not None:
            source = event.message.tp
            try:
                group = self.app.assignor.group_for_topic(source.topic)
            except KeyError:  # not from a subscribed topic (e.g. a channel): Faust's rule
                pass
            else:
                return await self.producer.send(
                    topic, key, value, partition, timestamp, headers,
                    transactional_id=f"{self.app.conf.id}-{group}-{source.partition}")
        return await super().send(topic, key, value, partition, timestamp, headers,
                                  transactional_id=transactional_id)


def send_outputs_in_input_transactions(app: AppT) -> None:
    """Use :class:`InputTransactionManager` for an exactly_once ``app`` (before it starts)."""
    guarantee: Any = app.conf.processing_guarantee  # typed as the enum class by Faust
    if guarantee == ProcessingGuarantee.EXACTLY_ONCE:
        app.transport.TransactionManager = InputTransactionManager  # type: ignore[misc]
