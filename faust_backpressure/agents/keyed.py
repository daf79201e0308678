"""``@bp.rate_limit_per_key``: one token bucket per key, kept in the worker's own table partition.

The stream must be partitioned by the limit's key (co-partitioned): then the worker processing
partition p of the source owns partition p of the bucket table, changes buckets in-process
(:class:`~faust_backpressure.limiters.keyed_buckets.KeyedTokenBuckets`) and Faust's changelog
makes them durable and moves them with the partition. No lease protocol, no network round
trip per event.

``on_limit``:

* ``"defer"`` (default): the raw record goes to the deferral topic (same partition number)
  with a not-before time, and the source event is acked (``Skip``). While a key has deferred
  events its later events are deferred too, so each key keeps its order; other keys pass. The
  deferral agent (:mod:`.keyed_deferral`) holds them un-acked until due. Faust flushes the
  producer before it commits (under exactly_once the send joins the event's transaction), so
  the deferred copy is in Kafka before the source offset is committed.
* ``"wait"``: the gate sleeps until the key's reserved token is due: holds the whole partition.
* ``"shed"``: to the shed topic with the reason, as ``@bp.rate_limit``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any, Literal

from faust.exceptions import Skip
from faust.types import AppT, EventT, StreamT, TopicT

from faust_backpressure.agents.flow import unless_flow_stops
from faust_backpressure.agents.gate_base import GateBase, KeyedGateStats
from faust_backpressure.agents.headers import header, source_headers, without_bp_headers
from faust_backpressure.agents.keyed_deferral import NOT_BEFORE, Deferrals
from faust_backpressure.agents.keyed_store import (
    RefusedKeys,
    TableStore,
    describe_key,
    encode_key,
    partition_bytes,
    store_url,
)
from faust_backpressure.config.errors import FatalError
from faust_backpressure.config.validation import check_number
from faust_backpressure.faust_seam import (
    crash_worker,
    flow_stopped_event,
    mark_control_topic,
    send_control,
)
from faust_backpressure.limiters.keyed_buckets import KeyedTokenBuckets, KeyLimits, LimitsFor
from faust_backpressure.tables.store import table_options
from faust_backpressure.wire.kafka_clients import partition_for_key, raw_topic
from faust_backpressure.wire.topics import keyed_deferral_topic, keyed_overrides_table, keyed_table

__all__ = ["KEYED_LIMIT", "NOT_BEFORE", "KeyFunction", "KeyedOnLimit", "KeyedRateLimitGate",
           "NotCopartitioned", "encode_key"]

log = logging.getLogger(__name__)

KeyedOnLimit = Literal["defer", "wait", "shed"]
#: The limit's key of an event, e.g. ``lambda event: event.value.customer_id``.
KeyFunction = Callable[[EventT[Any]], Hashable]

#: Keys listed as the most refused (on the dashboard, in ``status``; never metric labels).
TOP_KEYS = 10
KEYED_LIMIT = "bp.keyed.limit"
#: Expired bucket entries removed per event (and per record of a batch).
EXPIRE_PER_RECORD = 2
#: Events whose key is checked against their partition by the partitioner (the check costs a
#: murmur2 hash; a key equal to the record's key is always fine and checked on every event).
CHECKED_EVENTS = 10_000
#: After those, one event in this many is checked: a stream that goes wrong later (a producer
#: keyed by something else) is still refused, at 1% of the cost.
CHECK_EVERY = 100


class NotCopartitioned(FatalError):
    """The stream is not partitioned by the keyed limit's key: buckets would be split."""

    kind = "not co-partitioned"


