"""Credit-based flow control between two stages, fed by the downstream group's lag.

``bp.credit_flow(window, downstream_group=..., downstream_topics=[...])`` returns a
:class:`~faust_backpressure.control.credits.CreditBasedFlowController` to use as the upstream
stage's limiter (``bp.rate_limit(...)`` or ``bp.pipeline(limiter=...)``). A Faust timer on the
worker probes the downstream group's lag every ``interval`` seconds and announces it: the
upstream sends at most ``window`` records more than the downstream has processed. It starts
with no credit: nothing is sent before the first measurement. The window is per worker.

Example::

    credits = bp.credit_flow(10_000, downstream_group="billing",
                             downstream_topics=["orders-priced"], interval=1.0)
    bp.pipeline("price", source="orders", sink="orders-priced", process=price,
                limiter=credits)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

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
                 downstream_topics: Sequence[str], interval: float, name: str) -> None:
        interval = check_rate("interval", interval)
        self.name = name
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
        self.controller.announce(backlog)
        self.announcements += 1
