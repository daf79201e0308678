"""Faust plumbing of the distributed limiters: one table, two topics, one agent per app.

Declared lazily on the first :func:`limiter_channel` call for an app (at import time of the app
module), shared by every limiter id of that app. At worker start a :class:`mode.Service` starts the
grant consumer and one keeper task for all the limiters. The rules live in the pure
:class:`~faust_backpressure.tables.ledger.LimiterLedger` and
:class:`~faust_backpressure.tables.lease.DistributedRateLimiter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import faust
from faust.types import TP

from faust_backpressure.config import BackpressureSettings
from faust_backpressure.errors import ConflictingOption
from faust_backpressure.faust_seam import (
    Slot,
    context_of,
    find_context,
    persist_changelog_offset,
    send_control,
)
from faust_backpressure.tables.channel_options import ChannelOptions
from faust_backpressure.tables.keeper import ChannelService
from faust_backpressure.tables.lease import DistributedRateLimiter
from faust_backpressure.tables.lease_state import OwnerHeard
from faust_backpressure.tables.ledger import LimiterLedger
from faust_backpressure.tables.load import OwnerLoad
from faust_backpressure.tables.store import library_table
from faust_backpressure.wire.kafka_clients import partition_for_key, raw_topic
from faust_backpressure.wire.limiter_records import (
    Ack,
    Command,
    Grant,
    LeaseRequest,
    Rejected,
    decode_reply_record,
    decode_requests,
    encode_batch,
    encode_replies,
)
from faust_backpressure.wire.signing import WRONG_KEY, Rejections
from faust_backpressure.wire.topics import (
    LIMITER_TABLE,
    limiter_changelog,
    limiter_grants,
    limiter_requests,
)

__all__ = ["LimiterChannel", "find_channel", "limiter_channel", "use_settings"]

log = logging.getLogger(__name__)

OWNER_AGENT = "fbp-limiter-owner"
#: Most requests (or replies) per record: ~0.5 KB each, so a record stays far below Kafka's
#: default 1 MB message limit.
RECORD_BATCH = 500
#: A shared limiter's options (as ``create_distributed`` names them) and their config fields.
_CONFIG_OPTIONS = {"tokens_per_second": "rate", "burst_capacity": "burst",
                   "lease_ttl": "lease_ttl", "per_consumer": "per_consumer",
                   "initial_tokens": "initial_tokens"}

#: The app's channel: the tables layer's part of the app's context.
CHANNEL: Slot[LimiterChannel] = Slot("limiter channel")


class LimiterChannel:
    """Per app: the state table, request and grant topics, the owner agent and the limiters."""

    def __init__(self, app: faust.App, *, partitions: int | None = None,
                 secret: bytes | None = None, max_clock_skew: float | None = None) -> None:
        """``secret`` and ``max_clock_skew`` given here win; unset, they are the app's
        settings' (``FAUST_BP_SECRET``, ``FAUST_BP_MAX_CLOCK_SKEW``): see
        :class:`~faust_backpressure.tables.channel_options.ChannelOptions`."""
        self.app = app
        self.options = ChannelOptions(app, partitions=partitions, secret=secret,
                                      max_clock_skew=max_clock_skew)
        self.partitions = self.options.partitions
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._worker_key = self.worker_id.encode()
        self._declare()
        self.limiters: dict[str, DistributedRateLimiter] = {}
        self._heard: dict[int, OwnerHeard] = {}
        self.owned: set[str] = set()
        self.rejections = Rejections()  # request-topic records, by reason
        self.reply_rejections = Rejections()  # grant-topic records addressed to this worker
        self.service: ChannelService | None = None
        self.load = OwnerLoad()
        self.answered = 0  # replies sent by this worker's owner agent
        self.batches = 0  # flushes that released them
        # Replies applied but not sent yet, each with the delivery future of its state record.
        self._outbox: list[tuple[Grant | Ack, asyncio.Future[Any]]] = []
        self._outbox_ready = asyncio.Event()
        # The owner's ledgers in memory, so a request does not decode its limiter's record:
        # valid while this worker keeps the partitions; dropped at every rebalance (another
        # worker may have written the table meanwhile, the table is recovered from there).
        self._ledgers: dict[str, LimiterLedger] = {}
        self._written: dict[str, asyncio.Future[Any]] = {}  # each one's last write
        app.on_partitions_revoked.connect(self._forget_ledgers)
        app.on_partitions_assigned.connect(self._forget_ledgers)
        self._register_agents()

    def _declare(self) -> None:
        """The request and grant topics and the ledgers' table."""
        app = self.app
        # None: the app's topic_replication_factor (see BackpressureSettings)
        replicas = self.options.declared_with.internal_replication_factor
        # internal: Faust creates them with these partition counts before subscribing.
        self.request_topic = raw_topic(app, limiter_requests(app.conf.id), internal=True,
                                       partitions=self.partitions, replicas=replicas)
        self.grant_topic = raw_topic(app, limiter_grants(app.conf.id), internal=True,
                                     partitions=1, replicas=replicas)
        # Values are the ledger record as JSON bytes, encoded once by us. Requests, grants and
        # the owner's state are control traffic, never part of an input partition's transaction.
        self.table = library_table(app, LIMITER_TABLE, replicas=replicas, default=None,
                                   partitions=self.partitions, key_type=str,
                                   value_type=bytes)  # bytes: "raw"

    def _register_agents(self) -> None:
        """The owner agent, and the task that starts the keeper with the worker."""
        app = self.app

        async def fbp_limiter_owner(stream: faust.StreamT[bytes]) -> None:
            async for event in stream.events():
                message = event.message
                if await self.apply_record(event.key, event.value, message.partition,
                                     message.timestamp):
                    if self.service is None:  # no sender task (yet): answer inline
                        await self.send_replies()
                    else:
                        self._outbox_ready.set()

        app.agent(self.request_topic, name=OWNER_AGENT)(fbp_limiter_owner)

        async def fbp_limiters_start() -> None:
            self.service = ChannelService(self)
            await app.add_runtime_dependency(self.service)

        app.task(fbp_limiters_start)

    def _forget_ledgers(self, sender: Any, /, *args: Any, signal: Any = None,
                        **kwargs: Any) -> None:
        self._ledgers.clear()
        self._written.clear()
        self.owned.clear()  # an owner again once it answers (and logs) again
        moved = time.monotonic()  # the limiters' clock: their unanswered requests may resend
        for heard in self._heard.values():
            heard.moved = moved

    @property
    def changelog_topic_name(self) -> str:
        return limiter_changelog(self.app.conf.id)

    def wakeup(self, limiter_id: str) -> Callable[[], None]:
        """For a limiter's constructor: tells the keeper (once started) it has to send."""
        def wake() -> None:
            limiter = self.limiters.get(limiter_id)
            if self.service is not None and limiter is not None:
                self.service.keep(limiter)
        return wake

    def add(self, limiter: DistributedRateLimiter) -> DistributedRateLimiter:
        known = self.limiters.get(limiter.rate_limiter_id)
        if known is not None:  # same id in one process: one view of the shared bucket
            differ = [option for option, field in _CONFIG_OPTIONS.items()
                      if getattr(known.config, field) != getattr(limiter.config, field)]
            if differ:
                raise ConflictingOption(differ, (
                    f"limiter {limiter.rate_limiter_id!r} of app {self.app.conf.id!r} was "
                    f"declared with other {', '.join(differ)}: declare it once, or the same"))
            return known
        self.limiters[limiter.rate_limiter_id] = limiter
        # Its owner is its partition's: one view per partition of how far it has read.
        limiter.owner_heard = self._heard.setdefault(self._partition(limiter.rate_limiter_id),
                                                     OwnerHeard())
        if self.service is not None:
            self.service.keep(limiter)
        return limiter

    # -- the owner ------------------------------------------------------------------------

    async def apply_record(self, key: bytes | None, value: bytes | None, partition: int,
                     timestamp: float | None) -> bool:
        """Apply every request in one request-topic record (one, or a worker's batch for this
        partition); their replies go to the outbox. True if there is something to send."""
        now = time.time()
        if timestamp is not None:
            self.load.observe(now - timestamp, now)
        queued = False
        for message in decode_requests(key, value, self.options.secret):
            if isinstance(message, Rejected):
                await self._reject(message, partition)
                continue
            if self._partition(message.limiter_id) != partition:
                await self._reject(Rejected("record is on the wrong partition for its key",
                                            message.limiter_id, code=WRONG_KEY), partition)
                continue
            applied = await self.apply(message, partition, now)
            if applied is not None:
                self._outbox.append(applied)
                queued = True
        return queued

    def _partition(self, limiter_id: str) -> int:
        return partition_for_key(limiter_id.encode(), self.partitions)

    async def apply(self, message: LeaseRequest | Command, partition: int, now: float
              ) -> tuple[Grant | Ack, asyncio.Future[Any]] | None:
        """Apply one request to its limiter's state and write the state to the table; return
        the reply with the delivery future of that write: the reply may only be sent once the
        write is acknowledged (:meth:`send_replies`). Runs in the owner agent, inside the
        record's event: the store and changelog partition are that event's."""
        ledger = self._ledger(message.limiter_id)
        created = ledger is None
        if ledger is None:
            # The owner's own declaration of the limiter wins over the one in the request:
            # a forged request cannot create a bucket with a rate of its choosing.
            local = self.limiters.get(message.limiter_id)
            if local is not None:
                config = local.config
            elif isinstance(message, LeaseRequest):
                config = message.config
            else:
                log.warning("fbp-limiter: command for unknown limiter %r dropped",
                            message.limiter_id)
                return None
            ledger = LimiterLedger(message.limiter_id, config, now,
                                   max_clock_skew=self.options.max_clock_skew)
        if message.limiter_id not in self.owned:
            self.owned.add(message.limiter_id)
            log.info("fbp-limiter owner: limiter=%s partition=%d worker=%s",
                     message.limiter_id, partition, self.worker_id)
        reply: Grant | Ack | None
        stats = ledger.stats
        # the epoch too: a reset clears the counters, so they alone may look unchanged
        before = (stats.requests, stats.commands, ledger.epoch)
        if isinstance(message, Command):
            reply = ledger.apply_command(message, now)
        else:
            reply = ledger.handle_lease(message, now, stretch=self.load.stretch,
                                        delay=self.load.delay, pause=self.load.pause)
            self.load.served((message.worker_id, message.limiter_id), now,
                             answered=reply is not None)
        if created or before != (ledger.stats.requests, ledger.stats.commands, ledger.epoch):
            written = await self._write(partition, ledger)
        else:
            # A resent request (its recorded grant or ack again), or one not answered: no new
            # state to write (refills are recomputed, counters ride with the next write). The
            # reply still waits for the write that recorded it.
            written = self._written.get(message.limiter_id) \
                or await self._write(partition, ledger)
        return None if reply is None else (reply, written)

    def _ledger(self, limiter_id: str) -> LimiterLedger | None:
        ledger = self._ledgers.get(limiter_id)
        if ledger is None:
            raw = self.table.get(limiter_id)
            if raw is None:
                return None
            ledger = LimiterLedger.from_record(json.loads(raw))
        return ledger

    async def _write(self, partition: int, ledger: LimiterLedger) -> asyncio.Future[Any]:
        """``table[limiter_id] = record``, keeping the changelog record's delivery future.

        What ``Table.__setitem__`` does (the changelog record to the event's partition, then
        the store), but the record goes to the producer now, not through Faust's send buffer
        (``send_soon``), which delays answers under load. Its acknowledgement becomes the
        partition's persisted offset, as on Faust's path: an owner that keeps its partition
        through a rebalance has nothing to restore (docs/reliability.md, the at_least_once
        stall after a SIGKILL)."""
        raw = json.dumps(ledger.to_record(), separators=(",", ":")).encode()
        lid = ledger.limiter_id
        table = self.table
        # The changelog topic carries the table's serializers (key json, value raw).
        written = asyncio.ensure_future(await table.changelog_topic.send(
            key=lid, value=raw, partition=partition))
        table.data[lid] = raw  # before the acknowledgement below can run: no await between
        self._ledgers[lid] = ledger
        self._written[lid] = written
        written.add_done_callback(partial(self._persisted, partition))
        return written

    def _persisted(self, partition: int, done: asyncio.Future[Any]) -> None:
        if done.cancelled() or done.exception() is not None:
            return  # the reply waiting for it fails and is not sent
        persist_changelog_offset(self.app, self.table, TP(self.changelog_topic_name, partition),
                                 done.result().offset)

    async def send_replies(self) -> None:
        """Answer every reply applied so far as one batch: wait until the state records of
        the whole batch are acknowledged, then send all the replies.

        A grant may only leave once its state record is acknowledged: a crash in between then
        loses tokens (the retry gets the recorded grant) but never grants twice. The batch is
        whatever was applied while the previous batch waited (group commit, docs/distributed.md)."""
        if not self._outbox:
            return
        batch, self._outbox = self._outbox, []
        await asyncio.gather(*(written for _, written in batch))
        by_worker: dict[str, list[Grant | Ack]] = {}
        for reply, _ in batch:
            by_worker.setdefault(reply.worker_id, []).append(reply)
        for worker_id, replies in by_worker.items():  # one record per worker and batch
            for i in range(0, len(replies), RECORD_BATCH):  # records well under 1 MB
                value = encode_replies(replies[i:i + RECORD_BATCH], self.options.secret)
                await send_control(self.app, self.grant_topic.get_topic_name(),
                                   worker_id.encode(), value)
        self.answered += len(batch)
        self.batches += 1

    async def run_sender(self, should_stop: Any) -> None:
        """The owner's answering loop (one per worker): a batch per flush round trip."""
        ready = self._outbox_ready
        while not should_stop():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ready.wait(), timeout=1.0)
            ready.clear()
            try:
                await self.send_replies()
            except Exception:  # workers retry the same request ids; the state is kept
                log.exception("fbp-limiter owner: sending replies failed")

    async def _reject(self, rejected: Rejected, partition: int) -> None:
        self.rejections.count(rejected)
        log.warning("fbp-limiter: rejected record on partition %d (limiter %r, %s): %s",
                    partition, rejected.limiter_id, rejected.code, rejected.reason)
        lid = rejected.limiter_id
        if lid and self._partition(lid) == partition:
            ledger = self._ledger(lid)
            if ledger is not None:
                ledger.reject()
                await self._write(partition, ledger)

    # -- the worker side ------------------------------------------------------------------

    async def send_many(self, messages: list[LeaseRequest | Command]) -> None:
        """Send requests as one record per request-topic partition (the owner of a
        partition answers all of that record's requests in one go)."""
        by_partition: dict[int, list[LeaseRequest | Command]] = {}
        for message in messages:
            by_partition.setdefault(self._partition(message.limiter_id), []).append(message)
        for batch in by_partition.values():
            for i in range(0, len(batch), RECORD_BATCH):  # records well under 1 MB
                key, value = encode_batch(batch[i:i + RECORD_BATCH], self.options.secret)
                await send_control(self.app, self.request_topic.get_topic_name(), key, value)

    def deliver(self, value: bytes | None, key: bytes | None = None) -> None:
        if key is not None and key != self._worker_key:
            return  # another worker's answer (grants are keyed by worker id): skip the JSON
        for reply in decode_reply_record(value, self.options.secret):
            if isinstance(reply, Rejected):  # forged or broken: never applied
                self.reply_rejections.count(reply)
                log.warning("fbp-limiter: rejected reply (%s): %s", reply.code, reply.reason)
                continue
            if reply.worker_id != self.worker_id:
                continue
            limiter = self.limiters.get(reply.limiter_id)
            if limiter is None:
                continue
            if isinstance(reply, Grant):
                limiter.on_grant(reply)
            else:
                limiter.on_ack(reply)


