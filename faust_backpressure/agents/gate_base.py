"""What ``@bp.rate_limit`` and ``@bp.rate_limit_per_key`` share.

A gate is installed on each stream of its agent (once: a restarted actor reuses its stream),
makes the stream's buffer never block the worker's conductor (see :mod:`.flow`), resolves the
topic its refused events are shed to, and counts waits, sheds and overdrafts (events let
through without permits because Faust stopped the flow while they waited, see
:func:`.flow.unless_flow_stops`). Each gate adds its own processor and counters.
"""

from __future__ import annotations

from typing import Any

from faust.types import AppT, StreamT, TopicT

from faust_backpressure.agents.decorate import AgentFunT, decorate_agent
from faust_backpressure.agents.flow import never_block_conductor
from faust_backpressure.faust_seam import set_stream_gate, stream_gate
from faust_backpressure.wire.kafka_clients import raw_topic

__all__ = ["GateBase"]


class GateBase:
    """The part of a gate on an agent's streams that does not depend on how it limits."""

    #: The decorator, as errors name it.
    decorator = "@gate"

    def __init__(self, app: AppT, name: str, *, shed_topic: str | TopicT | None,
                 shed_topic_suffix: str, agent_name: str = "") -> None:
        self.app = app
        self.name = name
        #: The gated agent, for logs and shed headers (the decorated function's name if "").
        self.agent_name = agent_name
        self._shed_topic_spec = shed_topic
        self._shed_topic_suffix = shed_topic_suffix
        self._shed_topics: dict[str, TopicT] = {}
        # counters (this worker, since start)
        self.waits = 0
        self.shed = 0
        #: Events let through without permits because Faust stopped the flow while they waited.
        self.overdrafts = 0

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

    def __call__(self, fun: AgentFunT) -> AgentFunT:
        """Decorate an agent function (put it *under* ``@app.agent``)."""
        return decorate_agent(self, fun, f"{self.decorator}({self.name!r})")
