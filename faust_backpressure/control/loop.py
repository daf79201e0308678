"""The backpressure control loop: a timer samples pressure, an agent decides the limiter's rate.

On every worker a Faust timer samples, once per ``interval``, the downstream consumer group's
lag (end offsets minus committed offsets of ``downstream_topics``), the limiter's utilization
and the CPU, and publishes the sample as an event on the app's pressure topic, keyed by the
limiter's name. The agent on that topic therefore sees every worker's samples of one limiter
on one worker (the owner of the key's partition), which alone runs the
:class:`~faust_backpressure.control.policy.BackpressureController` and applies its rate with
``limiter.update_rate_limit``; a distributed limiter carries the new rate to every worker.
See ``docs/control-loop.md``.

Samples are checked before they count (``docs/security.md``): signed with the app's secret when
there is one, at most ``max_clock_skew`` in the future, at most three intervals plus the skew
old, never seen before (replay), every number finite and in range. Anything else is counted in
``ControlLoops.rejections`` by reason and changes nothing.

Example::

    loop = bp.control_loop("orders-api", downstream_group="billing",
                           downstream_topics=["orders-priced"], interval=5.0)
"""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import faust
import psutil
from faust.types import AppT

from faust_backpressure.agents.rate_limit import RateLimitGate
from faust_backpressure.config import ControlPolicy
from faust_backpressure.control.override import MARKER, MAX_AGE, Override
from faust_backpressure.control.policy import (
    BackpressureController,
    BackpressureSeverity,
    BackpressureThresholds,
    PressureDecision,
    PressureSample,
)
from faust_backpressure.control.probe import LagProbe, close_probes_on_stop
from faust_backpressure.control.samples import WorkerSample
from faust_backpressure.control.shedding import PriorityShedder, ShedLevels
from faust_backpressure.faust_seam import context_of, send_control
from faust_backpressure.limiters import RateLimitingStrategy
from faust_backpressure.limiters.base import check_rate
from faust_backpressure.tables.store import library_table
from faust_backpressure.wire.kafka_clients import KafkaClientSettings, raw_topic
from faust_backpressure.wire.signing import (
    UNKNOWN,
    RejectedRecord,
    Rejections,
    ReplayGuard,
    check_time,
)
from faust_backpressure.wire.topics import CONTROL_TABLE, pressure_topic

__all__ = ["ControlLoop", "ControlLoops", "WorkerSample"]


log = logging.getLogger(__name__)

#: Decisions a loop keeps (the dashboard shows the last few; counts are in ``decided``).
DECISION_HISTORY = 1000


#: Most workers whose latest sample a decider keeps (a flood of made-up worker ids is dropped
#: oldest first, so memory stays bounded).
MAX_WORKERS = 10_000


