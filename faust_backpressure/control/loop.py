"""The backpressure control loop: a timer samples pressure, an agent decides the limiter's rate.

On every worker a Faust timer samples, once per ``interval``, the downstream consumer group's
lag (end offsets minus committed offsets of ``downstream_topics``), the limiter's utilization
and the CPU, and publishes the sample as an event on the app's pressure topic, keyed by the
limiter's name. The agent on that topic therefore sees every worker's samples of one limiter
on one worker (the owner of the key's partition), which alone runs the
:class:`~faust_backpressure.control.policy.BackpressureController` and applies its rate with
``limiter.update_rate_limit``; a distributed limiter carries the new rate to every worker.
See ``docs/control-loop.md``.

Example::

    loop = bp.control_loop("orders-api", downstream_group="billing",
                           downstream_topics=["orders-priced"], interval=5.0)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import faust
import psutil
from faust.types import AppT

from faust_backpressure.agents.rate_limit import RateLimitGate
from faust_backpressure.config import ControlPolicy
from faust_backpressure.control.policy import (
    BackpressureController,
    BackpressureSeverity,
    BackpressureThresholds,
    PressureDecision,
    PressureSample,
)
from faust_backpressure.control.probe import LagProbe, close_probes_on_stop
from faust_backpressure.faust_seam import install, mark_control_topic, send_control
from faust_backpressure.limiters import RateLimitingStrategy
from faust_backpressure.limiters.base import check_rate
from faust_backpressure.tables.kafka import KafkaClientSettings, raw_topic

__all__ = ["CONTROL_TABLE", "ControlLoop", "ControlLoops", "WorkerSample"]

CONTROL_TABLE = "fbp-control"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerSample:
    """What one worker saw of one limiter at ``at`` (its wall clock): the pressure event."""

    limiter: str
    worker: str
    at: float
    lag: int
    utilization: float
    cpu: float
    #: The downstream group's committed offsets summed (its processed count); absent from
    #: events of older versions.
    processed: int | None = None

    def encode(self) -> bytes:
        data: dict[str, Any] = {"limiter": self.limiter, "worker": self.worker, "at": self.at,
                                "lag": self.lag, "utilization": self.utilization,
                                "cpu": self.cpu}
        if self.processed is not None:
            data["processed"] = self.processed
        return json.dumps(data).encode()

    @classmethod
    def decode(cls, raw: bytes) -> WorkerSample:
        data = json.loads(raw)
        processed = data.get("processed")
        return cls(limiter=str(data["limiter"]), worker=str(data["worker"]),
                   at=float(data["at"]), lag=int(data["lag"]),
                   utilization=float(data["utilization"]), cpu=float(data["cpu"]),
                   processed=None if processed is None else int(processed))


class ControlLoop:
    """One limiter under control: its probe, its controller, what it decided."""

    def __init__(self, loops: ControlLoops, limiter: RateLimitingStrategy, *,
                 downstream_group: str, downstream_topics: Sequence[str],
                 interval: float, thresholds: BackpressureThresholds | None = None,
                 baseline_rate: float | None = None, name: str | None = None,
                 shed_on_critical: bool = False,
                 gates: Callable[[], Iterable[RateLimitGate]] = tuple,
                 policy: ControlPolicy = "setpoint") -> None:
        self.limiter = limiter
        self.name = name or limiter.name
        self.interval = check_rate("interval", interval)
        self.probe = LagProbe(loops.kafka, downstream_group, downstream_topics)
        self.controller = BackpressureController(
            baseline_rate if baseline_rate is not None else limiter.current_rate_limit,
            thresholds, policy=policy, interval=self.interval)
        self.shed_on_critical = shed_on_critical
        #: This worker's gates (all of them; those on this limiter are picked at each sample).
        self.gates = gates
        self.samples: dict[str, WorkerSample] = {}  # latest per worker (on the decider)
        self.decisions: list[PressureDecision] = []
        self.last_decision: PressureDecision | None = None
        self.last_sample: WorkerSample | None = None  # this worker's latest
        self._decided_at = 0.0

    async def sample(self, worker: str) -> WorkerSample:
        """This worker's view, now."""
        lag, processed = await self.probe.measure()
        self.last_sample = WorkerSample(
            limiter=self.name, worker=worker, at=time.time(), lag=lag,
            utilization=float(self.limiter.current_utilization),
            cpu=psutil.cpu_percent(interval=None) / 100.0, processed=processed)
        if self.shed_on_critical:  # every worker sees the same lag: each decides for itself
            shed = self.last_sample.lag > self.controller.thresholds.critical_lag
            for gate in self.gates():
                if gate.limiter is not self.limiter:
                    continue
                if gate.shed_now != shed:
                    log.warning("limiter %s: %s shedding (lag %d)", self.name,
                                "start" if shed else "stop", self.last_sample.lag)
                gate.shed_now = shed
        return self.last_sample

    def observe(self, sample: WorkerSample, now: float) -> PressureDecision | None:
        """A worker's sample arrived; decide at most once per interval (on the decider)."""
        self.samples[sample.worker] = sample
        if now - self._decided_at < self.interval * 0.9:
            return None
        fresh = [s for s in self.samples.values() if s.at >= sample.at - 3 * self.interval]
        # Committed offsets only grow: the largest count is the latest. Timed by the
        # decider's clock (``now``), so that workers' clocks need not agree.
        counts = [s.processed for s in fresh if s.processed is not None]
        decision = self.controller.decide(PressureSample(
            lag=max(s.lag for s in fresh),
            utilization=max(s.utilization for s in fresh),
            cpu=max(s.cpu for s in fresh),
            processed=max(counts) if counts else None, at=now if counts else None))
        self._decided_at = now
        previous, self.last_decision = self.last_decision, decision
        self.decisions.append(decision)
        if decision.rate != self.limiter.current_rate_limit:
            self.limiter.update_rate_limit(decision.rate)
        if previous is None or previous.severity != decision.severity:
            level = logging.WARNING if decision.severity >= BackpressureSeverity.CRITICAL \
                else logging.INFO
            log.log(level, "limiter %s: %s, rate %.1f/s (%s)", self.name,
                    decision.severity.name, decision.rate, decision.reason)
        return decision