class KeyedRateLimitGate(GateBase):
    """A keyed limit on an agent: buckets by key in a table, defer/wait/shed, stats."""

    decorator = "@rate_limit_per_key"

    def __init__(self, app: AppT, name: str, *, key: KeyFunction | None = None,
                 tokens_per_second: float, burst_capacity: float | None = None,
                 on_limit: KeyedOnLimit = "defer", cost: Callable[[EventT[Any]], int] | None = None,
                 limits: LimitsFor | None = None, partitions: int | None = None,
                 store: str | None = "rocksdict://", shed_topic: str | TopicT | None = None,
                 shed_topic_suffix: str = "-shed", deferral_topic_suffix: str = "-deferred",
                 replicas: int | None = None, clock: Callable[[], float] = time.time,
                 write_behind: float = 0.01, keep_full: float = 60.0) -> None:
        if on_limit not in ("defer", "wait", "shed"):
            raise ValueError(f"on_limit must be 'defer', 'wait' or 'shed', got {on_limit!r}")
        super().__init__(app, name, shed_topic=shed_topic, shed_topic_suffix=shed_topic_suffix)
        self.key = key
        self.on_limit: KeyedOnLimit = on_limit
        self.cost = cost
        self.limits = limits
        self.clock = clock
        self.write_behind = check_number("write_behind", write_behind, 0)
        self.keep_full = check_number("keep_full", keep_full, 0)
        self.default = KeyLimits(float(tokens_per_second), float(
            tokens_per_second if burst_capacity is None else burst_capacity))
        self._declare(partitions, store, deferral_topic_suffix, replicas)
        self.deferrals = Deferrals(app, name, clock,
                                   lambda: self._streams[-1] if self._streams else None)
        self.deferral_agent: Any = None
        if on_limit == "defer":
            self.deferral_agent = app.agent(
                self.deferral_topic, name=f"bp-keyed-{name}-deferral")(self.deferrals.run)
        self._buckets: dict[int, KeyedTokenBuckets] = {}
        self._store = TableStore(self.table, write_behind, clock)
        self._override_store: Any = None
        #: Operators' overrides by encoded key (``backpressure key-override``, applied by the
        #: ops follower on every worker): they win over the stored ones and ``limits``.
        self.operator_limits: dict[bytes, KeyLimits] = {}
        self.refused_keys = RefusedKeys()
        self.table.on_recover(self._on_recover)
        self._generation: int | None = None
        self._streams: list[StreamT[Any]] = []
        self._checked = 0
        self._verified: set[str] = set()
        self.error: NotCopartitioned | None = None
        self._crashing: asyncio.Future[Any] | None = None
        # counters (this worker, since start; waits, shed and overdrafts: GateBase)
        self.admitted = 0
        self.deferred = 0
        self.readmitted = 0

    def _declare(self, partitions: int | None, store: str | None, deferral_suffix: str,
                 replicas: int | None) -> None:
        """The bucket table, the overrides' global table and the deferral topic."""
        app, name = self.app, self.name
        prefix = keyed_table(name)
        self.table: Any = app.Table(prefix, key_type=bytes, value_type=bytes,
                                    partitions=partitions, store=store_url(store, prefix),
                                    options=table_options(),
                                    help=f"keyed limit {name}: bucket levels by key")
        # Overrides: every worker needs every key's, so a global table; few, read per event,
        # so in memory (restored from the changelog at each start).
        self.overrides: Any = app.GlobalTable(keyed_overrides_table(name), key_type=bytes,
                                              value_type=bytes, partitions=1,
                                              store=store_url("memory://", prefix),
                                              help=f"keyed limit {name}: per-key limits")
        # Bucket levels are limiter state, not event output: under exactly_once they are
        # written outside transactions, as every table of ours (a crash can only leave a
        # bucket emptier than the committed offsets say, never fuller).
        for table in (self.table, self.overrides):
            mark_control_topic(app, table.changelog_topic.get_topic_name())
        self.deferral_topic_name = keyed_deferral_topic(app.conf.id, name, deferral_suffix)
        # internal: Faust declares it with the limit's partitions before the consumer
        # subscribes (undeclared, the broker auto-creates it with one partition).
        self.deferral_topic: TopicT = raw_topic(app, self.deferral_topic_name, internal=True,
                                                partitions=partitions, replicas=replicas)

    # -- limits --------------------------------------------------------------------------

    def limits_for(self, key: Hashable) -> KeyLimits | None:
        """Operator's override, else the stored one, else the ``limits`` function, else None
        (the default)."""
        if self.operator_limits:  # usually empty: no encoding on the event path
            found = self.operator_limits.get(encode_key(key))
            if found is not None:
                return found
        data = self._override_store
        if data is None:
            data = self._override_store = self.overrides.data  # made once, on first use
        if len(data):  # usually none at all: no encoding, no lookup (an in-memory store)
            raw = data.get(encode_key(key))
            if raw is not None:
                rate, burst = json.loads(raw)
                return KeyLimits(float(rate), float(burst))
        return None if self.limits is None else self.limits(key)

    async def set_limits(self, key: Hashable, tokens_per_second: float | None,
                         burst_capacity: float | None = None) -> None:
        """Store ``key``'s own limits (every worker, across restarts); None clears them."""
        encoded = encode_key(key)
        if tokens_per_second is None:
            value = None
        else:
            limits = KeyLimits(float(tokens_per_second), float(
                tokens_per_second if burst_capacity is None else burst_capacity))
            value = json.dumps([limits.tokens_per_second, limits.burst_capacity]).encode()
        # Written to the changelog directly: a table is written only inside an event, and an
        # override is control state (outside any transaction); every worker's copy reads it.
        future = await send_control(self.app, self.overrides.changelog_topic.get_topic_name(),
                                    encoded, value)
        await future  # every worker's global table reads it from the changelog

    def buckets(self, partition: int) -> KeyedTokenBuckets:
        """The buckets of one partition (its own expiry queue; the store routes by event)."""
        found = self._buckets.get(partition)
        if found is None:
            found = KeyedTokenBuckets(self.default.tokens_per_second,
                                      self.default.burst_capacity, store=self._store,
                                      limits_for=self.limits_for, clock=self.clock,
                                      keep_full=self.keep_full)
            self._buckets[partition] = found
        return found

    # -- stats ---------------------------------------------------------------------------

    def stats(self) -> KeyedGateStats:
        # overrides before top_limited: its limits_for opens the stored overrides
        return KeyedGateStats(
            **self.shared_stats(), limit=self.name,
            rate=self.default.tokens_per_second, burst=self.default.burst_capacity,
            keys_tracked=sum(b.queued for b in self._buckets.values()),
            keys_limited=sum(b.limited_now() for b in self._buckets.values()),
            deferred_backlog=self.deferrals.backlog, admitted=self.admitted, deferred=self.deferred,
            readmitted=self.readmitted, held_back=self.deferrals.held_back,
            overrides=len(self.operator_limits) + (
                0 if self._override_store is None else len(self._override_store)),
            top_limited=self.top_limited())

    def top_limited(self, n: int = TOP_KEYS) -> list[dict[str, Any]]:
        """The keys refused most lately: key (as text), its type (as ``--key-type`` names
        it), refusals, its own limits."""
        out = []
        for key, refused in self.refused_keys.top(n, self.clock()):
            own = self.limits_for(key)
            out.append({"key": describe_key(encode_key(key)), "type": type(key).__name__,
                        "refused": refused,
                        "limits": None if own is None else {
                            "rate": own.tokens_per_second, "burst": own.burst_capacity}})
        return out

    # -- installing ------------------------------------------------------------------------

    def _install(self, stream: StreamT[Any]) -> None:
        stream.add_processor(self._processor(stream))
        self._streams.append(stream)

    # -- co-partitioning -------------------------------------------------------------------

    def _refuse(self, why: str) -> NotCopartitioned:
        error = NotCopartitioned(
            f"keyed limit {self.name!r} on agent {self.agent_name}: {why}. A keyed limit keeps "
            f"each key's bucket in the table partition of the worker that processes the key, "
            f"so every event of a key must arrive on the same partition number of a topic with "
            f"as many partitions as the limit's table and deferral topic. Key the source topic "
            f"by the limit's key (or repartition first: stream.group_by(<key>) into a topic), "
            f"and pass partitions=<source partitions> to rate_limit_per_key.")
        if self.error is None:
            self.error = error
            log.error("%s", error)
            # the worker exits (code 1): an orchestrator restarts it or alerts
            self._crashing = crash_worker(self.app, error)
        return error

    def _verify_topic(self, topic: str) -> None:
        consumer = self.app.consumer
        source_n = consumer.topic_partitions(topic)
        if not source_n:
            return  # no metadata yet: look again at the next event
        for other in (self.table.changelog_topic.get_topic_name(), self.deferral_topic_name):
            n = consumer.topic_partitions(other)
            if n and n != source_n:  # 0/None: not known yet
                raise self._refuse(f"source topic {topic!r} has {source_n} partitions but "
                                   f"{other!r} has {n}")
        self._verified.add(topic)

    def check_key_sampled(self, event: Any, key: Hashable) -> None:
        """A key function's ``key`` of ``event`` (a Faust event, or a batch record's
        :class:`~faust_backpressure.agents.keyed_batch.BatchEvent`) checked against
        its partition: the first events, then one in :data:`CHECK_EVERY`."""
        self._checked += 1
        if self._checked <= CHECKED_EVENTS or not self._checked % CHECK_EVERY:
            self._check_key(event, key)

    def _check_key(self, event: EventT[Any], key: Hashable) -> None:
        if key == event.key:
            return
        data = partition_bytes(key)
        message = event.message
        n = self.app.consumer.topic_partitions(message.topic)
        if data is not None and n and partition_for_key(data, n) == message.partition:
            return
        raise self._refuse(f"key {key!r} of the record at {message.topic}[{message.partition}]"
                           f"@{message.offset} is not the record's key {event.key!r} and the "
                           f"partitioner does not put it on that partition")

    # -- the processor -----------------------------------------------------------------------

    def _processor(self, stream: StreamT[Any]) -> Callable[[Any], Any]:
        key_of = self.key
        deferral = self.deferral_topic_name
        cost = self.cost

        def admit(value: Any) -> Any:
            event = stream.current_event
            if event is None:
                return value  # not from a topic (agent.send to a channel)
            message = event.message
            key = event.key if key_of is None else key_of(event)
            buckets = self.partition_buckets(message.topic, message.partition)
            if message.topic == deferral:  # a deferred event back: its tokens were reserved
                return self._readmit(event, value, buckets, key)
            if key_of is not None:
                self.check_key_sampled(event, key)
            buckets.expire(EXPIRE_PER_RECORD)
            permits = 1 if cost is None else int(cost(event))
            if permits < 1 or buckets.try_acquire(key, permits):
                self.admitted += 1
                return value
            self.refused_keys.count(key, self.clock())
            if self.on_limit == "defer":
                return self._defer(event, buckets, key, permits)
            if self.on_limit == "shed":
                return self._shed(event, permits)
            return self._wait(value, buckets, key, permits)

        return admit

    def partition_buckets(self, topic: str, partition: int) -> KeyedTokenBuckets:
        """The buckets for a record of ``topic``'s ``partition`` (an event's or a batch's),
        after the checks every record passes: the limit's refusal, a rebalance since the last
        record (levels in memory dropped), the source's partition count (once per topic)."""
        if self.error is not None:
            raise self.error
        if self.app.consumer_generation_id != self._generation:
            self._rebalanced()
        if topic not in self._verified and topic != self.deferral_topic_name:
            self._verify_topic(topic)
        return self._buckets.get(partition) or self.buckets(partition)

    def _rebalanced(self) -> None:
        """Partitions may have moved: levels held in memory count as full from now on (the
        expiry queues stay: an entry gone since is skipped when its turn comes), and the
        index of stored keys holds only if it was rebuilt after this rebalance's recovery."""
        self._generation = self.app.consumer_generation_id
        self._store.drop_memory()
        if self._store.index_generation != self._generation:
            self._store.invalidate_index()

    async def _on_recover(self) -> None:
        """The table is restored (Faust resumes the source partitions after this)."""
        await self._store.rebuild_index(self.app.consumer_generation_id,
                                        lambda: self.app.consumer_generation_id)

    def _readmit(self, event: EventT[Any], value: Any, buckets: KeyedTokenBuckets,
                 key: Hashable) -> Any:
        """A deferred event back from the deferral agent; one not due yet goes back to the
        agent's heap (:meth:`Deferrals.hold`: sleeping here would hold the whole partition)."""
        message = event.message
        raw = header(message.headers, NOT_BEFORE)
        not_before = float(raw) if raw else 0.0
        hold_until = self.deferrals.due(key, message, buckets.due(key, not_before))
        if hold_until is not None and self.deferrals.hold(key, event, hold_until):
            raise Skip()  # its message keeps a reference: not committed while held
        due = buckets.readmit(key, not_before)
        self.readmitted += 1
        if due > self.clock():  # no deferral agent here to hold it: keep the spacing
            return self._wait_until(value, due)
        return value

    async def _defer(self, event: EventT[Any], buckets: KeyedTokenBuckets, key: Hashable,
                     permits: int) -> Any:
        message = event.message
        not_before = buckets.defer(key, permits)
        await self.deferral_topic.send(key=message.key, value=message.value,
                                       partition=message.partition, key_serializer="raw",
                                       value_serializer="raw",
                                       headers=self.deferral_headers(message, not_before))
        self.deferred += 1
        raise Skip()

    def deferral_headers(self, record: Any, not_before: float) -> list[tuple[str, bytes]]:
        """A deferred record's headers (``record``: a Faust message or a raw record of a
        batch): its own, when it may pass, the limit, where it was read."""
        return [*without_bp_headers(record.headers),
                (NOT_BEFORE, repr(not_before).encode()), (KEYED_LIMIT, self.name.encode()),
                *source_headers(record.topic, record.partition, record.offset)]

    async def _shed(self, event: EventT[Any], permits: int) -> Any:
        await self.send_to_shed(event, permits, "keyed")
        raise Skip()

    async def _wait(self, value: Any, buckets: KeyedTokenBuckets, key: Hashable,
                    permits: int) -> Any:
        self.admitted += 1
        return await self._wait_until(value, buckets.reserve(key, permits))

    async def _wait_until(self, value: Any, due: float) -> Any:
        # a rebalance or stop: go on rather than hold it (an overdraft)
        await self.counted_wait(self.sleep_unless_flow_stops(due - self.clock()))
        return value

    async def sleep_unless_flow_stops(self, delay: float) -> bool:
        """Sleep ``delay`` s; False if Faust stopped the flow first (it waits for us)."""
        if delay <= 0:
            return True
        stopped = flow_stopped_event(self.app)
        if stopped is not None and stopped.is_set():
            return False  # at once: no sleeper to start and cancel (a stop drains many)
        return await unless_flow_stops(self.app, asyncio.sleep(delay))
