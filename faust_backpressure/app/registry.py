"""Which :class:`~faust_backpressure.app.installer.Backpressure` is installed on which app.

The installer registers itself here; the CLI and the web views read what they need through
:class:`Installation`, so none of them imports another (the import graph has no cycle).
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

from faust.types import AppT

from faust_backpressure.agents import KeyedRateLimitGate, Pipeline, RateLimitGate
from faust_backpressure.agents.downstream import Downstream
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.control import ControlLoop
from faust_backpressure.limiters import RateLimitingStrategy

__all__ = ["Installation", "installed", "register"]


class Installation(Protocol):
    """What the CLI and the views read of an installed ``Backpressure``."""

    app: AppT
    settings: BackpressureSettings
    pipelines: dict[str, Pipeline]
    keyed_limits: dict[str, KeyedRateLimitGate]
    downstreams: dict[str, Downstream]
    ops_follower: Any

    def all_gates(self) -> list[RateLimitGate]: ...

    @property
    def registered_limiters(self) -> list[RateLimitingStrategy]: ...

    @property
    def control_loops(self) -> dict[str, ControlLoop]: ...

    @property
    def rejections(self) -> dict[str, dict[str, int]]: ...


_INSTALLED: weakref.WeakKeyDictionary[AppT, Installation] = weakref.WeakKeyDictionary()


def register(app: AppT, installation: Installation) -> None:
    """Record ``installation`` as the one on ``app`` (the latest wins)."""
    _INSTALLED[app] = installation


def installed(app: AppT) -> Installation:
    """The installation on ``app``; ``LookupError`` if ``Backpressure(app)`` was never made."""
    try:
        return _INSTALLED[app]
    except KeyError:
        raise LookupError(f"no Backpressure(app) was created for app {app.conf.id!r}") from None
