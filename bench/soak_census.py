"""What grows in a soak worker (``bench/soak_app.py``): a census of the garbage collector's
objects by type, diffed against the census at the end of the warm-up, and optionally
tracemalloc's allocation sites by growth.

Env: ``FBP_SOAK_WARMUP`` (seconds; the baseline is taken at the first census after it),
``FBP_SOAK_TRACEMALLOC`` (frames per allocation, e.g. 1 or 8; unset: off, it costs CPU),
``FBP_SOAK_COLLECT`` (set: each census first runs a full collection and reports what it freed
by type, so that only live objects are counted; this changes what the samples see).
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
from collections import Counter
from typing import Any

TOP = 10
FRAMES = int(os.environ.get("FBP_SOAK_TRACEMALLOC") or 0)
COLLECT = bool(os.environ.get("FBP_SOAK_COLLECT"))
if FRAMES:
    tracemalloc.start(FRAMES)


def name(o: object) -> str:
    return f"{type(o).__module__}.{type(o).__qualname__}"


def collect() -> dict[str, Any]:
    """A full collection: how many objects it freed (unreachable cycles waiting for it),
    and the most common types among them."""
    before = len(gc.get_objects())
    gc.set_debug(gc.DEBUG_SAVEALL)  # what it finds goes to gc.garbage instead of away
    try:
        gc.collect()
        kinds = Counter(name(o) for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    gc.collect()  # now really free them
    return {"freed": before - len(gc.get_objects()),
            "freed_types": kinds.most_common(TOP)}


def clients() -> list[list[Any]]:
    """Every aiokafka client: its id, the topics it asks metadata for (0: all the broker's),
    and the topics its metadata holds."""
    from aiokafka.client import AIOKafkaClient
    return sorted([c._client_id, len(c._topics), len(c.cluster._partitions)]
                  for c in gc.get_objects() if isinstance(c, AIOKafkaClient))


def by_type() -> Counter[str]:
    """Objects by type; dicts also by their first keys (records of one kind share them), as
    ``dict{key1,key2,...}``."""
    counts: Counter[str] = Counter()
    for o in gc.get_objects():
        kind = type(o)
        counts[f"{kind.__module__}.{kind.__qualname__}"] += 1
        if kind is dict:
            counts["dict{" + ",".join(str(k)[:20] for k in list(o)[:4]) + "}"] += 1
    return counts


class Census:
    """Call ``take()`` once a minute; it returns ``None`` during the warm-up, then the top
    growers since the warm-up's end (the baseline is the first census after it)."""

    def __init__(self, warmup: float | None = None) -> None:
        self.warmup = float(os.environ.get("FBP_SOAK_WARMUP", "300")) if warmup is None \
            else warmup
        self.began = time.monotonic()
        self.base: Counter[str] | None = None
        self.base_snapshot: tracemalloc.Snapshot | None = None

    def take(self) -> dict[str, Any] | None:
        if time.monotonic() - self.began < self.warmup:
            return None
        freed = collect() if COLLECT else {}
        counts = by_type()
        snapshot = self._snapshot()
        if self.base is None:
            self.base, self.base_snapshot = counts, snapshot
            return {"baseline": sum(n for k, n in counts.items() if not k.startswith("dict{")),
                    **freed}
        counts.subtract(self.base)
        shapes = Counter({k: n for k, n in counts.items() if k.startswith("dict{")})
        types = Counter({k: n for k, n in counts.items() if not k.startswith("dict{")})
        line: dict[str, Any] = {
            "grown": [(name, n) for name, n in types.most_common(TOP) if n > 0],
            # everything that grew less everything that shrank
            "net": sum(types.values()),
            "dicts": [(name, n) for name, n in shapes.most_common(5) if n > 0],
            # what a full collection would free now: garbage waiting for generation 2
            "young": [len(gc.get_objects(generation=g)) for g in (0, 1)],
            "full_collections": gc.get_stats()[2]["collections"],
            "clients": clients(),
            **freed,
        }
        if snapshot is not None and self.base_snapshot is not None:
            line["sites"] = sites(snapshot, self.base_snapshot)
        return line

    @staticmethod
    def _snapshot() -> tracemalloc.Snapshot | None:
        if not tracemalloc.is_tracing():
            return None
        return tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)])


def sites(now: tracemalloc.Snapshot, base: tracemalloc.Snapshot) -> list[list[Any]]:
    """The allocation sites (their innermost frames, then callers) that grew the most, KiB."""
    key = "traceback" if FRAMES > 1 else "lineno"
    found = []
    for stat in now.compare_to(base, key)[:TOP]:
        if stat.size_diff <= 0:
            break
        where = " < ".join(f"{'/'.join(f.filename.split('/')[-2:])}:{f.lineno}"
                           for f in reversed(stat.traceback))
        found.append([where, stat.size_diff // 1024, stat.count_diff])
    return found
