"""A simulated plant for the control loop, on a virtual clock (pure: no Faust, no I/O).

Upstream records arrive at ``offered(t)`` per second into a backlog (topic A); the limiter
admits them at the controller's rate into topic B (its end offset is ``produced``); the
downstream consumes B at up to ``capacity(t)`` per second and commits its offset every
``commit_interval`` seconds (Faust's default ``broker_commit_interval`` is 2.8 s; 0 commits
continuously). Every ``interval`` the loop samples lag = produced - committed, the
processed count (= committed), the limiter's utilization (admitted / allowed over the
interval; a share ``utilization_dips`` of saturated samples read 0.59-0.87 instead, as a
distributed limiter's do: docs/control-loop.md) and asks the controller for the next rate,
which reaches the limiter ``delay`` seconds later (a distributed limiter's leases and the
pressure event's trip through Kafka: about an interval).

Example::

    run = simulate(BackpressureController(300, thresholds, interval=1.0),
                   offered=lambda t: 300, capacity=lambda t: 100, duration=120)
    run.between(60, 120).rate_changes_per_minute()
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from faust_backpressure.control.policy import (
    BackpressureController,
    BackpressureSeverity,
    PressureDecision,
    PressureSample,
)

__all__ = ["Interval", "Run", "simulate"]


@dataclass(frozen=True, slots=True)
class Interval:
    """One control interval: the state sampled at ``t`` and the decision taken then."""

    t: float
    lag: int                # measured (end - committed)
    true_lag: float         # end - consumed (what the downstream has yet to read)
    capacity: float         # downstream capacity during the interval before ``t``
    consumed: float         # records the downstream consumed in that interval
    busy: float             # share of the interval the downstream was busy (0..1)
    upstream_backlog: float
    decision: PressureDecision


@dataclass
class Run:
    intervals: list[Interval] = field(default_factory=list)
    interval: float = 1.0
    baseline_rate: float = 0.0

    def between(self, start: float, end: float) -> Run:
        return Run([i for i in self.intervals if start < i.t <= end], self.interval,
                   self.baseline_rate)

    @property
    def rates(self) -> list[float]:
        return [i.decision.rate for i in self.intervals]

    def peak_lag(self) -> int:
        return max(i.lag for i in self.intervals)

    def lag_band(self) -> tuple[int, int]:
        lags = [i.lag for i in self.intervals]
        return min(lags), max(lags)

    def rate_band(self) -> tuple[float, float]:
        return min(self.rates), max(self.rates)

    def steps(self, threshold: float = 0.05) -> int:
        """Rate changes of more than ``threshold`` of the previous rate."""
        return sum(1 for a, b in itertools.pairwise(self.rates)
                   if abs(b - a) > threshold * a)

    def rate_changes(self) -> int:
        return sum(1 for a, b in itertools.pairwise(self.rates) if b != a)

    def minutes(self) -> float:
        return len(self.intervals) * self.interval / 60.0

    def steps_per_minute(self, threshold: float = 0.05) -> float:
        return self.steps(threshold) / self.minutes()

    def rate_changes_per_minute(self) -> float:
        return self.rate_changes() / self.minutes()

    def busy_share(self) -> float:
        """Consumed over what the downstream's capacity allowed."""
        allowed = sum(i.capacity * self.interval for i in self.intervals)
        return 1.0 if allowed == 0 else sum(i.consumed for i in self.intervals) / allowed

    def severities(self) -> set[BackpressureSeverity]:
        return {i.decision.severity for i in self.intervals}

    def first(self, predicate: Callable[[Interval], bool]) -> Interval | None:
        return next((i for i in self.intervals if predicate(i)), None)


def simulate(controller: BackpressureController, *, offered: Callable[[float], float],
             capacity: Callable[[float], float], duration: float, interval: float = 1.0,
             commit_interval: float = 2.8, tick: float = 0.05, initial_backlog: float = 0.0,
             utilization_dips: float = 0.0, seed: int = 12,
             with_processed: bool = True, delay: float = 0.0,
             members: int | None = None) -> Run:
    """Run ``controller`` on the plant for ``duration`` seconds of virtual time."""
    rng = random.Random(seed)
    backlog, produced, consumed, committed = initial_backlog, 0.0, 0.0, 0.0
    allowance = 0.0  # the limiter's unused permits (at most one tick's worth: no burst)
    run = Run(interval=interval, baseline_rate=controller.baseline_rate)
    steps_per_interval = round(interval / tick)
    steps_per_commit = max(1, round(commit_interval / tick)) if commit_interval > 0 else 1
    step = 0
    rate = controller.rate  # what the limiter applies
    pending: list[tuple[float, float]] = []  # (from when, rate) decided, not applied yet
    while step * tick < duration:
        admitted_in, consumed_in, busy_in, allowed_in = 0.0, 0.0, 0.0, 0.0
        cap = capacity(step * tick)
        for _ in range(steps_per_interval):
            now = step * tick
            while pending and pending[0][0] <= now + 1e-9:
                rate = pending.pop(0)[1]
            backlog += offered(now) * tick
            cap = capacity(now)
            allowance = min(allowance + rate * tick, rate * tick)
            allowed_in += rate * tick
            admitted = min(backlog, allowance)
            backlog -= admitted
            allowance -= admitted
            produced += admitted
            admitted_in += admitted
            can = cap * tick
            took = min(can, produced - consumed)
            consumed += took
            consumed_in += took
            busy_in += 0.0 if can == 0 else took / can
            step += 1
            if step % steps_per_commit == 0:
                committed = consumed
        now = step * tick
        utilization = admitted_in / allowed_in if allowed_in else 0.0
        if utilization > 0.99 and rng.random() < utilization_dips:
            utilization = rng.uniform(0.59, 0.87)
        lag = round(produced) - round(committed)
        decision = controller.decide(PressureSample(
            lag=max(lag, 0), utilization=utilization, cpu=0.1,
            processed=round(committed) if with_processed else None,
            at=now if with_processed else None, members=members))
        pending.append((now + delay, decision.rate))
        run.intervals.append(Interval(now, max(lag, 0), produced - consumed, cap, consumed_in,
                                      busy_in / steps_per_interval, backlog, decision))
    return run
