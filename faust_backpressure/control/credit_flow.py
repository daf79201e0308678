"""Credit-based flow control between two stages, fed by the downstream group's lag.

``bp.credit_flow(window, downstream_group=..., downstream_topics=[...])`` returns a
:class:`~faust_backpressure.control.credits.CreditBasedFlowController` to use as the upstream
stage's limiter (``bp.rate_limit(...)`` or ``bp.pipeline(limiter=...)``). A Faust timer on the
worker probes the downstream group's lag every ``interval`` seconds and announces it: the
upstream sends at most ``window`` records more than the downstream has processed. It starts
with no credit: nothing is sent before the first measurement. The window is per worker,
unless ``shared=True``: then it is the stage's, split among the live members of the app's
consumer group (the stage's workers, asked of the broker at each announcement); and with a
``control_loop`` it shrinks with the loop's decisions (window x decided rate / baseline).

Example::

    credits = bp.credit_flow(10_000, downstream_group="billing",
                             downstream_topics=["orders-priced"], interval=1.0)
    bp.pipeline("price", source="orders", sink="orders-priced", process=price,
                limiter=credits)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from faust.types import AppT

from faust_backpressure.control.credits import CreditBasedFlowController
from faust_backpressure.control.probe import LagProbe, close_probes_on_stop
from faust_backpressure.limiters.base import check_rate
from faust_backpressure.tables.kafka import KafkaClientSettings

__all__ = ["CreditFlow"]

log = logging.getLogger(__name__)


class CreditFlow:
    """One credit window and the timer that announces the downstream backlog to it."""

    def __init__(self, app: AppT, *, kafka: KafkaClientSettings | str, window: int,
                 downstream_group: str,
                 downstream_topics: Sequence[str], interval: float, name: str,
                 shared: bool = False, scale: Callable[[], float] | None = None) -> None:
        """``shared``: split ``window`` among the live workers of the app's group;
        ``scale``: a share of the window allowed now, in (0, 1] (the control loop's)."""
        interval = check_rate("interval", interval)
        self.name = name
        self.group = str(app.conf.id)  # the stage's workers: the app's consumer group
        self.shared = shared
        self.scale = scale
        self.members = 1  # the last count the broker gave (1 until then)
        self.controller = CreditBasedFlowController(window, initial_credits=0)
        self.probe = LagProbe(kafka, downstream_group, downstream_topics)
        self.announcements = 0
        app.timer(interval, name=f"fbp_credits_{name}")(self.announce)
        close_probes_on_stop(app, lambda: [self.probe])

    async def announce(self) -> None:
        try:
            backlog = await self.probe.lag()
        except Exception as exc:  # no measurement, no credit: the upstream waits
            log.warning("credit flow: downstream lag not measured: %r", exc)
            return
        if self.shared:
            members = await self.probe.members(self.group)
            if members:  # None (not said) or 0 (between generations): the last count
                self.members = members
        try:
            scale = 1.0 if self.scale is None else max(float(self.scale()), 0.0)
        except Exception as exc:  # a broken callable: the whole window
            log.warning("credit flow: scale not read: %r", exc)
            scale = 1.0
        self.controller.announce(backlog, members=self.members, scale=scale)
        self.announcements += 1
