"""Faust plumbing of the distributed limiters: one table, two topics, one agent per app.

Declared lazily on the first :func:`limiter_channel` call for an app (at import time of the app
module), shared by every limiter id of that app. At worker start a :class:`mode.Service` starts the
grant consumer and one keeper task per limiter. The rules live in the pure
:class:`~faust_backpressure.tables.ledger.LimiterLedger` and
:class:`~faust_backpressure.tables.lease.DistributedRateLimiter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from mode import Service

from faust_backpressure.faust_seam import install, mark_control_topic, send_control
from faust_backpressure.tables.kafka import broker_bootstrap, partition_for_key, raw_topic
from faust_backpressure.tables.lease import DistributedRateLimiter
from faust_backpressure.tables.ledger import LimiterLedger
from faust_backpressure.tables.messages import (
    Ack,
    Command,
    Grant,
    LeaseRequest,
    RejectedRecord,
    decode_reply,
    decode_request,
    encode,
)

__all__ = ["TABLE_NAME", "LimiterChannel", "find_channel", "limiter_channel"]

log = logging.getLogger(__name__)

TABLE_NAME = "fbp-limiters"
OWNER_AGENT = "fbp-limiter-owner"

_channels: weakref.WeakKeyDictionary[faust.App, LimiterChannel] = weakref.WeakKeyDictionary()


class LimiterChannel:
    """Per app: the state table, request and grant topics, the owner agent and the limiters."""

    def __init__(self, app: faust.App, *, partitions: int | None = None,
                 secret: bytes | None = None, max_clock_skew: float = 10.0) -> None:
        self.app = app
        self.secret = secret
        self.max_clock_skew = max_clock_skew
        self.partitions = partitions or app.conf.topic_partitions
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        prefix = app.conf.id
        # internal: Faust creates them with these partition counts before subscribing.
        self.request_topic = raw_topic(app, f"{prefix}-fbp-limiter-requests", internal=True,
                                       partitions=self.partitions)
        self.grant_topic = raw_topic(app, f"{prefix}-fbp-limiter-grants", internal=True,
                                     partitions=1)
        self.table = app.Table(TABLE_NAME, default=None, partitions=self.partitions,
                               key_type=str)
        # Requests, grants and the owner's state are control traffic, never part of an input
        # partition's transaction (see docs/distributed.md, "exactly_once").
        install(app)
        mark_control_topic(app, self.changelog_topic_name)
        self.limiters: dict[str, DistributedRateLimiter] = {}
        #: Per limiter id, the event its keeper sleeps on (made when the keeper starts).
        self.wakeups: dict[str, asyncio.Event] = {}
        self.owned: set[str] = set()
        self.rejected = 0
        self.service: _ChannelService | None = None

        async def fbp_limiter_owner(stream: faust.StreamT[bytes]) -> None:
            async for event in stream.events():
                await self.handle(event.key, event.value, event.message.partition)

        app.agent(self.request_topic, name=OWNER_AGENT)(fbp_limiter_owner)

        async def fbp_limiters_start() -> None:
            self.service = _ChannelService(self)
            await app.add_runtime_dependency(self.service)

        app.task(fbp_limiters_start)

    @property
    def changelog_topic_name(self) -> str:
        return f"{self.app.conf.id}-{TABLE_NAME}-changelog"

    def wakeup(self, limiter_id: str) -> Callable[[], None]:
        """For the limiter's constructor: wakes its keeper (once started) to send a request."""
        def wake() -> None:
            event = self.wakeups.get(limiter_id)
            if event is not None:
                event.set()
        return wake

    def add(self, limiter: DistributedRateLimiter) -> DistributedRateLimiter:
        known = self.limiters.get(limiter.rate_limiter_id)
        if known is not None:
            return known  # same id in one process: one view of the shared bucket
        self.limiters[limiter.rate_limiter_id] = limiter
        if self.service is not None:
            self.service.keep(limiter)
        return limiter

    # -- the owner ------------------------------------------------------------------------

    async def handle(self, key: bytes | None, value: bytes | None, partition: int) -> None:
        """Process one request-topic record; runs in the agent of the record's partition."""
        now = time.time()
        try:
            message = decode_request(key, value, self.secret)
            assert key is not None
            if partition_for_key(key, self.partitions) != partition:
                raise RejectedRecord("record is on the wrong partition for its key")
        except RejectedRecord as exc:
            self._reject(exc, partition)
            return
        record = self.table.get(message.limiter_id)
        if record is not None:
            ledger = LimiterLedger.from_record(record)
        elif isinstance(message, LeaseRequest):
            ledger = LimiterLedger(message.limiter_id, message.config, now,
                                   max_clock_skew=self.max_clock_skew)
        else:
            local = self.limiters.get(message.limiter_id)
            if local is None:
                log.warning("fbp-limiter: command for unknown limiter %r dropped",
                            message.limiter_id)
                return
            ledger = LimiterLedger(message.limiter_id, local.config, now,
                                   max_clock_skew=self.max_clock_skew)
        if message.limiter_id not in self.owned:
            self.owned.add(message.limiter_id)
            log.info("fbp-limiter owner: limiter=%s partition=%d worker=%s",
                     message.limiter_id, partition, self.worker_id)
        reply: Grant | Ack | None
        if isinstance(message, Command):
            reply = ledger.apply_command(message, now)
        else:
            reply = ledger.handle_lease(message, now)
        self.table[message.limiter_id] = ledger.to_record()
        # The grant may only leave once its state record is acknowledged: a crash in between
        # then loses tokens (the retry gets the recorded grant) but never grants twice.
        await self.app.producer.flush()
        if reply is not None:
            await send_control(self.app, self.grant_topic.get_topic_name(),
                               reply.worker_id.encode(), encode(reply))

    def _reject(self, exc: RejectedRecord, partition: int) -> None:
        self.rejected += 1
        log.warning("fbp-limiter: rejected record on partition %d (limiter %r): %s",
                    partition, exc.limiter_id, exc.reason)
        lid = exc.limiter_id
        if lid and partition_for_key(lid.encode(), self.partitions) == partition:
            record = self.table.get(lid)
            if record is not None:
                ledger = LimiterLedger.from_record(record)
                ledger.reject()
                self.table[lid] = ledger.to_record()

    # -- the worker side ------------------------------------------------------------------

    async def send(self, limiter: DistributedRateLimiter,
                   message: LeaseRequest | Command) -> None:
        key = limiter.rate_limiter_id.encode()
        await send_control(self.app, self.request_topic.get_topic_name(), key,
                           encode(message, key=key, secret=self.secret))

    def deliver(self, value: bytes | None) -> None:
        reply = decode_reply(value)
        if reply is None or reply.worker_id != self.worker_id:
            return
        limiter = self.limiters.get(reply.limiter_id)
        if limiter is None:
            return
        if isinstance(reply, Grant):
            limiter.on_grant(reply)
        else:
            limiter.on_ack(reply)


