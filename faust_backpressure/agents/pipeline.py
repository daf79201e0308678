"""Topic-to-topic pipelines: consume, acquire, decode, process with retries, send, ack.

A record that cannot be decoded, or whose processing still fails after ``max_retries``
retries, goes to the dead-letter topic with its original key/value bytes and headers plus
``bp.*`` headers saying why (see :mod:`faust_backpressure.agents.headers`). The partition keeps
flowing. The source is consumed as raw bytes and decoded here with the source topic's schema,
because Faust itself logs and drops undecodable records.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from faust.types import AgentT, AppT, EventT, StreamT, TopicT

from faust_backpressure.agents.batch import PLAIN_RESULTS, is_raw, outputs_of
from faust_backpressure.agents.batch_pipeline import BatchRunner
from faust_backpressure.agents.dlq_log import DeadLetterLog
from faust_backpressure.agents.downstream import Downstream, WaitAborted
from faust_backpressure.agents.flow import never_block_conductor, unless_flow_stops
from faust_backpressure.agents.headers import Failure, Headers, dlq_headers, requeue_headers
from faust_backpressure.agents.keyed import KeyedRateLimitGate
from faust_backpressure.agents.keyed_batch import one_at_a_time, run_beside_readmitted
from faust_backpressure.agents.rate_limit import RateLimitGate
from faust_backpressure.config import BackpressureSettings, OnLimit
from faust_backpressure.faust_seam import flow_stopped_event, register_batch_tap
from faust_backpressure.limiters import RateLimitingStrategy
from faust_backpressure.wire.kafka_clients import raw_topic

__all__ = ["Backoff", "Pipeline", "PipelineStats", "exponential_backoff"]

log = logging.getLogger(__name__)

#: Seconds to sleep before retry number ``attempt`` (1 = the first retry).
Backoff = Callable[[int], float]
TopicSpec = str | TopicT


def exponential_backoff(initial: float, maximum: float) -> Backoff:
    """``initial``, ``2*initial``, ``4*initial``, ... capped at ``maximum``."""
    def backoff(attempt: int) -> float:
        return float(min(maximum, initial * (2 ** (attempt - 1))))
    return backoff


@dataclass
class PipelineStats:
    """Counts since this worker started (per process, not cluster-wide)."""

    consumed: int = 0
    produced: int = 0
    filtered: int = 0
    retries: int = 0
    dead_lettered: int = 0
    #: Events put back at the end of their partition: the flow stopped while they waited
    #: for their dependency (see ``docs/downstream.md``).
    requeued: int = 0


def _batch_only(value: Any) -> Any:
    raise TypeError("a batch pipeline processes batches (process_batch=)")


def _checked_options(name: str, settings: BackpressureSettings, *,
                     process: Callable[[Any], Any] | None,
                     process_batch: Callable[[list[Any]], Any] | None,
                     concurrency: int | None, max_retries: int | None,
                     limiter: RateLimitingStrategy | None, downstream: Downstream | None,
                     priority: Callable[[Any], int] | None, on_limit: OnLimit
                     ) -> tuple[int, int]:
    """A pipeline's options checked (a clear error naming the option); its concurrency and
    max_retries with their defaults."""
    if (process is None) == (process_batch is None):
        raise ValueError(f"pipeline {name!r}: pass process= or process_batch= (one)")
    if process_batch is not None:  # what batch mode does not do yet is refused, not ignored
        unsupported = [f"{option}=" for option, value, default in
                       (("concurrency", concurrency, 1), ("on_limit", on_limit, "wait"))
                       if value is not None and value is not False  # (True == 1)
                       and value != default]
        if unsupported:
            raise ValueError(f"pipeline {name!r}: process_batch= does not support "
                             f"{', '.join(unsupported)} yet (docs/batching.md)")
    if concurrency is None:  # (a batch pipeline's one task makes one call at a time)
        concurrency = (downstream.max_concurrency if downstream is not None
                       and process_batch is None else 1)
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
    if priority is not None and limiter is None:
        raise ValueError(f"pipeline {name!r}: priority= needs a limiter (priority "
                         "shedding happens at the rate-limit gate)")
    retries = settings.max_retries if max_retries is None else max_retries
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"max_retries must be an int >= 0, got {retries!r}")
    return concurrency, retries


def _backoff(settings: BackpressureSettings, retry_backoff: float | Backoff | None) -> Backoff:
    if retry_backoff is None:
        retry_backoff = settings.retry_backoff
    if callable(retry_backoff):
        return retry_backoff
    return exponential_backoff(retry_backoff, max(retry_backoff, settings.retry_backoff_max))


class Pipeline:
    """One declared pipeline: its topics, its agent and its counters.

    Built by ``Backpressure.pipeline(...)``; ``process(value)`` may be sync or async.
    """

    def __init__(self, app: AppT, name: str, *, source: TopicSpec,
                 sink: TopicSpec | Sequence[TopicSpec] | None,
                 process: Callable[[Any], Any] | None = None,
                 dlq: TopicSpec | None = None, limiter: RateLimitingStrategy | None = None,
                 on_limit: OnLimit = "wait", max_retries: int | None = None,
                 retry_backoff: float | Backoff | None = None, concurrency: int | None = None,
                 settings: BackpressureSettings | None = None,
                 priority: Callable[[Any], int] | None = None,
                 keyed: KeyedRateLimitGate | None = None,
                 downstream: Downstream | None = None, ordered_by_key: bool = False,
                 process_batch: Callable[[list[Any]], Any] | None = None,
                 batch_size: int = 500, batch_timeout: float = 0.05) -> None:
        """``priority``: the decoded value's priority (higher is more important); under a
        control loop's load shedding (``shed_on_critical``) the lowest go to the shed topic
        first (``control.shedding``; a batch's before it acquires). Needs ``limiter``.
        ``keyed``: a keyed limit as the limiter (key = the record's key by default; batches
        are split by key, the records over their key's limit deferred in per-key order,
        shed, or the batch held for them, by its ``on_limit``: docs/batching.md, "Keyed
        limits in a batch").
        ``downstream``: ``process`` runs through that guard (see ``docs/downstream.md``),
        with up to ``concurrency`` events in progress (default the guard's
        ``max_concurrency``); ``ordered_by_key``: an event waits for the previous one with
        the same record key (a batch pipeline's outputs keep each key's input order, retried
        events included: docs/batching.md, "Order per key").
        ``process_batch``: instead of ``process``, called with the decoded values of a batch
        (at most ``batch_size`` records of one partition, ``batch_timeout`` s at most) and
        returning one result per value (see ``docs/batching.md``)."""
        settings = settings or BackpressureSettings()
        self.concurrency, self.max_retries = _checked_options(
            name, settings, process=process, process_batch=process_batch,
            concurrency=concurrency, max_retries=max_retries, limiter=limiter,
            downstream=downstream, priority=priority, on_limit=on_limit)
        self.app = app
        self.name = name
        self.settings = settings
        self.downstream = downstream
        self.priority = priority
        self.keyed = keyed
        #: per record key, the last event in progress (only with ``ordered_by_key``)
        self._key_tails: dict[Any, asyncio.Future[None]] | None = (
            {} if ordered_by_key else None)
        self.backoff = _backoff(settings, retry_backoff)
        # a keyed batch pipeline's deferred records come back one at a time
        self.process: Callable[[Any], Any] = process or (
            one_at_a_time(process_batch) if keyed and process_batch else _batch_only)
        self.stats = PipelineStats()
        self._declare_topics(source, sink, dlq)
        self.gate = (None if limiter is None else
                     RateLimitGate(app, limiter, on_limit=on_limit,
                                   shed_topic_suffix=settings.shed_topic_suffix,
                                   agent_name=f"pipeline:{name}",
                                   priority=None if priority is None else self._priority_of))
        self.dlq_log = DeadLetterLog(name, log)
        self._resumed = asyncio.Event()
        self._resumed.set()
        #: who paused it (``by``, ``at``, ``reason``) while paused
        self.paused_by: dict[str, Any] | None = None
        self.batch = (None if process_batch is None else self._batch_runner(
            process_batch, batch_size, batch_timeout, ordered_by_key))
        self.agent: AgentT[Any] = self._agent()

    def _batch_runner(self, process_batch: Callable[[list[Any]], Any], batch_size: int,
                      batch_timeout: float, ordered_by_key: bool) -> BatchRunner:
        if self.gate is not None and batch_size > self.gate.capacity:
            raise ValueError(f"pipeline {self.name!r}: batch_size {batch_size} is above the "
                             f"limiter's burst ({self.gate.capacity:g}): a batch could "
                             "never be admitted at once")
        runner = BatchRunner(self, process_batch, batch_size, batch_timeout, ordered_by_key)
        register_batch_tap(self.app, self.source_topic_name, runner)
        return runner

    def _declare_topics(self, source: TopicSpec,
                        sink: TopicSpec | Sequence[TopicSpec] | None,
                        dlq: TopicSpec | None) -> None:
        # The declared source carries the schema; the agent reads the same topic as raw bytes.
        self.schema_topic = self._topic(source)
        self.source_topic_name = self.schema_topic.get_topic_name()
        # internal: Faust declares it (the source's partitions, else the app's
        # topic_partitions) before the consumer subscribes, not auto-created (issue 14).
        self.raw_source = raw_topic(self.app, self.source_topic_name, internal=True,
                                    partitions=getattr(self.schema_topic, "partitions", None))
        sinks: Iterable[TopicSpec] = (
            () if sink is None else [sink] if isinstance(sink, (str, TopicT)) else sink)
        self.sinks: list[TopicT] = [self._topic(s, like=self.schema_topic) for s in sinks]
        # A raw side's bytes are used as they are (as in batch mode): no codec call per event.
        schema: Any = self.schema_topic
        self._raw_key = is_raw(schema.key_serializer, getattr(schema, "key_type", None))
        self._raw_value = is_raw(schema.value_serializer, getattr(schema, "value_type", None))
        dlq_name = (dlq if dlq is not None
                    else self.source_topic_name + self.settings.dlq_topic_suffix)
        # a DLQ declared by name is ours: internal_replication_factor (None: Faust's default)
        self.dlq = (raw_topic(self.app, dlq_name,
                              replicas=self.settings.internal_replication_factor)
                    if isinstance(dlq_name, str) else dlq_name)

    def _agent(self) -> AgentT[Any]:
        async def run(stream: StreamT[Any]) -> None:  # (no extra frame to resume per await)
            if self.batch is not None:  # the seam diverts the source's records to it
                if self.batch.keyed is not None:  # and the deferral agent hands some back
                    await run_beside_readmitted(self, self.batch.keyed, stream)
                else:
                    await self.batch.run()
                return
            # A paused pipeline holds its event: the buffer must then never block the
            # worker's conductor (as for a waiting rate limit, see .flow).
            never_block_conductor(self.app, stream)
            handle = self._handle if self._key_tails is None else self.handle
            resumed = self._resumed
            async for event in stream.events():
                if not resumed.is_set() and not await self.wait_resumed():
                    log.info("pipeline %s is paused but the flow stopped (rebalance or stop): "
                             "one event goes on", self.name)
                await handle(event)

        # Faust labels an agent in its log lines by its function's module and qualname:
        # name it after the pipeline (docs/operations.md, "Logs").
        run.__module__, run.__qualname__, run.__name__ = "bp-pipeline", self.name, self.name
        fun = run if self.gate is None or self.batch is not None else self.gate(run)
        if self.keyed is not None:  # a keyed limit as the limiter: key = the record's key
            self.keyed.agent_name = self.keyed.agent_name or f"pipeline:{self.name}"
            fun = self.keyed(fun)
        return self.app.agent(self.raw_source, name=f"bp-pipeline-{self.name}",
                              concurrency=self.concurrency)(fun)

    def _topic(self, spec: TopicSpec, *, like: TopicT | None = None) -> TopicT:
        """A declared topic as is; a topic named by string with ``like``'s serializers, or
        raw bytes (a named source, the DLQ)."""
        if not isinstance(spec, str):
            return spec
        if like is None:
            return raw_topic(self.app, spec)
        topic: Any = like  # TopicT does not declare the serializers every Topic has
        return self.app.topic(spec, key_serializer=topic.key_serializer,
                              value_serializer=topic.value_serializer)

    @property
    def dlq_topic_name(self) -> str:
        return self.dlq.get_topic_name()

    @property
    def topics(self) -> list[TopicT]:
        """Every topic the pipeline writes (to declare them up front): sinks, DLQ, shed."""
        # (a waiting gate sheds only under a control loop's load shedding: declared then)
        # (and one with a priority function: its low priorities may be shed then)
        shed = ([] if self.gate is None or (self.gate.on_limit != "shed"
                                            and self.gate.priority is None)
                else [self.gate.shed_topic_for(self.source_topic_name)])
        if self.keyed is not None and self.keyed.on_limit == "shed":  # a keyed limit's
            shed.append(self.keyed.shed_topic_for(self.source_topic_name))
        return [*self.sinks, self.dlq, *shed]

    def _priority_of(self, event: EventT[Any]) -> int:
        """The priority of a raw source event (or a batch record's ``BatchEvent``): its
        value decoded with the source's schema (raises if undecodable: the gate then does
        not shed it, it is dead-lettered)."""
        assert self.priority is not None
        return int(self.priority(self.schema_topic.schema.loads_value(self.app, event.message)))

    # -- pause / resume (an operator's, on every worker; see app.pause) ----------------------

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def pause(self, info: dict[str, Any] | None = None) -> None:
        """Hold the next event (unacked: nothing is committed past it) until :meth:`resume`."""
        self.paused_by = info or {}
        self._resumed.clear()

    async def wait_resumed(self) -> bool:
        """Until an operator's :meth:`resume` (at once if not paused), unless Faust stops the
        flow first (a rebalance or stop, see :mod:`.flow`): False then."""
        return await unless_flow_stops(self.app, self._resumed.wait())

    def resume(self) -> None:
        self.paused_by = None
        self._resumed.set()

    async def handle(self, event: EventT[Any]) -> None:
        """Decode, process (with retries), send; a failure goes to the DLQ with its reason."""
        tails = self._key_tails
        if tails is None:
            await self._handle(event)
            return
        # Registered before any await: events of a key start in the order they arrived.
        key = event.message.key
        previous = tails.get(key)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        tails[key] = mine
        try:
            if previous is not None:
                await asyncio.shield(previous)
            await self._handle(event)
        finally:
            mine.set_result(None)
            if tails.get(key) is mine:
                del tails[key]

    def decode(self, record: Any) -> tuple[Any, Any]:
        """A source record's (a Faust message's or a batch's raw record's) key and value,
        decoded with the source topic's schema (a raw side as it is)."""
        schema = self.schema_topic.schema
        key = record.key if self._raw_key else schema.loads_key(self.app, record)
        value = record.value if self._raw_value else schema.loads_value(self.app, record)
        return key, value

    async def _handle(self, event: EventT[Any]) -> None:
        stats = self.stats
        stats.consumed += 1
        try:
            key, value = self.decode(event.message)
        except Exception as exc:
            await self.dead_letter(event, Failure.now(exc, "decode", 0))
            return
        process, guard = self.process, self.downstream
        failure: Failure | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                if guard is not None:
                    result = await guard.run_unless(flow_stopped_event(self.app), process, value)
                else:  # no guard: called here, no coroutine of our own per event
                    result = process(value)
                    if type(result) not in PLAIN_RESULTS and inspect.isawaitable(result):
                        result = await result
                break
            except WaitAborted:
                await self.requeue(event)
                return
            except Exception as exc:
                failure = Failure.now(exc, "process", attempt,
                                      failure.first_failure if failure else None)
                if attempt > self.max_retries:
                    await self.dead_letter(event, failure)
                    return
                stats.retries += 1
                await asyncio.sleep(self.backoff(attempt))
        outputs = outputs_of(result)
        if not outputs:
            stats.filtered += 1
            return
        try:
            for output in outputs:
                for sink in self.sinks:
                    await sink.send(key=key, value=output)
                    stats.produced += 1
        except Exception as exc:
            # e.g. an output the sink's serializer refuses; retrying would not help.
            await self.dead_letter(event, Failure.now(exc, "sink", attempt))

    async def requeue(self, event: EventT[Any]) -> None:
        """Put the raw record back at the end of its source partition (then it is acked):
        the flow stopped while it waited for its dependency, and must not wait for it."""
        message = event.message
        await self.raw_source.send(key=message.key, value=message.value,
                                   partition=message.partition, key_serializer="raw",
                                   value_serializer="raw",
                                   headers=requeue_headers(message.headers))
        self.stats.requeued += 1
        log.info("pipeline %s: %s[%s]@%s requeued (the flow stopped while its dependency "
                 "held it)", self.name, message.topic, message.partition, message.offset)

    def dead_letter_headers(self, record: Any, failure: Failure) -> Headers:
        """A source record's (a Faust message's or a batch's raw record's) headers in the
        DLQ; the record is logged (:class:`DeadLetterLog`) and counted as dead-lettered."""
        self.dlq_log.record(f"{record.topic}[{record.partition}]@{record.offset}",
                            failure.error, failure.attempts)
        self.stats.dead_lettered += 1
        return dlq_headers(record.headers or [], pipeline=self.name, topic=record.topic,
                           partition=record.partition, offset=record.offset, failure=failure,
                           traceback_limit=self.settings.traceback_limit)

    async def dead_letter(self, event: EventT[Any], failure: Failure) -> None:
        message = event.message
        headers = self.dead_letter_headers(message, failure)
        await self.dlq.send(key=message.key, value=message.value, key_serializer="raw",
                            value_serializer="raw", headers=headers)
