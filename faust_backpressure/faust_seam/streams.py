"""Small accessors of an app's streams and consumer, used by the other layers, and the patches a
rate-limit gate puts on the streams it is installed on (:func:`set_stream_gate`,
:func:`wrap_stream_batches`)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from faust.exceptions import NotReady
from faust.types import AppT, EventT, Message, StreamT

#: The seam's one logger, named as when the seam was one module.
log = logging.getLogger("faust_backpressure.faust_seam")

#: ``Stream.take_events``: ``(max_, within)`` -> batches of events.
TakeEvents = Callable[[int, Any], AsyncIterator[Sequence[EventT[Any]]]]


def stream_processors(stream: StreamT[Any]) -> list[Callable[[Any], Any]]:
    """The stream's processor list (Faust has ``add_processor`` but no way to remove one)."""
    processors: list[Callable[[Any], Any]] = stream._processors  # type: ignore[attr-defined]
    return processors


def stream_gate(stream: StreamT[Any]) -> object | None:
    """The gate :func:`set_stream_gate` put on ``stream``, or None (a restarted actor reuses
    its stream, so a gate asks before it installs itself again)."""
    gate: object | None = getattr(stream, "_bp_gate", None)
    return gate


def set_stream_gate(stream: StreamT[Any], gate: object) -> None:
    """Remember that ``gate`` is installed on ``stream`` (see :func:`stream_gate`)."""
    stream._bp_gate = gate  # type: ignore[attr-defined]


def wrap_stream_batches(stream: StreamT[Any], wrap: Callable[[TakeEvents], TakeEvents]
                        ) -> None:
    """Make ``stream.take_events`` ``wrap(<Faust's take_events>)`` and ``stream.take`` the
    values of its batches (Faust's ``take`` does not go through ``take_events``): a gate then
    acquires for each whole batch, just before it is handed to the agent's body."""
    batched = wrap(stream.take_events)  # type: ignore[attr-defined]

    async def take(max_: int, within: Any) -> AsyncIterator[Sequence[Any]]:
        async for events in batched(max_, within):
            yield [event.value for event in events]

    setattr(stream, "take_events", batched)  # noqa: B010
    setattr(stream, "take", take)  # noqa: B010


def unbounded_stream_buffer(stream: StreamT[Any], high_water: int, drop_ratio: float) -> None:
    """Make the stream's buffer never *full* (the conductor never awaits room in it) while
    Faust's pressure callbacks still pause its partitions at ``high_water`` and resume them
    at ``drop_ratio`` of it (mode caches both sizes from ``maxsize``)."""
    never_full = 1 << 30
    channel: Any = stream.channel
    if getattr(channel, "_queue", None) is None:
        channel.maxsize = never_full
    queue = channel.queue
    queue._maxsize = never_full
    queue.__dict__["pressure_high_size"] = high_water
    queue.__dict__["pressure_drop_size"] = math.floor(high_water * drop_ratio)


async def redeliver(stream: StreamT[Any], message: Message) -> None:
    """Deliver ``message`` (consumed by another agent) to ``stream`` as the conductor would.

    A keyed limit's deferral agent hands a due record to the limited agent this way: the
    stream decodes it with its own topic's schema, and the record's offset is acked only once
    both the deferral agent and the stream have acked it (the message's refcount). The buffer
    never counts as full (:func:`unbounded_stream_buffer`), so this never blocks.
    """
    channel: Any = stream.channel
    event = await channel.decode(message, propagate=True)
    message.incref()
    channel.queue.put_nowait(event)


def let_go(app: AppT, message: Message) -> None:
    """Stop Faust waiting for ``message``, held un-acked and given up (a rebalance or stop).

    Faust's ``wait_empty`` (at every rebalance and stop) waits until each message it handed
    out is acked or garbage: one still referenced (the last record a loop read) held it for
    ever. Not acked, its offset is never committed, so it is read again.
    """
    consumer: Any = app.consumer
    consumer._unacked_messages.discard(message)


def flow_stopped_event(app: AppT) -> asyncio.Event | None:
    """The consumer's "flow stopped" event (set during rebalances and shutdown), if started."""
    consumer = getattr(app, "_consumer", None)
    event: asyncio.Event | None = getattr(consumer, "suspend_flow", None)
    return event


async def refresh_consumer_metadata(app: AppT) -> None:
    """Make the app's own consumer fetch metadata now. A topic the consumer subscribed to
    before it existed is otherwise ignored until the next rebalance or metadata refresh (5 min
    by default); fresh metadata showing its partitions makes the group rejoin and assign it."""
    consumer = getattr(app, "_consumer", None)
    thread = getattr(consumer, "_thread", None)
    if thread is None:
        return
    client = thread._ensure_consumer()._client
    await thread.call_thread(client.force_metadata_update)


def source_backlog(app: AppT, topics: Iterable[str]) -> dict[str, int] | None:
    """This worker's backlog on its assigned partitions of ``topics``: records between the
    last committed (else last read) offset and the high-water mark the consumer's own fetches
    report (no extra Kafka client; 0 for a topic with no partition here). ``None`` before the
    consumer runs."""
    consumer: Any = getattr(app, "_consumer", None)
    if consumer is None:
        return None
    wanted = set(topics)
    out = dict.fromkeys(wanted, 0)
    try:
        assigned = consumer.assignment()
    except NotReady:  # ConsumerNotStarted: not started yet, or stopping
        return None
    committed_offsets = getattr(consumer, "_committed_offset", {})
    read_offsets = getattr(consumer, "_read_offset", {})
    for tp in assigned:
        if tp.topic not in wanted:
            continue
        try:
            high = consumer.highwater(tp)
        except Exception as exc:  # broad: a view must render while a rebalance or a stop
            # races it (aiokafka asserts the partition is still assigned; a stopped consumer
            # raises NotReady): the partition is left out of this estimate only
            log.debug("no high-water mark for %s (%r): left out of the backlog", tp, exc)
            continue
        # Faust keeps the last processed (committed) and last read offsets, not the next ones
        done = committed_offsets.get(tp)
        if done is None:
            done = read_offsets.get(tp)
        if high is None or high < 0:
            continue
        out[tp.topic] += max(0, int(high) - (-1 if done is None else int(done)) - 1)
    return out


async def force_metadata_update(client: Any) -> None:
    """Ask an aiokafka consumer's client for fresh metadata (e.g. topics made since start)."""
    await client._client.force_metadata_update()


async def keep_metadata_of(client: Any, topics: Iterable[str]) -> None:
    """Let an aiokafka consumer's or admin client's metadata be that of ``topics`` only.

    A client with no subscription asks the broker for every topic of the cluster at each
    refresh (``metadata_max_age_ms``) and keeps them all: memory that grows with the
    cluster's topics. Call it once the topics exist: asking for a topic the broker does not
    know may create it where the broker auto-creates topics."""
    await client._client.set_topics(list(topics))