class ControlLoops:
    """The app's control loops, its pressure topic, sampling timer and deciding agent."""

    def __init__(self, app: AppT, *, kafka: KafkaClientSettings | str) -> None:
        self.app = app
        self.kafka = kafka
        self.loops: dict[str, ControlLoop] = {}
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        # internal: Faust creates it before subscribing.
        partitions = int(app.conf.topic_partitions)
        self.pressure_topic = raw_topic(app, f"{app.conf.id}-fbp-pressure", internal=True,
                                        partitions=partitions)
        # The deciding worker's controller state, so that a successor carries on (an
        # emergency survives a fail-over). Co-partitioned with the pressure topic: written
        # by the agent of the partition that the limiter's samples land on.
        self.table = app.Table(CONTROL_TABLE, default=None, key_type=str, value_type=str,
                               partitions=partitions)
        # Samples and the decider's state are control traffic: outside every transaction.
        install(app)
        mark_control_topic(app, self.table.changelog_topic.get_topic_name())
        self._stored: dict[str, str] = {}  # what this worker last wrote, per limiter
        self.published = 0
        self.rejected = 0

        async def fbp_pressure_control(stream: faust.StreamT[bytes]) -> None:
            async for raw in stream:
                self.handle(raw)

        app.agent(self.pressure_topic, name="fbp_pressure_control")(fbp_pressure_control)

        close_probes_on_stop(app, lambda: [loop.probe for loop in self.loops.values()])

    def add(self, loop: ControlLoop) -> ControlLoop:
        if loop.name in self.loops:
            raise ValueError(f"limiter {loop.name!r} already has a control loop")
        self.loops[loop.name] = loop
        self.app.timer(loop.interval, name=f"fbp_pressure_sample_{loop.name}")(
            self._sampler(loop))
        return loop

    def _sampler(self, loop: ControlLoop) -> Any:
        async def sample() -> None:
            try:
                worker_sample = await loop.sample(self.worker)
            except Exception as exc:  # a broker hiccup must not kill the timer
                log.warning("pressure sample of %s failed: %r", loop.name, exc)
                return
            await send_control(self.app, self.pressure_topic.get_topic_name(),
                               loop.name.encode(), worker_sample.encode())
            self.published += 1
        return sample

    def handle(self, raw: bytes | None) -> PressureDecision | None:
        try:
            sample = WorkerSample.decode(raw or b"")
            loop = self.loops[sample.limiter]
        except (ValueError, KeyError, TypeError) as exc:
            self.rejected += 1
            log.warning("pressure event rejected: %r", exc)
            return None
        stored = self.table.get(loop.name)
        if stored is not None and stored != self._stored.get(loop.name):
            try:  # another worker decided before us (a fail-over, a rebalance)
                loop.controller.restore(json.loads(stored))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("control state of %s not restored: %r", loop.name, exc)
        decision = loop.observe(sample, time.monotonic())
        if decision is not None:
            state = self._stored[loop.name] = json.dumps(loop.controller.state())
            self.table[loop.name] = state
        return decision

