"""Batch sources (docs/batching.md): where their records go (:class:`BatchTap`, registered per
topic), and Faust's bookkeeping, producers and commits done for a batch at a time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from aiokafka import TopicPartition
from faust.types import TP, AppT
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from faust_backpressure.faust_seam.context import Slot, context_of, find_context
from faust_backpressure.faust_seam.transactions import InputTransactionManager, transactional_id_of


class BatchTap(Protocol):
    """Where a batch source's fetched records go instead of Faust's per-message path."""

    def divert(self, tp: TP, records: list[Any], first: int, generation: int) -> None:
        """``records`` of ``tp`` (aiokafka ``ConsumerRecord``s) cover offsets from ``first``
        (records before the first one are markers or compacted away) to the last one's."""

    def revoke(self, tps: set[TP]) -> None:
        """``tps`` are being revoked: drop what was not started."""

    def sought(self, tp: TP, offset: int) -> None:
        """``tp``'s reading went back to ``offset`` in this generation: every record from
        there on is delivered again, so what was not started from there on is dropped."""

    async def wait_idle(self) -> None:
        """Return once no batch is in progress (or after a bounded wait)."""


#: The app's batch taps by source topic (its part of the app's context).
BATCH_TAPS: Slot[dict[str, BatchTap]] = Slot("batch taps")


def batch_taps(app: AppT) -> dict[str, BatchTap]:
    """The app's batch taps by source topic (empty if none was registered)."""
    context = find_context(app)
    taps = None if context is None else context.get(BATCH_TAPS)
    return {} if taps is None else taps


def register_batch_tap(app: AppT, topic: str, tap: BatchTap) -> None:
    """Divert ``topic``'s records to ``tap`` from now on (before the worker starts)."""
    taps = context_of(app).get_or_make(BATCH_TAPS, dict)
    if topic in taps and taps[topic] is not tap:
        raise ValueError(f"topic {topic!r} already feeds a batch pipeline")
    taps[topic] = tap


def hold_partition(app: AppT, tp: TP) -> None:
    """Stop fetching ``tp`` (its tap is full), with Faust's own buffer-full callback."""
    app.consumer.on_buffer_full(tp)


def release_partition(app: AppT, tp: TP) -> None:
    app.consumer.on_buffer_drop(tp)


def is_stale_generation(app: AppT, generation: int) -> bool:
    """Records fetched in ``generation`` were fetched before the last revocation."""
    consumer: Any = getattr(app, "_consumer", None)
    return consumer is not None and generation <= getattr(consumer, "revoked_generation", -1)


def processed_in_generation(app: AppT, tp: TP) -> Callable[[int], bool]:
    """Whether an offset of ``tp`` was processed: below its committed offset, or acked in
    this generation (Faust drops acked offsets from its index once committed)."""
    consumer: Any = app.consumer
    committed = consumer._committed_offset.get(tp)
    acked = consumer._acked_index.get(tp) or set()
    return lambda offset: (committed is not None and offset < committed) or offset in acked


def ack_offsets(app: AppT, tp: TP, first: int, last: int, generation: int) -> bool:
    """Mark ``first..last`` of ``tp`` processed in Faust's bookkeeping, as ``Consumer.ack``
    does per message; the guarded commit then commits them once nothing before is missing.
    False (nothing acked) if they were fetched before the last revocation."""
    consumer: Any = app.consumer
    if is_stale_generation(app, generation):
        return False
    # aiokafka's TopicPartition, as Faust's messages carry (equal to Faust's TP, but
    # send_offsets_to_transaction refuses any other type among the offsets' keys)
    tp = TopicPartition(tp.topic, tp.partition)  # type: ignore[assignment]
    with ack_lock:
        committed = consumer._committed_offset[tp]
        start = first if committed is None else max(first, committed)
        index = consumer._acked_index[tp]
        new = [offset for offset in range(start, last + 1) if offset not in index]
        index.update(new)
        consumer._acked[tp].extend(new)
        consumer._n_acked += len(new)
        notify(consumer._waiting_for_ack)
    return True


def raw_producer(app: AppT) -> Any:
    """The aiokafka producer a batch sends with (at_least_once)."""
    producer: Any = app.producer
    return producer._producer


async def transaction_producer(app: AppT, tp: TP) -> Any:
    """exactly_once: the aiokafka producer of ``tp``'s transaction, in a transaction; None if
    there is none (fenced, stopped, broken: :meth:`InputTransactionManager.open_transaction`)."""
    manager = app.consumer.transactions
    if not isinstance(manager, InputTransactionManager):
        return None
    return await manager.open_transaction(transactional_id_of(app, tp))


def batch_writer(app: AppT, tp: TP) -> contextlib.AbstractAsyncContextManager[None]:
    """exactly_once: hold commits of ``tp``'s transaction while a batch writes into it
    (:meth:`InputTransactionManager.batch_writer`)."""
    manager = app.consumer.transactions
    if not isinstance(manager, InputTransactionManager):
        return contextlib.nullcontext()
    return manager.batch_writer(tp)


def same_transaction(app: AppT, tp: TP, assigned: set[TP]) -> set[TP]:
    """The partitions of ``assigned`` whose outputs share ``tp``'s transaction (Faust's id is
    the topic group and the partition number: every source with as many partitions)."""
    assignor = app.assignor
    tid = transactional_id_of(app, tp)
    return {other for other in assigned
            if other.partition == tp.partition and not assignor.is_standby(other)
            and transactional_id_of(app, other) == tid}


async def commit_through(app: AppT, tp: TP, offset: int, timeout: float) -> bool:
    """Commit ``tp`` up to ``offset`` (acked before) through Faust's commit path; under
    exactly_once that commits ``tp``'s transaction, with the offsets of every other partition
    whose outputs are in it (``tp``'s alone would commit their outputs without their offsets;
    docs/batching.md). Another commit in flight (Faust's single flight) may take ours or not:
    retried until done, ``timeout`` at most."""
    consumer: Any = app.consumer
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        committed = consumer._committed_offset[tp]
        if committed is not None and committed >= offset:
            return True
        assigned = consumer.assignment()
        if loop.time() > deadline or tp not in assigned:
            return False
        await consumer.commit(same_transaction(app, tp, assigned))
