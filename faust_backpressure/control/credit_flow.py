"""Credit-based flow control between two stages, fed by the downstream group's lag.

``bp.credit_flow(window, downstream_group=..., downstream_topics=[...])`` returns a
:class:`~faust_backpressure.control.credits.CreditBasedFlowController` to use as the upstream
stage's limiter (``bp.rate_limit(...)`` or ``bp.pipeline(limiter=...)``). A Faust timer probes
the downstream group's lag every ``interval`` seconds and announces it: the upstream sends at
most ``window`` records more than the downstream has processed, counting as outstanding its own
sends that the probe's offsets may not hold yet. No credit comes before the first measurement.
The window is per worker (the stage's is ``window`` x the members of the app's consumer group),
unless ``shared=True``: then it is the stage's, split among those members (asked of the broker
at each announcement; no credit before the first count). With a ``control_loop`` it shrinks
with the loop's decisions (window x decided rate / baseline).

Example::

    credits = bp.credit_flow(10_000, downstream_group="billing",
                             downstream_topics=["orders-priced"], interval=1.0)
    bp.pipeline("price", source="orders", sink="orders-priced", process=price,
                limiter=credits)
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import faust
from faust.types import AppT

from faust_backpressure.control.credits import CreditBasedFlowController
from faust_backpressure.control.probe import LagProbe, close_probes_on_stop
from faust_backpressure.limiters.base import check_rate
from faust_backpressure.wire.kafka_clients import KafkaClientSettings

__all__ = ["CreditFlow", "SinkSends"]

log = logging.getLogger(__name__)


class SinkSends(faust.Sensor):
    """This worker's records in the downstream topics that the downstream group has not
    processed yet: sends still in flight, and acked ones at or past the group's committed
    offset (their offsets from the acks). Exact whatever the timing: no other worker's
    records, and no moment of measurement, enter into it."""

    def __init__(self, topics: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.topics = frozenset(topics)
        self.initiated = self.finished = 0
        #: ``(topic, partition) -> offsets of acked records``, ascending (one producer's
        #: acks of one partition come in order).
        self.acked: dict[tuple[str, int], collections.deque[int]] = {}

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int,
                          valsize: int) -> Any:
        if topic in self.topics:
            self.initiated += 1
            return True
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        if state is True:
            self.finished += 1
            tp = (metadata.topic, metadata.partition)
            self.acked.setdefault(tp, collections.deque()).append(metadata.offset)

    def on_batch_sent(self, counts: Mapping[str, int]) -> None:
        """A batch pipeline's sends (``counts`` per topic): they skip Faust's send hooks."""
        self.initiated += sum(n for topic, n in counts.items() if topic in self.topics)

    def on_batch_acked(self, metadata: Sequence[Any]) -> None:
        """A batch's acks (every send of it, DLQ included: other topics are not counted)."""
        for meta in metadata:
            if meta.topic in self.topics:
                self.on_send_completed(None, True, meta)

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        if state is True:  # never in the log: not outstanding either
            self.finished += 1

    def outstanding(self, committed: Mapping[tuple[str, int], int]) -> int:
        """Records sent and not yet processed, given the group's committed offsets."""
        total = self.initiated - self.finished
        for tp, offsets in self.acked.items():
            done = committed.get(tp, 0)
            while offsets and offsets[0] < done:
                offsets.popleft()
            total += len(offsets)
        return total


class CreditFlow:
    """One credit window and the timer that announces the downstream backlog to it."""

    def __init__(self, app: AppT, *, kafka: KafkaClientSettings | str, window: int,
                 downstream_group: str,
                 downstream_topics: Sequence[str], interval: float, name: str,
                 shared: bool = False, scale: Callable[[], float] | None = None) -> None:
        """``shared``: ``window`` is the stage's, split among the live workers of the app's
        group (else each worker's); ``scale``: a share of the window allowed now, in (0, 1]
        (the control loop's)."""
        interval = check_rate("interval", interval)
        self.name = name
        self.group = str(app.conf.id)  # the stage's workers: the app's consumer group
        self.shared = shared
        self.scale = scale
        #: The last member count the broker gave; None until it gives one.
        self.members: int | None = None
        self.controller = CreditBasedFlowController(window, initial_credits=0,
                                                    per_worker=not shared)
        self.probe = LagProbe(kafka, downstream_group, downstream_topics)
        self.sends = SinkSends(downstream_topics)
        app.sensors.add(self.sends)
        self.announcements = 0
        app.timer(interval, name=f"fbp_credits_{name}")(self.announce)
        close_probes_on_stop(app, lambda: [self.probe])

    async def announce(self) -> None:
        finished = self.sends.finished  # before the probe: these are in its offsets
        try:
            backlog = await self.probe.lag()
        except Exception as exc:  # no measurement, no credit: the upstream waits
            log.warning("credit flow: downstream lag not measured: %r", exc)
            return
        members = await self.probe.members(self.group)
        if members and members != self.members:  # None (not said), 0 (between generations)
            log.info("credit flow %s: %d member(s) share the stage", self.name, members)
            self.members = members
        if self.members is None and self.shared:
            # Counted as one, every worker would take the whole stage's window.
            log.info("credit flow %s: no member count yet, no credit", self.name)
            return
        try:
            scale = 1.0 if self.scale is None else max(float(self.scale()), 0.0)
        except Exception as exc:  # a broken callable: the whole window
            log.warning("credit flow: scale not read: %r", exc)
            scale = 1.0
        # A worker not yet counted (per-worker windows) counts as one: less credit, not more.
        self.controller.announce(backlog, members=self.members or 1, scale=scale,
                                 in_flight=self.sends.initiated - finished,
                                 sent=self.sends.outstanding(self.probe.committed))
        self.announcements += 1
