"""What ``@bp.rate_limit`` and ``@bp.rate_limit_per_key`` share.

A gate is installed on each stream of its agent (once: a restarted actor reuses its stream),
makes the stream's buffer never block the worker's conductor (see :mod:`.flow`), resolves the
topic its refused events are shed to, and counts waits, sheds and overdrafts
(:meth:`GateBase.counted_wait`). Each gate adds its own processor and counters.

Their ``stats()`` are one type, :class:`GateStats` (the fields every gate has), extended by
:class:`RateLimitGateStats` and :class:`KeyedGateStats`. The JSON view shows their fields as
they are, and a field made with :func:`counter` or :func:`gauge` is a Prometheus metric too
(``<gate|keyed>_<field>[_total]``), so a new counter is one field here: in :class:`GateStats`
and :meth:`GateBase.shared_stats` for every gate (a keyed gate's counters are also in each
worker's published status, with their rates: :data:`KEYED_COUNTERS`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from faust.types import AgentT, AppT, EventT, StreamT, TopicT

from faust_backpressure.agents.flow import never_block_conductor
from faust_backpressure.agents.headers import Headers, shed_headers
from faust_backpressure.faust_seam import set_stream_gate, stream_gate
from faust_backpressure.limiters.base import counter, gauge
from faust_backpressure.wire.kafka_clients import raw_topic

__all__ = ["KEYED_COUNTERS", "KEYED_COUNTS", "GateBase", "GateStats", "KeyedGateStats",
           "RateLimitGateStats", "counter", "gauge"]

log = logging.getLogger(__name__)

AgentFunT = TypeVar("AgentFunT", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class GateStats:
    """What every gate's ``stats()`` reports (this worker, since start); each gate's own type
    adds its fields. Metrics are labelled by agent and limit, never by key."""

    agent: str
    on_limit: str
    waits: int = field(metadata=counter(
        "Events that waited for permits (a keyed limit: for their key's next token)."))
    shed: int = field(metadata=counter("Events sent to the shed topic."))
    overdrafts: int = field(metadata=counter(
        "Events let through without permits when a rebalance or stop stopped the flow."))


@dataclass(frozen=True, slots=True)
class RateLimitGateStats(GateStats):
    """A :class:`~faust_backpressure.agents.RateLimitGate`'s. ``limiter`` is the gate's name
    (the JSON view shows its limiter's label there)."""

    limiter: str
    shed_by_priority: int = field(metadata=counter(
        "Events shed because their priority was below the shed level."))
    #: The priority below which events are shed now (a control loop's), or None.
    shed_threshold: int | None


@dataclass(frozen=True, slots=True)
class KeyedGateStats(GateStats):
    """A :class:`~faust_backpressure.agents.KeyedRateLimitGate`'s."""

    limit: str
    rate: float = field(metadata=gauge("Default tokens per second of each key."))
    burst: float = field(metadata=gauge("Default burst capacity of each key."))
    overrides: int = field(metadata=gauge("Keys with their own limits (operator or stored)."))
    keys_tracked: int = field(metadata=gauge("Keys whose bucket is not full (stored)."))
    keys_limited: int = field(metadata=gauge("Keys refused whose next token has not come yet."))
    deferred_backlog: int = field(metadata=gauge("Deferred records held until due."))
    admitted: int = field(metadata=counter("Events admitted at once."))
    deferred: int = field(metadata=counter("Events sent to the deferral topic."))
    readmitted: int = field(metadata=counter("Deferred events handed back when due."))
    held_back: int = field(metadata=counter(
        "Deferred events back before they were due (their key's earlier ones came back late), "
        "held in the deferral agent again."))
    #: The keys refused most lately: key (as text), type, refusals, own limits (or None).
    top_limited: list[dict[str, Any]]


#: A keyed limit's counters: each worker publishes them and their rates (``status``).
KEYED_COUNTERS = tuple(f.name for f in fields(KeyedGateStats)
                       if f.metadata.get("metric") == "counter")
#: Its metrics that are counts (the counters and the state's gauges; not rate and burst, its
#: settings), summed over the workers.
KEYED_COUNTS = tuple(f.name for f in fields(KeyedGateStats)
                     if "metric" in f.metadata and f.name not in ("rate", "burst"))


class GateBase:
    """The part of a gate on an agent's streams that does not depend on how it limits."""

    #: The decorator, as errors name it.
    decorator = "@gate"
    #: What a refused event does (each gate's choices).
    on_limit: str

    def __init__(self, app: AppT, name: str, *, shed_topic: str | TopicT | None,
                 shed_topic_suffix: str, agent_name: str = "") -> None:
        self.app = app
        self.name = name
        #: The gated agent, for logs and shed headers (the decorated function's name if "").
        self.agent_name = agent_name
        self._shed_topic_spec = shed_topic
        self._shed_topic_suffix = shed_topic_suffix
        self._shed_topics: dict[str, TopicT] = {}
        self._declared: set[str] = set()  # source topics whose shed topic was declared
        # counters (this worker, since start)
        self.waits = 0
        self.shed = 0
        #: Events let through without permits because Faust stopped the flow while they waited.
        self.overdrafts = 0

    def stats(self) -> GateStats:
        """This gate's counters (its own type's fields too)."""
        raise NotImplementedError

    def shared_stats(self) -> dict[str, Any]:
        """The :class:`GateStats` fields, for a gate's ``stats()`` to extend."""
        return {"agent": self.agent_name, "on_limit": self.on_limit, "waits": self.waits,
                "shed": self.shed, "overdrafts": self.overdrafts}

    async def counted_wait(self, wait: Awaitable[bool]) -> bool:
        """An event's ``wait``, counted: True if it completed, False if Faust stopped the
        flow first (see :func:`.flow.unless_flow_stops`): the event goes on without what it
        waited for, an overdraft."""
        self.waits += 1
        if await wait:
            return True
        self.overdrafts += 1
        return False

    def install(self, stream: StreamT[Any]) -> None:
        """Add the gate to ``stream`` (idempotent: a restarted actor reuses its stream)."""
        if stream_gate(stream) is self:
            return
        never_block_conductor(self.app, stream)
        self._install(stream)
        set_stream_gate(stream, self)

    def _install(self, stream: StreamT[Any]) -> None:
        """The gate's own part of :meth:`install` (its processor)."""
        raise NotImplementedError

    def shed_topic_for(self, source: str) -> TopicT:
        """The topic events of ``source`` are shed to."""
        topic = self._shed_topics.get(source)
        if topic is None:
            spec = self._shed_topic_spec
            if spec is None:
                spec = source + self._shed_topic_suffix
            topic = spec if not isinstance(spec, str) else raw_topic(self.app, spec)
            self._shed_topics[source] = topic
        return topic

    def shed_headers_of(self, record: Any, permits: int, cause: str,
                        low: tuple[int, int] | None = None) -> Headers:
        """A shed record's headers (``record``: a Faust message or a batch's raw record);
        ``low``: shed for its priority (priority, threshold), not for refused permits."""
        return shed_headers(record.headers or [], agent=self.agent_name, limiter=self.name,
                            topic=record.topic, partition=record.partition,
                            offset=record.offset, permits=permits, cause=cause,
                            priority=None if low is None else low[0],
                            threshold=None if low is None else low[1])

    async def send_to_shed(self, event: EventT[Any], permits: int, cause: str,
                           low: tuple[int, int] | None = None) -> TopicT:
        """``event``'s raw record to its shed topic with why (:meth:`shed_headers_of`);
        returns the topic."""
        message = event.message
        topic = self.shed_topic_for(message.topic)
        if message.topic not in self._declared:
            # Declared with the app's partition count, not auto-created with the broker's 1.
            self._declared.add(message.topic)
            try:
                await topic.maybe_declare()
            except Exception as exc:  # e.g. no Create ACL: the send below may still work
                log.warning("%s: could not declare shed topic %s: %r", self.agent_name,
                            topic.get_topic_name(), exc)
        await topic.send(key=message.key, value=message.value, key_serializer="raw",
                         value_serializer="raw",
                         headers=self.shed_headers_of(message, permits, cause, low))
        self.shed += 1
        return topic

    def __call__(self, fun: AgentFunT) -> AgentFunT:
        """Decorate an agent function (put it *under* ``@app.agent``): ``fun`` installing the
        gate on its stream."""
        if isinstance(fun, AgentT):
            # Above @app.agent the agent has already captured the undecorated function: it
            # would run unlimited without a word.
            raise TypeError(
                f"{self.decorator}({self.name!r}) is above @app.agent on {fun.name!r}: put it "
                "under @app.agent (the agent would run unlimited)")
        if not self.agent_name:
            self.agent_name = getattr(fun, "__qualname__", repr(fun))

        @functools.wraps(fun)
        def agent(stream: StreamT[Any], *args: Any, **kwargs: Any) -> Any:
            self.install(stream)
            return fun(stream, *args, **kwargs)

        return agent  # type: ignore[return-value]
