"""``@rate_limit``: tokens are acquired before an event reaches the agent's body.

The gate is a stream *processor*: Faust runs processors inside ``async for`` before the value is
yielded, after the message is tracked as unacked. So

* ``on_limit="wait"``: awaiting the limiter in the processor pauses the stream; its buffer
  fills up to ``stream_buffer_maxsize`` and Faust stops fetching its partitions. The buffer never
  counts as full, so waiting never stalls the worker's other agents (see :mod:`.flow`). Nothing
  is dropped, and an offset is committed only once the body has moved past (acked) its event.
* ``on_limit="shed"``: the raw record goes to the shed topic with headers saying why, then the
  processor raises ``Skip`` (Faust acks it). Faust flushes the producer before it commits, so a
  shed record is in the shed topic before its offset is committed.

The processor is a plain function: when the limiter grants at once no coroutine is made.
``stream.take(n, within)`` / ``stream.take_events`` are wrapped so a batch acquires its permits
at once, just before it is handed to the body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import faust
from faust.exceptions import Skip
from faust.types import AppT, EventT, StreamT, TopicT

from faust_backpressure.agents.flow import unless_flow_stops
from faust_backpressure.agents.gate_base import AgentFunT, GateBase, RateLimitGateStats
from faust_backpressure.agents.sensor import notify_sensors
from faust_backpressure.config import OnLimit
from faust_backpressure.faust_seam import TakeEvents, stream_processors, wrap_stream_batches
from faust_backpressure.limiters import RateLimitingStrategy

__all__ = ["PRIORITY_SHED_CAUSE", "CostFunction", "PriorityFunction", "RateLimitGate",
           "rate_limited"]

log = logging.getLogger(__name__)

#: Permits one event costs (e.g. by size: ``lambda e: 1 + len(e.message.value or b"") // 1024``).
CostFunction = Callable[[EventT[Any]], int]
#: An event's priority, higher is more important (for priority-based load shedding).
PriorityFunction = Callable[[EventT[Any]], int]
Event = EventT[Any]
#: Why an event shed for its priority was shed (its ``bp.shed.reason`` ends with it).
PRIORITY_SHED_CAUSE = "critical downstream lag"


class RateLimitGate(GateBase):
    """Admits events of an agent's streams through one limiter; counts waits and sheds."""

    decorator = "@rate_limit"

    def __init__(self, app: AppT, limiter: RateLimitingStrategy, *, on_limit: OnLimit = "wait",
                 cost: CostFunction | None = None, shed_topic: str | TopicT | None = None,
                 shed_topic_suffix: str = "-shed", name: str | None = None,
                 agent_name: str | None = None,
                 priority: PriorityFunction | None = None) -> None:
        if on_limit not in ("wait", "shed"):
            raise ValueError(f"on_limit must be 'wait' or 'shed', got {on_limit!r}")
        super().__init__(app, name or limiter.name, shed_topic=shed_topic,
                         shed_topic_suffix=shed_topic_suffix, agent_name=agent_name or "")
        self.limiter = limiter
        self.on_limit = on_limit
        self.cost = cost
        #: Set by a control loop under critical lag: refused events are shed even in "wait".
        self.shed_now = False
        #: The events' priority (higher is more important), or None: no priority shedding.
        self.priority = priority
        #: Set by a control loop under critical lag (see ``control.shedding``): events whose
        #: priority is below it go to the shed topic before asking for permits; the others
        #: wait as usual. ``None``: no priority shedding now.
        self.shed_threshold: int | None = None
        #: Of ``shed``: events shed because their priority was below the threshold.
        self.shed_by_priority = 0

    def stats(self) -> RateLimitGateStats:
        return RateLimitGateStats(**self.shared_stats(), limiter=self.name,
                                  shed_by_priority=self.shed_by_priority,
                                  shed_threshold=self.shed_threshold)

    @property
    def capacity(self) -> float:
        """The most permits one request to the limiter may ask for (larger ones are split)."""
        return self.limiter.max_permits

    # -- installing on a stream --------------------------------------------------------------

    def _install(self, stream: StreamT[Any]) -> None:
        processor = self._processor(stream)
        stream.add_processor(processor)
        wrap_stream_batches(stream, lambda take_events: self._batched(stream, processor,
                                                                      take_events))

    def _permits(self, event: Event | None) -> int:
        if self.cost is None or event is None:
            return 1
        permits = int(self.cost(event))
        # An event dearer than the whole bucket could never pass: it costs the whole bucket.
        return permits if permits <= self.capacity else int(self.capacity)

    def _processor(self, stream: StreamT[Any]) -> Callable[[Any], Any]:
        try_acquire, cost = self.limiter.try_acquire, self.cost

        def admit(value: Any) -> Any:
            if self.shed_threshold is not None and self.priority is not None:
                low = self.low_priority(stream.current_event)
                if low is not None:
                    return self._shed(stream.current_event, 0, low)
            # (without a cost function the event is not even looked at)
            permits = 1 if cost is None else self._permits(stream.current_event)
            if permits < 1 or try_acquire(permits):
                return value
            if self.shedding:
                return self._shed(stream.current_event, permits)
            return self._wait(value, permits)
        return admit

    @property
    def shedding(self) -> bool:
        """Whether a refused event goes to the shed topic now (else it waits)."""
        return self.on_limit == "shed" or self.shed_now

    # -- priority shedding ------------------------------------------------------------------

    def low_priority(self, event: Event | None) -> tuple[int, int] | None:
        """The event's priority and the threshold, if it is below (it is shed), else None.

        An event whose priority cannot be computed (e.g. undecodable) is not shed: it goes
        on, to be processed or dead-lettered as usual."""
        threshold, priority = self.shed_threshold, self.priority
        if event is None or threshold is None or priority is None:
            return None
        try:
            value = int(priority(event))
        except Exception as exc:  # broad: the user's priority function failed on this event
            log.debug("%s: no priority for an event (%r): not shed", self.agent_name, exc)
            return None
        return (value, threshold) if value < threshold else None

    # -- slow paths --------------------------------------------------------------------------

    async def _wait(self, value: Any, permits: int) -> Any:
        """``value`` once ``permits`` were acquired, or once Faust stops the flow (a
        rebalance or shutdown, see :mod:`.flow`): then it goes on without its permits, counted
        in ``overdrafts``. At most one event or batch per gated stream per rebalance exceeds
        the limit; nothing is dropped or skipped.
        """
        started = time.monotonic()
        if await self.counted_wait(unless_flow_stops(self.app, self.acquire(permits))):
            notify_sensors(self.app, "on_rate_limit_wait", self.agent_name, self.name,
                           permits, time.monotonic() - started)
            return value
        notify_sensors(self.app, "on_rate_limit_overdraft", self.agent_name, self.name,
                       permits)
        log.info("%s: flow stopped while waiting for %d permit(s) of %s; the event goes "
                 "on without them", self.agent_name, permits, self.name)
        return value

    async def acquire(self, permits: int) -> None:
        """Wait for ``permits``, in chunks no larger than the limiter's capacity."""
        while permits > 0:
            chunk = permits if permits <= self.capacity else int(self.capacity)
            await self.limiter.acquire(chunk)
            permits -= chunk

    async def acquire_by_one(self, permits: int) -> None:
        """A permit at a time (a batch's, once its cost was refused at once): a distributed
        limiter's local lease may never hold a whole batch, so ``acquire(len(batch))`` could
        wait for ever (docs/batching.md, "What is built"); waiting, the limiter's pace
        dominates."""
        acquire = self.limiter.acquire
        for _ in range(permits):
            await acquire(1)

    async def _send_to_shed(self, event: Event, permits: int,
                            low: tuple[int, int] | None = None) -> None:
        """``low``: shed for its priority (priority, threshold), not for refused permits."""
        topic = await self.send_to_shed(
            event, permits, PRIORITY_SHED_CAUSE if low is not None else
            "" if self.on_limit == "shed" else "load shedding: critical downstream lag", low)
        if low is not None:
            self.shed_by_priority += 1
        notify_sensors(self.app, "on_rate_limit_shed", self.agent_name, self.name,
                       topic.get_topic_name(), permits)

    async def _shed(self, event: Event | None, permits: int,
                    low: tuple[int, int] | None = None) -> Any:
        if event is None:  # not from a topic (e.g. agent.send to a channel): nothing to shed to
            await self.acquire(permits)  # (a low priority needs an event: never None then)
            return None
        await self._send_to_shed(event, permits, low=low)
        raise Skip()

    def _batched(self, stream: StreamT[Any], processor: Callable[[Any], Any],
                 take_events: TakeEvents) -> TakeEvents:
        """``take_events`` that acquires for each whole batch instead of per event."""

        async def batched(max_: int, within: Any) -> AsyncIterator[Sequence[Event]]:
            processors = stream_processors(stream)
            removed = processor in processors
            if removed:
                processors.remove(processor)
            try:
                async for events in take_events(max_, within):
                    if self.shed_threshold is not None and self.priority is not None:
                        events = await self._shed_low_of(events)
                        if not events:
                            continue
                    permits = (len(events) if self.cost is None
                               else sum(self._permits(e) for e in events))
                    granted = permits < 1 or (
                        permits <= self.capacity and self.limiter.try_acquire(permits))
                    if granted:
                        yield events
                    elif not self.shedding:
                        yield await self._wait(events, permits)
                    else:
                        admitted = await self._shed_some(events)
                        if admitted:
                            yield admitted
            finally:
                if removed:
                    processors.insert(0, processor)

        return batched

    async def _shed_low_of(self, events: Sequence[Event]) -> Sequence[Event]:
        """Priority shedding of a batch: the low-priority events shed, the others kept."""
        kept: list[Event] = []
        for event in events:
            low = self.low_priority(event)
            if low is None:
                kept.append(event)
            else:
                await self._send_to_shed(event, 0, low=low)
        return kept

    async def _shed_some(self, events: Sequence[Event]) -> list[Event]:
        """Shed mode, batch refused: admit events while tokens last, shed the others."""
        admitted: list[Event] = []
        for event in events:
            permits = self._permits(event)
            if permits < 1 or self.limiter.try_acquire(permits):
                admitted.append(event)
            else:
                await self._send_to_shed(event, permits)
        return admitted


def rate_limited(app: faust.App, limiter: RateLimitingStrategy, **options: Any
                 ) -> Callable[[AgentFunT], AgentFunT]:
    """``@app.agent(topic)`` over ``@rate_limited(app, limiter, on_limit=...)``."""
    return RateLimitGate(app, limiter, **options)

