"""Write endpoints on each worker's web server, guarded by the ``admin_token`` setting.

``POST /backpressure/api/<action>`` with a JSON body and ``Authorization: Bearer <token>``:

=================== ============================================= ==========================
action              body                                          same as the CLI command
=================== ============================================= ==========================
``set-rate``        ``{"limiter": id, "rate": r}``                ``backpressure set-rate``
``reset``           ``{"limiter": id}``                           ``backpressure reset``
``emergency-stop``  ``{"limiter": id, "rate": r?, "reason": s?}`` ``backpressure emergency-stop``
``restore``         ``{"limiter": id, "reason": s?}``             ``backpressure restore``
``pause``           ``{"pipeline": name, "reason": s?}``          ``backpressure pause``
``resume``          ``{"pipeline": name, "reason": s?}``          ``backpressure resume``
``breaker``         ``{"dependency": name, "state": "open" |       ``backpressure breaker``
                    "close" | "auto", "reason": s?}``
``key-override``    ``{"limit": name, "key": k, "rate": r?,        ``backpressure key-override``
                    "burst": b?, "clear": bool?, "key_type":
                    "str" | "int" | "bytes", "reason": s?}``
=================== ============================================= ==========================

They go through Kafka exactly as the commands do (persisted, ordered, acknowledged). Without
the right token (or with no ``admin_token`` configured) the answer is 401 and nothing is sent.
Answers: 200 with the acknowledgement, 400 a bad body, 401, 404 an unknown pipeline, 504 no
acknowledgement in time.
"""

from __future__ import annotations

import hmac
import json
import math
from typing import Any

from faust.web import Request, Response, View

from faust_backpressure.app.cli import declared
from faust_backpressure.app.downstream_ops import BREAKER_STATES
from faust_backpressure.app.keyed_ops import KEY_TYPES, MAX_RATE, KeyOverrideCommand, parse_key
from faust_backpressure.app.ops import send_override
from faust_backpressure.app.pause import send_breaker, send_key_override, send_pause
from faust_backpressure.app.registry import Installation, on_cluster
from faust_backpressure.config.validation import is_number
from faust_backpressure.control.override import Override
from faust_backpressure.errors import BackpressureError
from faust_backpressure.tables.limiter_commands import CommandTimeout, send_limiter_command

__all__ = ["ACTIONS", "authorized", "register_admin"]

ACTIONS = ("set-rate", "reset", "emergency-stop", "restore", "pause", "resume", "breaker",
           "key-override")
TIMEOUT = 30.0


class BadRequest(BackpressureError, ValueError):
    pass


def authorized(bp: Installation, request: Request) -> bool:
    """The request carries the configured ``admin_token`` (never true when none is set)."""
    token = bp.settings.admin_token
    header = request.headers.get("Authorization", "")
    if not token or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].encode(), token.encode())


def _text(body: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = body.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value) or len(value) > 1000:
        raise BadRequest(f"{key!r} must be a {'non-empty ' if required else ''}string")
    return value


def _rate(body: dict[str, Any], key: str = "rate", *, required: bool) -> float | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not is_number(value) or not math.isfinite(value) or not 0 < value <= MAX_RATE:
        raise BadRequest(f"{key!r} must be a number in (0, 1e12]")
    return float(value)


def _operator(request: Request, body: dict[str, Any]) -> str:
    by = body.get("by")
    who = by if isinstance(by, str) and by else "http"
    remote = getattr(request, "remote", None)  # faust: the web driver's request (aiohttp's)
    return f"{who[:100]}@{remote or '?'}"


