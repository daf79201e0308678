"""The keys a keyed limit refused most lately, for operators (never for metric labels).

Counted only on refusals (an admitted event costs nothing), over two windows: the current one
and the one before, so "lately" is the last one to two windows. Memory is bounded: when a
window holds ``capacity`` keys, the keys refused once are dropped (the heavy ones stay).
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Hashable

__all__ = ["RefusedKeys", "describe_key"]


def describe_key(encoded: bytes) -> str:
    """A key in :func:`~faust_backpressure.agents.keyed.encode_key`'s form, as text for people
    (bytes not valid UTF-8 are escaped)."""
    kind, body = encoded[:1], encoded[1:]
    text = body.decode("utf-8", errors="backslashreplace")
    if kind == b"j":
        try:
            return str(json.loads(text))
        except ValueError:
            return text
    return text


class RefusedKeys:
    """Refusals by key over the current and the previous ``window`` seconds."""

    __slots__ = ("_current", "_previous", "_started", "capacity", "window")

    def __init__(self, window: float = 60.0, capacity: int = 10_000) -> None:
        self.window = window
        self.capacity = capacity
        self._current: dict[Hashable, int] = {}
        self._previous: dict[Hashable, int] = {}
        self._started: float | None = None

    def _roll(self, now: float) -> None:
        if self._started is None:
            self._started = now
        elapsed = now - self._started
        if elapsed >= self.window:
            # a gap of two windows or more: the previous one is over too
            self._previous = self._current if elapsed < 2 * self.window else {}
            self._current = {}
            self._started = now

    def count(self, key: Hashable, now: float) -> None:
        self._roll(now)
        current = self._current
        n = current.get(key)
        if n is None and len(current) >= self.capacity:
            self._current = current = {k: v for k, v in current.items() if v > 1}
            if len(current) >= self.capacity:
                return  # every key refused more than once: a new one waits for a window
        current[key] = (n or 0) + 1

    def top(self, n: int, now: float) -> list[tuple[Hashable, int]]:
        """The ``n`` keys refused most in the last one to two windows, most first."""
        self._roll(now)
        merged = dict(self._previous)
        for key, count in self._current.items():
            merged[key] = merged.get(key, 0) + count
        return heapq.nlargest(n, merged.items(), key=lambda item: item[1])
