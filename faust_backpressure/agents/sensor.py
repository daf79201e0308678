"""A Faust sensor for rate limiting: users' monitors see waits, sheds and overdrafts.

Faust calls its sensors (``app.sensors``) for messages, streams, tables and commits. A
rate-limited agent or pipeline also calls, on every sensor that has them, these hooks:

* ``on_rate_limit_wait(agent, limiter, permits, seconds)``: an event (or batch) waited
  ``seconds`` for ``permits`` (called once the wait is over);
* ``on_rate_limit_shed(agent, limiter, topic, permits)``: an event was sent to the shed topic;
* ``on_rate_limit_overdraft(agent, limiter, permits)``: a rebalance or stop let a waiting
  event go on without its permits.

Subclass :class:`BackpressureSensor` (or add those methods to an existing ``faust.Sensor`` /
``faust.Monitor`` subclass) and ``app.sensors.add(sensor)``. The base class keeps counts per
``(agent, limiter)``; a hook that raises is logged and never disturbs the stream.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from typing import Any

import faust
from faust.types import AppT

__all__ = ["BackpressureSensor", "notify_sensors"]

log = logging.getLogger(__name__)


class BackpressureSensor(faust.Sensor):
    """Counts rate-limit waits (and seconds waited), sheds and overdrafts per agent and
    limiter. Override the hooks to forward them elsewhere (StatsD, Datadog, ...)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waits: Counter[tuple[str, str]] = Counter()
        self.wait_seconds: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.shed: Counter[tuple[str, str]] = Counter()
        self.overdrafts: Counter[tuple[str, str]] = Counter()

    def on_rate_limit_wait(self, agent: str, limiter: str, permits: int,
                           seconds: float) -> None:
        self.waits[agent, limiter] += 1
        self.wait_seconds[agent, limiter] += seconds

    def on_rate_limit_shed(self, agent: str, limiter: str, topic: str, permits: int) -> None:
        self.shed[agent, limiter] += 1

    def on_rate_limit_overdraft(self, agent: str, limiter: str, permits: int) -> None:
        self.overdrafts[agent, limiter] += 1

    def asdict(self) -> dict[str, Any]:
        """JSON-ready counts (Faust's sensor protocol)."""
        return {name: [{"agent": a, "limiter": lim, "value": v}
                       for (a, lim), v in getattr(self, name).items()]
                for name in ("waits", "wait_seconds", "shed", "overdrafts")}


def notify_sensors(app: AppT, hook: str, *args: Any) -> None:
    """Call ``hook(*args)`` on every sensor of ``app`` that has it."""
    for sensor in getattr(app, "sensors", ()):  # an app stub in unit tests has none
        method = getattr(sensor, hook, None)
        if method is None:
            continue
        try:
            method(*args)
        except Exception:  # a monitor's bug must not stop the stream
            log.exception("sensor %r failed in %s", sensor, hook)
