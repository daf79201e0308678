"""The root of the library's exceptions: ``except BackpressureError`` catches every error
faust-backpressure raises on purpose.

Each error keeps its other, more specific base too (a timeout is also a ``TimeoutError``, a bad
setting also a ``ValueError``), so code written against those still catches it. No imports: every
layer may use this module.
"""

from __future__ import annotations

__all__ = ["BackpressureError", "ConflictingOption"]


class BackpressureError(Exception):
    """Raised by faust-backpressure (never a Faust, Kafka or user error passed through)."""


class ConflictingOption(BackpressureError, ValueError):
    """An option given for a per-app part (settings, the limiter channel, a shared limiter)
    that exists already disagrees with the value it was made with."""

    def __init__(self, options: str | list[str] | tuple[str, ...], message: str) -> None:
        super().__init__(message)
        #: The options that differ, as the caller named them.
        self.options: tuple[str, ...] = (options,) if isinstance(options, str) else tuple(options)
