"""A limiter channel's runtime on each worker: the grant consumer and the keeper, one task and
one timer that polls every distributed limiter of the app and sends their requests."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from mode import Service

from faust_backpressure.faust_seam import refresh_consumer_metadata
from faust_backpressure.tables.lease import DistributedRateLimiter
from faust_backpressure.wire.kafka_clients import kafka_consumer
from faust_backpressure.wire.limiter_records import Command, LeaseRequest

__all__ = ["ChannelService"]

log = logging.getLogger(__name__)


class Channel(Protocol):
    """What the service needs of its :class:`~faust_backpressure.tables.service.LimiterChannel`
    (a protocol: the channel module imports this one)."""

    app: Any
    grant_topic: Any
    request_topic: Any

    @property
    def limiters(self) -> Mapping[str, DistributedRateLimiter]: ...

    async def run_sender(self, should_stop: Callable[[], bool]) -> None: ...

    def deliver(self, value: bytes | None, key: bytes | None = None) -> None: ...

    async def send_many(self, messages: list[LeaseRequest | Command]) -> None: ...


class ChannelService(Service):
    """Grant consumer plus one keeper for all the limiters, started with the worker."""

    def __init__(self, channel: Channel, **kwargs: Any) -> None:
        self.channel = channel
        self._consumer: AIOKafkaConsumer | None = None
        self._wake = asyncio.Event()
        self._dirty: set[DistributedRateLimiter] = set()  # woken by demand or an answer
        self._due: dict[DistributedRateLimiter, float] = {}  # next timed poll (loop time)
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        channel = self.channel
        await channel.grant_topic.maybe_declare()
        await channel.request_topic.maybe_declare()
        # The owner agent subscribed before the request topic may have existed: let the
        # group see its partitions now rather than at the next rebalance.
        await refresh_consumer_metadata(channel.app)
        consumer = kafka_consumer(channel.app, "grants", auto_offset_reset="latest")
        await consumer.start()
        tp = TopicPartition(channel.grant_topic.get_topic_name(), 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)  # resolve "end" before the first request goes out
        self._consumer = consumer
        self.add_future(self._read_grants(consumer))
        self.add_future(channel.run_sender(lambda: self.should_stop))
        for limiter in channel.limiters.values():
            self.keep(limiter)
        self.add_future(self._keeper())

    async def on_stop(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):  # best effort: the worker is stopping
                await self._consumer.stop()

    def keep(self, limiter: DistributedRateLimiter) -> None:
        """``limiter`` may have something to send: poll it on the keeper's next pass."""
        self._dirty.add(limiter)
        self._wake.set()

    async def _read_grants(self, consumer: AIOKafkaConsumer) -> None:
        while not self.should_stop:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    self.channel.deliver(record.value, record.key)

    async def _keeper(self) -> None:
        """Poll the limiters that were woken or are due, send what they have to send as one
        record per partition, sleep until the next one is due. One task and one timer for
        all limiters: thousands of limiters each wake a few times a second."""
        loop = asyncio.get_running_loop()
        heap: list[tuple[float, int, DistributedRateLimiter]] = []
        order = itertools.count()
        due = self._due
        while not self.should_stop:
            self._wake.clear()
            now = loop.time()
            ready, self._dirty = self._dirty, set()
            while heap and heap[0][0] <= now:
                at, _, limiter = heapq.heappop(heap)
                if due.get(limiter) == at:  # else superseded by a later schedule
                    ready.add(limiter)
            messages: list[LeaseRequest | Command] = []
            for limiter in ready:
                while (message := limiter.poll()) is not None:
                    messages.append(message)
                at = now + min(limiter.next_poll_in(), 1.0)
                due[limiter] = at
                heapq.heappush(heap, (at, next(order), limiter))
            if messages:
                try:
                    await self.channel.send_many(messages)
                except Exception:  # the retry timers resend them
                    log.exception("fbp-limiter: sending %d requests failed", len(messages))
            if self._dirty:
                continue
            delay = heap[0][0] - loop.time() if heap else 1.0
            timer = loop.call_later(max(0.0, delay), self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