def limiter_channel(app: faust.App, *, partitions: int | None = None,
                    secret: bytes | None = None, max_clock_skew: float | None = None
                    ) -> LimiterChannel:
    """The app's channel, declared on first use; options given later must agree with it
    (:meth:`ChannelOptions.check`)."""
    context = context_of(app)
    channel = context.get(CHANNEL)
    if channel is None:
        return context.put(CHANNEL, LimiterChannel(app, partitions=partitions, secret=secret,
                                                   max_clock_skew=max_clock_skew))
    channel.options.check(partitions=partitions, secret=secret, max_clock_skew=max_clock_skew)
    return channel


def use_settings(app: Any, settings: BackpressureSettings) -> None:
    """Bind the app's settings (:meth:`AppContext.bind_settings`: different settings bound
    before raise), which its channel, declared already or later, reads; settings that
    conflict with the channel's own options raise (:meth:`ChannelOptions.check_settings`)."""
    context = context_of(app)
    channel = context.get(CHANNEL)
    if channel is not None:
        channel.options.check_settings(settings)
    context.bind_settings(settings)


def find_channel(app: Any) -> LimiterChannel | None:
    """The app's channel if a distributed limiter declared it; declares nothing."""
    context = find_context(app)
    return None if context is None else context.get(CHANNEL)
