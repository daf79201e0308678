"""Checks of numeric arguments and settings, shared by every layer.

A ``bool`` is an ``int`` to Python but never a count or a rate here: ``True`` is refused
wherever a number is asked for. Errors are ``ValueError`` naming the argument.

Example::

    rate = check_number("tokens_per_second", rate, low=0, strict=True)   # finite, > 0
    window = check_int("window", window, low=1)                          # int, >= 1
"""

from __future__ import annotations

import math
from typing import TypeGuard

__all__ = ["check_int", "check_number", "is_int", "is_number"]


def is_number(value: object) -> TypeGuard[int | float]:
    """An ``int`` or ``float`` that is not a ``bool`` (NaN and infinities included)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: object) -> TypeGuard[int]:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_number(name: str, value: object, low: float | None = None, *,
                 strict: bool = False) -> float:
    """``value`` as a float if it is a finite number ``>= low`` (``> low`` if ``strict``;
    any finite number if ``low`` is None), else ``ValueError``."""
    ok = is_number(value) and math.isfinite(value) and (
        low is None or (value > low if strict else value >= low))
    if not ok:
        bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_int(name: str, value: object, low: int) -> int:
    """``value`` if it is an ``int >= low`` (not a bool), else ``ValueError``."""
    if not is_int(value) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value
