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
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from faust.types import AgentT, AppT, EventT, StreamT, TopicT

from faust_backpressure.agents.headers import Failure, dlq_headers
from faust_backpressure.agents.keyed import KeyedRateLimitGate
from faust_backpressure.agents.rate_limit import RateLimitGate
from faust_backpressure.config import BackpressureSettings, OnLimit
from faust_backpressure.limiters import RateLimitingStrategy
from faust_backpressure.tables.kafka import raw_topic

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


def _outputs(result: Any) -> Sequence[Any]:
    """``None`` filters; a list, tuple or generator is several values; anything else is one."""
    if result is None:
        return ()
    if isinstance(result, (list, tuple)):
        return result
    if isinstance(result, types.GeneratorType):
        return list(result)
    return (result,)


class Pipeline:
    """One declared pipeline: its topics, its agent and its counters.

    Built by ``Backpressure.pipeline(...)``; ``process(value)`` may be sync or async.
    """

    def __init__(self, app: AppT, name: str, *, source: TopicSpec,
                 sink: TopicSpec | Sequence[TopicSpec] | None, process: Callable[[Any], Any],
                 dlq: TopicSpec | None = None, limiter: RateLimitingStrategy | None = None,
                 on_limit: OnLimit = "wait", max_retries: int | None = None,
                 retry_backoff: float | Backoff | None = None, concurrency: int = 1,
                 settings: BackpressureSettings | None = None,
                 keyed: KeyedRateLimitGate | None = None) -> None:
        settings = settings or BackpressureSettings()
        self.app = app
        self.name = name
        self.settings = settings
        self.max_retries = settings.max_retries if max_retries is None else max_retries
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {self.max_retries!r}")
        if retry_backoff is None:
            retry_backoff = settings.retry_backoff
        self.backoff: Backoff = (retry_backoff if callable(retry_backoff) else
                                 exponential_backoff(retry_backoff,
                                                     max(retry_backoff,
                                                         settings.retry_backoff_max)))
        self.process = process
        self.stats = PipelineStats()
        # The declared source carries the schema; the agent reads the same topic as raw bytes.
        self.schema_topic = self._topic(source)
        self.source_topic_name = self.schema_topic.get_topic_name()
        self.raw_source = raw_topic(app, self.source_topic_name)
        sinks: Iterable[TopicSpec] = (
            () if sink is None else [sink] if isinstance(sink, (str, TopicT)) else sink)
        self.sinks: list[TopicT] = [self._topic(s, like=self.schema_topic) for s in sinks]
        dlq_name = dlq if dlq is not None else self.source_topic_name + settings.dlq_topic_suffix
        # a DLQ declared by name is ours: internal_replication_factor (None: Faust's default)
        self.dlq = (raw_topic(app, dlq_name, replicas=settings.internal_replication_factor)
                    if isinstance(dlq_name, str) else dlq_name)
        self.gate = (None if limiter is None else
                     RateLimitGate(app, limiter, on_limit=on_limit,
                                   shed_topic_suffix=settings.shed_topic_suffix,
                                   agent_name=f"pipeline:{name}"))
        fun = self._run if self.gate is None else self.gate(self._run)
        self.keyed = keyed
        if keyed is not None:  # a keyed limit as the limiter: key = the record's key by default
            keyed.agent_name = keyed.agent_name or f"pipeline:{name}"
            fun = keyed(fun)
        self.agent: AgentT[Any] = app.agent(self.raw_source, name=f"bp-pipeline-{name}",
                                            concurrency=concurrency)(fun)

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
        """Every topic the pipeline writes (to declare them up front)."""
        return [*self.sinks, self.dlq]

    # -- the agent ---------------------------------------------------------------------------

    async def _run(self, stream: StreamT[Any]) -> None:
        async for event in stream.events():
            await self.handle(event)

    async def handle(self, event: EventT[Any]) -> None:
        """Decode, process (with retries), send; a failure goes to the DLQ with its reason."""
        stats = self.stats
        stats.consumed += 1
        message = event.message
        schema = self.schema_topic.schema
        try:
            key = schema.loads_key(self.app, message)
            value = schema.loads_value(self.app, message)
        except Exception as exc:
            await self.dead_letter(event, Failure.now(exc, "decode", 0))
            return
        failure: Failure | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                result = self.process(value)
                if inspect.isawaitable(result):
                    result = await result
                break
            except Exception as exc:
                failure = Failure.now(exc, "process", attempt,
                                      failure.first_failure if failure else None)
                if attempt > self.max_retries:
                    await self.dead_letter(event, failure)
                    return
                stats.retries += 1
                await asyncio.sleep(self.backoff(attempt))
        outputs = _outputs(result)
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

    async def dead_letter(self, event: EventT[Any], failure: Failure) -> None:
        message = event.message
        log.warning("pipeline %s: %s[%s]@%s -> DLQ after %d attempt(s): %s: %s", self.name,
                    message.topic, message.partition, message.offset, failure.attempts,
                    type(failure.error).__name__, failure.error)
        await self.dlq.send(
            key=message.key, value=message.value,
            key_serializer="raw", value_serializer="raw",
            headers=dlq_headers(message.headers, pipeline=self.name, topic=message.topic,
                                partition=message.partition, offset=message.offset,
                                failure=failure,
                                traceback_limit=self.settings.traceback_limit))
        self.stats.dead_lettered += 1
