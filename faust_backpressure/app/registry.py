"""Which :class:`~faust_backpressure.app.installer.Backpressure` is installed on which app.

The installer registers itself here (the app layer's part of the app's context, under
:data:`INSTALLATION`); the CLI and the web views read what they need through
:class:`Installation`, so none of them imports another (the import graph has no cycle).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from faust.types import AppT

from faust_backpressure.agents import KeyedRateLimitGate, Pipeline, RateLimitGate
from faust_backpressure.agents.downstream import Downstream
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.control import ControlLoop
from faust_backpressure.control.credit_flow import CreditFlow
from faust_backpressure.faust_seam import Slot, context_of, find_context
from faust_backpressure.limiters import RateLimitingStrategy
from faust_backpressure.tables import DistributedRateLimiter
from faust_backpressure.wire.kafka_clients import client_settings

__all__ = ["INSTALLATION", "Installation", "configured_rate", "installed", "on_cluster",
           "register"]

_T = TypeVar("_T")


class Installation(Protocol):
    """What the CLI and the views read of an installed ``Backpressure``."""

    app: AppT
    settings: BackpressureSettings
    pipelines: dict[str, Pipeline]
    keyed_limits: dict[str, KeyedRateLimitGate]
    downstreams: dict[str, Downstream]
    credit_flows: list[CreditFlow]
    ops_follower: Any

    def all_gates(self) -> list[RateLimitGate]: ...

    @property
    def registered_limiters(self) -> list[RateLimitingStrategy]: ...

    @property
    def control_loops(self) -> dict[str, ControlLoop]: ...

    @property
    def rejections(self) -> dict[str, dict[str, int]]: ...


#: The app's installed ``Backpressure`` in its context.
INSTALLATION: Slot[Installation] = Slot("installation")


def register(app: AppT, installation: Installation) -> None:
    """Record ``installation`` as the one on ``app`` (the latest wins)."""
    context_of(app).put(INSTALLATION, installation)


def installed(app: AppT) -> Installation:
    """The installation on ``app``; ``LookupError`` if ``Backpressure(app)`` was never made."""
    context = find_context(app)
    found = None if context is None else context.get(INSTALLATION)
    if found is None:
        raise LookupError(f"no Backpressure(app) was created for app {app.conf.id!r}")
    return found


def configured_rate(limiter: RateLimitingStrategy | None) -> float | None:
    """The rate a distributed limiter was declared with (its config; the shared rate may have
    been changed since); ``None`` for any other limiter."""
    if isinstance(limiter, DistributedRateLimiter):
        return float(limiter.config.rate)
    return None


async def on_cluster(bp: Installation, send: Callable[..., Coroutine[Any, Any, _T]],
                     *args: Any, **kwargs: Any) -> _T:
    """``send(kafka, app_id, *args, secret=..., **kwargs)`` with the app's Kafka settings, id
    and secret: how the commands and the admin API send every operator command."""
    return await send(client_settings(bp.app, "ops"), str(bp.app.conf.id), *args,
                      secret=bp.settings.secret_key, **kwargs)
