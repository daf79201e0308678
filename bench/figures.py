"""Small helpers the benchmarks share: a median with its spread or a bootstrap interval,
processes' CPU time, and the order of the ways in an interleaved round."""

from __future__ import annotations

import contextlib
import random
import statistics
from typing import TypeVar

T = TypeVar("T")


def rotated(ways: list[T], round_index: int) -> list[T]:
    """``ways`` in round ``round_index``'s order: each round starts one further, so no way
    always runs first (or last) in the interleaved rounds."""
    k = round_index % len(ways)
    return ways[k:] + ways[:k]


def median_spread(values: list[float], fmt: str) -> str:
    """``median (min-max)`` of ``values``, each formatted with ``fmt``."""
    return (f"{format(statistics.median(values), fmt)} "
            f"({format(min(values), fmt)}-{format(max(values), fmt)})")


def median_interval(values: list[float], resamples: int = 10_000,
                    seed: int = 25) -> tuple[float, float, float]:
    """The median of ``values`` and a percentile bootstrap 95 % interval of it (seeded: the
    same rounds give the same figures)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values)))
                     for _ in range(resamples))
    return (statistics.median(values), medians[int(0.025 * resamples)],
            medians[int(0.975 * resamples) - 1])


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their children so far."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            for one in (proc, *proc.children(recursive=True)):
                with contextlib.suppress(psutil.Error):
                    times = one.cpu_times()
                    total += times.user + times.system
    return total
