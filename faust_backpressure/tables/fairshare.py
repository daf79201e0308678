"""Max-min fair division of a rate between workers by their declared demand."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["max_min_fair"]


def max_min_fair(capacity: float, demands: Mapping[str, float]) -> dict[str, float]:
    """Water-filling: nobody gets more than it asks for, the rest is split evenly among the
    others, repeatedly. The shares sum to ``min(capacity, sum(demands))``.

    >>> max_min_fair(10, {"a": 2, "b": 8, "c": 8})
    {'a': 2.0, 'b': 4.0, 'c': 4.0}
    """
    shares: dict[str, float] = {}
    remaining = max(0.0, float(capacity))
    ordered = sorted(demands.items(), key=lambda item: (item[1], item[0]))
    left = len(ordered)
    for name, demand in ordered:
        share = min(max(0.0, float(demand)), remaining / left)
        shares[name] = share
        remaining -= share
        left -= 1
    return {name: shares[name] for name in demands}
