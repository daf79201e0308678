"""The root of the library's exceptions: ``except BackpressureError`` catches every error
faust-backpressure raises on purpose.

Each error keeps its other, more specific base too (a timeout is also a ``TimeoutError``, a bad
setting also a ``ValueError``), so code written against those still catches it. No imports: every
layer may use this module.
"""

from __future__ import annotations

__all__ = ["BackpressureError"]


class BackpressureError(Exception):
    """Raised by faust-backpressure (never a Faust, Kafka or user error passed through)."""