class ControlLoop:
    """One limiter under control: its probe, its controller, what it decided."""

    def __init__(self, loops: ControlLoops, limiter: RateLimitingStrategy, *,
                 downstream_group: str, downstream_topics: Sequence[str],
                 interval: float, thresholds: BackpressureThresholds | None = None,
                 baseline_rate: float | None = None, name: str | None = None,
                 shed_on_critical: bool = False,
                 gates: Callable[[], Iterable[RateLimitGate]] = tuple,
                 policy: ControlPolicy = "setpoint",
                 shed_levels: ShedLevels | None = None,
                 count_uncommitted: bool = False) -> None:
        self.limiter = limiter
        self.name = name or limiter.name
        self.interval = check_rate("interval", interval)
        # A group with no commits is a typo or a consumer not started: no throttling on its
        # backlog until it commits, unless asked (count_uncommitted=True)
        self.probe = LagProbe(loops.kafka, downstream_group, downstream_topics,
                              count_uncommitted=count_uncommitted)
        self._warned: str | None = None  # the input warning last logged
        self._loops = loops  # its error_rate is read at each sample (set after this)
        self.controller = BackpressureController(
            baseline_rate if baseline_rate is not None else limiter.current_rate_limit,
            thresholds, policy=policy, interval=self.interval)
        self.shed_on_critical = shed_on_critical
        #: Priority shedding (gates with a priority function), on this worker's samples.
        thresholds = self.controller.thresholds
        self.shedder = PriorityShedder(shed_levels, critical_lag=thresholds.critical_lag,
                                       relax_lag=thresholds.max_consumer_lag,
                                       interval=self.interval)
        #: This worker's gates (all of them; those on this limiter are picked at each sample).
        self.gates = gates
        self.samples: dict[str, WorkerSample] = {}  # latest per worker (on the decider)
        self._received: dict[str, float] = {}  # when each arrived (decider's monotonic clock)
        #: The latest decisions (at most DECISION_HISTORY: a long-running worker keeps no more)
        self.decisions: collections.deque[PressureDecision] = collections.deque(
            maxlen=DECISION_HISTORY)
        self.decided = 0  # all decisions so far
        self.last_decision: PressureDecision | None = None
        self.last_sample: WorkerSample | None = None  # this worker's latest
        self._decided_at = 0.0
        #: An operator's hold (see :mod:`.override`), on the decider: wins over the policy.
        self.override: dict[str, Any] | None = None
        self.last_override: str | None = None  # id of the last hold/release applied

    def rate_share(self) -> float:
        """The limiter's rate now over the controller's baseline, in (0, 1] (e.g. to scale a
        credit window with the loop's decisions)."""
        baseline = self.controller.baseline_rate
        return min(1.0, max(float(self.limiter.current_rate_limit), 0.0) / baseline)

    @property
    def input_warning(self) -> str | None:
        """What is wrong with the loop's input (missing topics, a group with no commits)."""
        return self.probe.warning

    def note_input(self) -> None:
        """Log the input warning when it appears or changes, and when it is gone."""
        warning = self.probe.warning
        if warning == self._warned:
            return
        if warning is not None:
            log.warning("control loop %s: %s", self.name, warning)
        else:
            log.info("control loop %s: its input is fine again (group %r has committed)",
                     self.name, self.probe.group)
        self._warned = warning

    async def sample(self, worker: str) -> WorkerSample:
        """This worker's view, now."""
        try:
            lag, processed = await self.probe.measure()
        finally:
            self.note_input()
        members = await self.probe.members()
        self.last_sample = WorkerSample(
            limiter=self.name, worker=worker, at=time.time(), lag=lag,
            utilization=float(self.limiter.current_utilization),
            cpu=psutil.cpu_percent(interval=None) / 100.0, processed=processed,
            members=members, error_rate=self._loops.error_rate())
        if self.shed_on_critical:  # every worker sees the same lag: each decides for itself
            lag = self.last_sample.lag
            shed = lag > self.controller.thresholds.critical_lag
            before = self.shedder.threshold
            threshold = self.shedder.update(lag, time.monotonic())
            if threshold != before:
                log.warning("limiter %s: priority shed level %s -> %s (lag %d)", self.name,
                            before, threshold, lag)
            for gate in self.gates():
                if gate.limiter is not self.limiter:
                    continue
                if gate.priority is not None:  # by priority: the lowest first, others wait
                    gate.shed_threshold = threshold
                    continue
                if gate.shed_now != shed:
                    log.warning("limiter %s: %s shedding (lag %d)", self.name,
                                "start" if shed else "stop", self.last_sample.lag)
                gate.shed_now = shed
        return self.last_sample

    def observe(self, sample: WorkerSample, now: float) -> PressureDecision | None:
        """A worker's sample arrived; decide at most once per interval (on the decider).

        Fresh are the samples that arrived within three intervals (the decider's clock, not
        the senders': a sample stamped in the future cannot stay fresh)."""
        self.samples.pop(sample.worker, None)  # re-inserted last: the dict is by arrival
        self._received.pop(sample.worker, None)
        self.samples[sample.worker], self._received[sample.worker] = sample, now
        horizon = now - 3 * self.interval
        for worker, received in list(self._received.items()):
            if received >= horizon and len(self._received) <= MAX_WORKERS:
                break
            del self._received[worker], self.samples[worker]
        if self.override is not None:  # held by an operator: no decision until released
            rate = float(self.override["rate"])
            if self.limiter.current_rate_limit != rate:
                self.limiter.update_rate_limit(rate)
            return None
        if now - self._decided_at < self.interval * 0.9:
            return None
        fresh = list(self.samples.values())
        # Committed offsets only grow: the largest count is the latest. Timed by the
        # decider's clock (``now``), so that workers' clocks need not agree.
        counts = [s.processed for s in fresh if s.processed is not None]
        members = [s.members for s in fresh if s.members is not None]
        errors = [s.error_rate for s in fresh if s.error_rate is not None]
        decision = self.controller.decide(PressureSample(
            lag=max(s.lag for s in fresh),
            utilization=max(s.utilization for s in fresh),
            cpu=max(s.cpu for s in fresh),
            processed=max(counts) if counts else None, at=now if counts else None,
            members=members[-1] if members else None,  # the latest arrival's count
            error_rate=max(errors) if errors else None))
        self._decided_at = now
        previous, self.last_decision = self.last_decision, decision
        self.decisions.append(decision)
        self.decided += 1
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

    def __init__(self, app: AppT, *, kafka: KafkaClientSettings | str,
                 secret: bytes | None = None, max_clock_skew: float = 10.0) -> None:
        self.app = app
        self.kafka = kafka
        self.secret = secret
        self.max_clock_skew = max_clock_skew
        self.loops: dict[str, ControlLoop] = {}
        #: The failure rate of what this worker's stream calls (None: nothing guarded); the
        #: installer points it at the app's downstream guards.
        self.error_rate: Callable[[], float | None] = lambda: None
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        # internal: Faust creates it before subscribing.
        partitions = int(app.conf.topic_partitions)
        # None: the app's topic_replication_factor
        replicas = context_of(app).settings.internal_replication_factor
        self.pressure_topic = raw_topic(app, pressure_topic(app.conf.id), internal=True,
                                        partitions=partitions, replicas=replicas)
        # The deciding worker's controller state, so that a successor carries on (an
        # emergency survives a fail-over). Co-partitioned with the pressure topic: written
        # by the agent of the partition that the limiter's samples land on.
        # Samples and the decider's state are control traffic: outside every transaction.
        self.table = library_table(app, CONTROL_TABLE, replicas=replicas, default=None,
                                   key_type=str, value_type=str, partitions=partitions)
        self._stored: dict[str, str] = {}  # what this worker last wrote, per limiter
        self.published = 0
        self.rejections = Rejections()  # pressure records, by reason
        self._replays: dict[str, ReplayGuard] = {}  # per loop: sample ids within its window
        self._override_ids = ReplayGuard(MAX_AGE + max_clock_skew)

        async def fbp_pressure_control(stream: faust.StreamT[bytes]) -> None:
            async for event in stream.events():
                self.handle(event.value, event.key)

        app.agent(self.pressure_topic, name="fbp_pressure_control")(fbp_pressure_control)

        close_probes_on_stop(app, lambda: [loop.probe for loop in self.loops.values()])

    def add(self, loop: ControlLoop) -> ControlLoop:
        if loop.name in self.loops:
            raise ValueError(f"limiter {loop.name!r} already has a control loop")
        self.loops[loop.name] = loop
        self._replays[loop.name] = ReplayGuard(self.max_age(loop))
        self.app.timer(loop.interval, name=f"fbp_pressure_sample_{loop.name}")(
            self._sampler(loop))
        return loop

    def _sampler(self, loop: ControlLoop) -> Any:
        async def sample() -> None:
            try:
                worker_sample = await loop.sample(self.worker)
            except Exception as exc:  # a broker hiccup must not kill the timer
                if loop.input_warning is None:  # else said once by note_input
                    log.warning("pressure sample of %s failed: %r", loop.name, exc)
                return
            await send_control(self.app, self.pressure_topic.get_topic_name(),
                               loop.name.encode(), worker_sample.encode(self.secret))
            self.published += 1
        return sample

    def max_age(self, loop: ControlLoop) -> float:
        """Oldest sample that still counts: three intervals (what the decider aggregates)
        plus the clock skew allowed between workers."""
        return 3 * loop.interval + self.max_clock_skew

    def _accept(self, limiter: str, at: float, record_id: str, now: float | None, *,
                override: bool = False) -> ControlLoop:
        """The loop of a decoded sample (or override) stamped ``at``: known, fresh (within
        :meth:`max_age`, an override's :data:`MAX_AGE`) and not a replay; else
        :class:`RejectedRecord`."""
        loop = self.loops.get(limiter)
        if loop is None:
            raise RejectedRecord(f"no control loop for {limiter!r:.80}", code=UNKNOWN)
        now = time.time() if now is None else now
        max_age, replays = (MAX_AGE, self._override_ids) if override \
            else (self.max_age(loop), self._replays[loop.name])
        check_time(at, now, max_age=max_age, max_skew=self.max_clock_skew)
        replays.check(record_id, now)
        return loop

    def check(self, raw: bytes | None, key: bytes | None = None,
              now: float | None = None) -> tuple[ControlLoop, WorkerSample]:
        """The loop and the sample of a pressure record, or :class:`RejectedRecord`."""
        sample = WorkerSample.decode(raw, key, self.secret)
        return self._accept(sample.limiter, sample.at, sample.sample_id, now), sample

    def handle(self, raw: bytes | None, key: bytes | None = None) -> PressureDecision | None:
        """Apply one pressure record; a rejected one is counted and changes nothing."""
        if raw is not None and MARKER in raw:
            self.handle_override(raw, key)
            return None
        try:
            loop, sample = self.check(raw, key)
        except RejectedRecord as exc:
            self.rejections.count(exc)
            log.warning("pressure event rejected (%s): %s", exc.code, exc.reason)
            return None
        self._restore(loop)
        decision = loop.observe(sample, time.monotonic())
        if decision is not None:
            self._persist(loop, severity=decision.severity.name, reason=decision.reason)
        return decision

    def _restore(self, loop: ControlLoop) -> None:
        stored = self.table.get(loop.name)
        if stored is not None and stored != self._stored.get(loop.name):
            try:  # another worker decided before us (a fail-over, a rebalance)
                state = json.loads(stored)
                loop.controller.restore(state)
                loop.override = state.get("override")
                loop.last_override = state.get("last_override")
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("control state of %s not restored: %r", loop.name, exc)

    def _persist(self, loop: ControlLoop, **extra: Any) -> None:
        # severity, reason, time and the override ride along for `backpressure status`
        # (the controller's restore ignores them)
        state = self._stored[loop.name] = json.dumps({
            **loop.controller.state(), "decided_at": time.time(),
            "override": loop.override, "last_override": loop.last_override, **extra})
        self.table[loop.name] = state

    def handle_override(self, raw: bytes, key: bytes | None = None) -> None:
        """An operator's hold or release (see :mod:`.override`): applied and persisted."""
        try:
            override = Override.decode(raw, key, self.secret)
            loop = self._accept(override.limiter, override.at, override.override_id, None,
                                override=True)
        except RejectedRecord as exc:
            self.rejections.count(exc)
            log.warning("override rejected (%s): %s", exc.code, exc.reason)
            return
        self._restore(loop)
        if override.action == "hold":
            rate = (override.rate if override.rate is not None
                    else loop.controller.thresholds.emergency_rate)
            loop.override = override.to_state(rate)
            log.warning("limiter %s: held at %g/s by %s (operator override %s)%s", loop.name,
                        rate, override.by, override.override_id,
                        f": {override.reason}" if override.reason else "")
        else:
            loop.override = None
            rate = loop.controller.rate
            log.warning("limiter %s: override released by %s; the control loop decides "
                        "again (from %g/s)", loop.name, override.by, rate)
        if loop.limiter.current_rate_limit != rate:
            loop.limiter.update_rate_limit(rate)
        loop.last_override = override.override_id
        self._persist(loop, severity="OVERRIDE" if loop.override else "RELEASED",
                      reason=f"operator {override.action} by {override.by}")