class _ChannelService(Service):
    """Grant consumer plus one keeper per limiter, started with the worker."""

    def __init__(self, channel: LimiterChannel, **kwargs: Any) -> None:
        self.channel = channel
        self._consumer: AIOKafkaConsumer | None = None
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        channel = self.channel
        await channel.grant_topic.maybe_declare()
        await channel.request_topic.maybe_declare()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker_bootstrap(channel.app), group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="latest")
        await consumer.start()
        tp = TopicPartition(channel.grant_topic.get_topic_name(), 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)  # resolve "end" before the first request goes out
        self._consumer = consumer
        self.add_future(self._read_grants(consumer))
        for limiter in channel.limiters.values():
            self.keep(limiter)

    async def on_stop(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()

    def keep(self, limiter: DistributedRateLimiter) -> None:
        self.add_future(self._keeper(limiter))

    async def _read_grants(self, consumer: AIOKafkaConsumer) -> None:
        while not self.should_stop:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    self.channel.deliver(record.value)

    async def _keeper(self, limiter: DistributedRateLimiter) -> None:
        wake = self.channel.wakeups[limiter.rate_limiter_id] = asyncio.Event()
        while not self.should_stop:
            wake.clear()
            message = limiter.poll()
            if message is not None:
                try:
                    await self.channel.send(limiter, message)
                except Exception:  # the retry timer resends it
                    log.exception("fbp-limiter: sending %s failed", message.type)
                continue
            delay = limiter.next_poll_in()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=min(delay, 1.0))


def limiter_channel(app: faust.App, **options: Any) -> LimiterChannel:
    """The app's channel, declared on first use (options only count then)."""
    channel = _channels.get(app)
    if channel is None:
        channel = _channels[app] = LimiterChannel(app, **options)
    return channel


def find_channel(app: Any) -> LimiterChannel | None:
    """The app's channel if a distributed limiter declared it; declares nothing."""
    try:
        return _channels.get(app)
    except TypeError:  # not an app (cannot be weakly referenced)
        return None
