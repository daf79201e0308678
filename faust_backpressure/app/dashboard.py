"""``/backpressure/ui``: a live dashboard on each worker's web server.

A plain HTML page with its CSS and a small vanilla JS file shipped in the package (no CDN:
the machines may have no internet). The script polls ``/backpressure/?history=1``: this
worker's snapshot (see :mod:`.views`) plus a ring buffer of its recent compact snapshots,
recorded once a second by a timer on the worker, from which it draws the charts.

Loading it changes nothing. Its buttons (emergency stop / restore a control loop, pause /
resume a pipeline) call the write endpoints of :mod:`.admin_api`, which need the ``admin_token``
the person types into the page (kept in the browser tab's session storage).
"""

from __future__ import annotations

import time
from collections import deque
from importlib import resources
from typing import Any

from faust.types import AppT
from faust.web import Request, Response, View

from faust_backpressure.agents.gate_base import KEYED_COUNTERS
from faust_backpressure.app.registry import Installation
from faust_backpressure.faust_seam import Slot, context_of

__all__ = ["HISTORY_INTERVAL", "HISTORY_SIZE", "History", "history_of", "register_dashboard"]

HISTORY_INTERVAL = 1.0  # seconds between recorded points
HISTORY_SIZE = 300  # points kept: five minutes

_STATIC = {"dashboard.js": "application/javascript", "dashboard.css": "text/css"}


class History:
    """The last ``size`` compact snapshots of a worker (counters, rates, lags, severities)."""

    def __init__(self, size: int = HISTORY_SIZE) -> None:
        self.points: deque[dict[str, Any]] = deque(maxlen=size)

    def record(self, state: dict[str, Any]) -> None:
        self.points.append(compact(state))

    def to_json(self) -> list[dict[str, Any]]:
        return list(self.points)


def compact(state: dict[str, Any]) -> dict[str, Any]:
    """What the charts need of a snapshot."""
    return {
        "at": state.get("at", time.time()),
        "limiters": {k: {"rate": v["rate"], "granted": v["granted"], "denied": v["denied"],
                         "utilization": v["utilization"]}
                     for k, v in state["limiters"].items()},
        "pipelines": {k: {"consumed": v["consumed"], "dead_lettered": v["dead_lettered"],
                          "source_lag": v.get("source_lag")}
                      for k, v in state["pipelines"].items()},
        "gates": {g["agent"]: {"waits": g["waits"], "shed": g["shed"],
                               "source_lag": g.get("source_lag")} for g in state["gates"]},
        "control": {k: {"decided_rate": v["decided_rate"], "severity": v["severity"],
                        "lag": (v["last_sample"] or {}).get("lag")}
                    for k, v in state["control"].items()},
        "keyed": {k: {c: v[c] for c in KEYED_COUNTERS} for k, v in state.get("keyed", {}).items()},
    }


#: The app's ring buffer in its context.
HISTORY: Slot[History] = Slot("dashboard history")


def history_of(app: AppT) -> History:
    """The app's ring buffer (made on first use)."""
    return context_of(app).get_or_make(HISTORY, History)


def _static(name: str) -> str:
    return (resources.files("faust_backpressure.app") / "static" / name).read_text("utf-8")


def register_dashboard(bp: Installation, snapshot: Any) -> None:
    """Add ``/backpressure/ui`` (and its two static files) and the history timer to ``bp.app``.
    ``snapshot(bp)`` is the function that ``/backpressure/`` serves."""
    app = bp.app
    history = history_of(app)

    @app.timer(HISTORY_INTERVAL, name="fbp_dashboard_history")
    async def fbp_dashboard_history() -> None:
        history.record(snapshot(bp))

    @app.page("/backpressure/ui")
    async def dashboard(web: View, request: Request) -> Response:
        return web.html(_static("dashboard.html"))

    for name, content_type in _STATIC.items():
        def make(name: str, content_type: str) -> Any:
            async def static(web: View, request: Request) -> Response:
                return web.text(_static(name), content_type=content_type)
            return static
        app.page(f"/backpressure/ui/{name}", name=f"fbp_ui_{name}")(make(name, content_type))