async def _act(bp: Installation, action: str, body: dict[str, Any],
               request: Request) -> dict[str, Any]:
    if action in ("set-rate", "reset"):
        limiter = _text(body, "limiter")
        rate = _rate(body, required=True) if action == "set-rate" else None
        ack = await on_cluster(bp, send_limiter_command, limiter,
                               "update_rate" if action == "set-rate" else "reset", rate=rate,
                               timeout=TIMEOUT)
        return {"limiter": limiter, "epoch": ack.epoch, "rate": ack.rate}
    if action in ("emergency-stop", "restore"):
        limiter = _text(body, "limiter")
        reason = _text(body, "reason", required=False)
        by = _operator(request, body)
        override = (Override.hold(limiter, rate=_rate(body, required=False), by=by,
                                  reason=reason)
                    if action == "emergency-stop" else
                    Override.release(limiter, by=by, reason=reason))
        state = await on_cluster(bp, send_override, override, timeout=TIMEOUT)
        return {"limiter": limiter, "state": state}
    if action == "breaker":
        return await _breaker(bp, body, request)
    if action == "key-override":
        return await _key_override(bp, body, request)
    pipeline = _text(body, "pipeline")
    declared("pipeline", pipeline, bp.pipelines, LookupError)
    acked, workers = await on_cluster(
        bp, send_pause, pipeline, paused=action == "pause", by=_operator(request, body),
        reason=_text(body, "reason", required=False), timeout=TIMEOUT)
    return {"pipeline": pipeline, "paused": action == "pause", "acked": acked,
            "workers": workers}


async def _breaker(bp: Installation, body: dict[str, Any], request: Request
                   ) -> dict[str, Any]:
    dependency, state = _text(body, "dependency"), _text(body, "state")
    if state not in BREAKER_STATES:
        raise BadRequest(f"'state' must be one of {', '.join(BREAKER_STATES)}")
    declared("downstream", dependency, bp.downstreams, LookupError)
    acked, workers = await on_cluster(
        bp, send_breaker, dependency, state=state, by=_operator(request, body),
        reason=_text(body, "reason", required=False), timeout=TIMEOUT)
    return {"dependency": dependency, "state": state, "acked": acked, "workers": workers}


async def _key_override(bp: Installation, body: dict[str, Any], request: Request
                        ) -> dict[str, Any]:
    limit, key, key_type = _text(body, "limit"), _text(body, "key"), body.get("key_type", "str")
    clear = body.get("clear", False)
    if key_type not in KEY_TYPES or not isinstance(clear, bool):
        raise BadRequest("'key_type' must be str, int or bytes; 'clear' true or false")
    declared("keyed limit", limit, bp.keyed_limits, LookupError)
    rate = _rate(body, required=not clear)
    burst = None if clear else _rate(body, "burst", required=False)
    if clear and (rate is not None or body.get("burst") is not None):
        raise BadRequest("'clear' goes without 'rate' and 'burst'")
    try:
        command = KeyOverrideCommand.new(limit, parse_key(key, key_type), rate, burst,
                                         _operator(request, body),
                                         _text(body, "reason", required=False))
    except ValueError as exc:  # a key too long, an int key that is not one, a rate too high
        raise BadRequest(str(exc)) from None
    acked, workers = await on_cluster(bp, send_key_override, command, timeout=TIMEOUT)
    return {"limit": limit, "key": command.shown_key, "rate": command.rate,
            "burst": command.burst, "acked": acked, "workers": workers}


async def _post(bp: Installation, action: str, web: View, request: Request) -> Response:
    if not authorized(bp, request):
        return web.json({"error": "unauthorized: send Authorization: Bearer <token> (the "
                         "worker's FAUST_BP_ADMIN_TOKEN; none set disables writes)"},
                        status=401)
    try:
        body = json.loads(await request.text() or "{}")
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        result = await _act(bp, action, body, request)
    except CommandTimeout as exc:
        return web.json({"error": str(exc)}, status=504)
    except (BadRequest, json.JSONDecodeError) as exc:
        return web.json({"error": str(exc)}, status=400)
    except LookupError as exc:
        return web.json({"error": str(exc)}, status=404)
    return web.json({"ok": True, "action": action, **result})


def _endpoint(bp: Installation, action: str) -> type[View]:
    class Endpoint(View):
        async def post(self, request: Request, **kwargs: Any) -> Response:
            return await _post(bp, action, self, request)

    Endpoint.__name__ = Endpoint.__qualname__ = f"fbp_api_{action.replace('-', '_')}"
    return Endpoint


def register_admin(bp: Installation) -> None:
    """Add ``POST /backpressure/api/<action>`` for each of :data:`ACTIONS` to ``bp.app``."""
    for action in ACTIONS:
        endpoint = _endpoint(bp, action)
        bp.app.page(f"/backpressure/api/{action}", name=endpoint.__name__)(endpoint)
