"""What a called system says about itself: "slow down" (429) and "unavailable" (503, down).

Raised from the call site and understood by :class:`~faust_backpressure.agents.downstream.
Downstream`: a :class:`SlowDown` pauses the dependency on every worker and retries the same
event after the pause; a :class:`DependencyUnavailable` counts as a failure for the circuit
breaker and is retried once the breaker lets calls through. Neither is dead-lettered.

Example::

    if resp.status in (429, 503):
        raise from_http(resp.status, resp.headers.get("Retry-After"))
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Iterable, Mapping

from faust_backpressure.config.validation import is_number
from faust_backpressure.errors import BackpressureError

__all__ = ["DependencyUnavailable", "SlowDown", "from_http", "parse_retry_after",
           "quota_from_headers"]

#: The most calls/s an announced quota may say: above it, a header is not believed.
_MAX_QUOTA = 1e9
_PARAM = re.compile(r"^\s*([a-z*][a-z0-9_.*-]*)\s*=\s*([0-9.]+)\s*$")


class SlowDown(BackpressureError):
    """The called system asks for a pause: ``retry_after`` in seconds or as an HTTP date, as
    the system said it (None: the guard's default), e.g. HTTP 429 with ``Retry-After``. The
    guard reads it with :func:`parse_retry_after` and its own default and cap."""

    def __init__(self, retry_after: float | str | None = None,
                 reason: str = "slow down") -> None:
        super().__init__(f"{reason} (retry after {retry_after} s)" if retry_after is not None
                         else reason)
        self.retry_after = retry_after
        self.reason = reason


class DependencyUnavailable(BackpressureError):
    """The called system is down or failing as a whole (HTTP 503 without ``Retry-After``,
    refused connections): a failure for the breaker, not a fault of the event."""


def parse_retry_after(value: str | float | None, *, default: float, maximum: float,
                      now: float | None = None) -> float:
    """Seconds to wait from a ``Retry-After`` value: a number of seconds, or an HTTP date
    (RFC 9110). Missing or unreadable: ``default``; never below 0 nor above ``maximum``
    (a hostile or buggy header cannot stop the stream for a day)."""
    seconds: float | None = None
    if is_number(value) and not isinstance(value, bool):
        seconds = float(value)  # type: ignore[arg-type]
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None and when.tzinfo is not None:
                seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds is None or not math.isfinite(seconds):
        seconds = default
    return min(max(seconds, 0.0), maximum)


def from_http(status: int, retry_after: str | float | None = None) -> Exception:
    """The exception for an HTTP status: 429 -> :class:`SlowDown`; 503 with ``Retry-After``
    -> :class:`SlowDown`, without -> :class:`DependencyUnavailable`; other 5xx ->
    :class:`DependencyUnavailable`; anything else -> ``ValueError`` (the event's fault)."""
    if status == 429 or (status == 503 and retry_after is not None):
        return SlowDown(retry_after, f"HTTP {status}")
    if 500 <= status < 600:
        return DependencyUnavailable(f"HTTP {status}")
    return ValueError(f"HTTP {status}")


def quota_from_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]], *,
                       window: float | None = None) -> float | None:
    """The quota an HTTP answer announces, in calls per second, or None.

    Read in this order: the IETF ``RateLimit-Policy`` field (draft-ietf-httpapi-ratelimit-
    headers: items ``"name";q=100;w=60``, or ``100;w=60`` in its earlier drafts; the strictest
    item counts); then ``RateLimit-Limit`` or ``X-RateLimit-Limit`` (a number of calls), per
    ``window`` seconds, the window the API documents (None: not used). Unreadable, zero or
    absurd values are ignored: a header cannot set a quota the guard does not believe."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    fields: dict[str, str] = {}
    for name, value in pairs:
        key = str(name).lower()
        fields[key] = f"{fields[key]}, {value}" if key in fields else str(value)
    best: float | None = None
    for item in _split_items(fields.get("ratelimit-policy", "")):
        rate = _policy_rate(item, window)
        if rate is not None and (best is None or rate < best):
            best = rate
    if best is None and window is not None and window > 0:
        for key in ("ratelimit-limit", "x-ratelimit-limit"):
            limit = _number(fields.get(key, "").split(",")[0].split(";")[0])
            if limit is not None:
                best = limit / window
                break
    return best if best is not None and 0 < best <= _MAX_QUOTA else None


def _split_items(value: str) -> list[str]:
    """A structured-field list split at commas outside quoted strings."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def _policy_rate(item: str, window: float | None) -> float | None:
    head, *params = item.split(";")
    values = {m.group(1): _number(m.group(2)) for p in params if (m := _PARAM.match(p.lower()))}
    quota = values.get("q")
    if quota is None:
        quota = _number(head)  # the earlier drafts: the item is the quota
    seconds = values.get("w", window)
    if quota is None or seconds is None or seconds <= 0:
        return None
    return quota / seconds


def _number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
