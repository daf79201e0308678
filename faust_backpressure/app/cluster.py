"""The cluster on any worker's page: each worker's summary, published on the ops topic.

Every ``STATUS_INTERVAL`` seconds each worker publishes a signed ``worker-status/<worker>``
record on the compacted ops topic: its pipelines (counts, source lag, paused, a batch
pipeline's p99 batch latency), its limiters (rate; which it owns), its downstream guards'
breakers and its page's address. Every worker's ops follower (:mod:`.pause`) reads them all,
so any worker's ``/backpressure/`` and dashboard show every worker: stale after
``STALE_AFTER``, no longer shown after ``FORGET_AFTER``. ``backpressure status`` reads them
too. Records are range-checked like all control traffic: a bad one is counted, changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from faust_backpressure.wire.signing import (
    RejectedRecord,
    decode_signed,
    encode_signed,
    number,
)

__all__ = ["STALE_AFTER", "STATUS_INTERVAL", "ClusterView", "WorkerStatusRecord", "worker_body",
           "worker_key"]

#: Seconds between a worker's status records (its summary, its keyed limits' stats).
STATUS_INTERVAL = 5.0
#: A worker not heard from for this long is shown stale (it may be gone or cut off).
STALE_AFTER = 3 * STATUS_INTERVAL
#: A worker not heard from for this long is no longer shown.
FORGET_AFTER = 60 * STATUS_INTERVAL
_MAX_ENTRIES = 200  # pipelines, limiters or guards per worker taken from one record
_COUNTS = ("consumed", "produced", "dead_lettered")


def worker_key(worker: str) -> bytes:
    return f"worker-status/{worker}".encode()


def worker_body(state: dict[str, Any], worker: str, owned: set[str], web: str | None,
                now: float) -> dict[str, Any]:
    """What a worker publishes of its own page's ``state`` (see ``views.snapshot``)."""
    return {"type": "worker-status", "target": worker, "worker": worker, "at": now, "web": web,
            "pipelines": {name: {**{k: p[k] for k in _COUNTS}, "source_lag": p["source_lag"],
                                 "paused": bool(p["paused"]),
                                 # what `backpressure status` shows of a batch pipeline
                                 "batch_p99": (p["batch"]["latency"]["p99"] if p.get("batch")
                                               else None)}
                          for name, p in state["pipelines"].items()},
            "limiters": {name: {"rate": _finite(lim["rate"]), "owned": name in owned}
                         for name, lim in state["limiters"].items()},
            "downstreams": {name: d["breaker"] for name, d in state["downstreams"].items()}}


@dataclass(frozen=True, slots=True)
class WorkerStatusRecord:
    """One worker's summary (checked: numbers in range, bounded sizes, short strings)."""

    worker: str
    at: float
    body: dict[str, Any]

    @staticmethod
    def encode(body: dict[str, Any], secret: bytes | None) -> bytes:
        return encode_signed(dict(body), worker_key(body["target"]), secret)

    @classmethod
    def decode(cls, raw: bytes | None, key: bytes | None,
               secret: bytes | None = None) -> WorkerStatusRecord:
        data, worker = decode_signed(raw, key or b"", secret, name="target",
                                     record_key=worker_key, kind="worker-status",
                                     not_one="not a worker-status record")
        web = data.get("web")
        checked: dict[str, Any] = {
            "web": web[:300] if isinstance(web, str) and web.startswith("http") else None,
            "pipelines": {name[:200]: {**{k: int(number(p, k, 0, 1e15)) for k in _COUNTS},
                                       "source_lag": _optional_count(p, "source_lag"),
                                       "paused": p.get("paused") is True,
                                       # None: not a batch pipeline
                                       "batch_p99": number(p, "batch_p99", 0.0, 1e6,
                                                           optional=True)}
                          for name, p in _entries(data, "pipelines")},
            "limiters": {name[:200]: {"rate": number(lim, "rate", 0.0, 1e12, optional=True),
                                      "owned": lim.get("owned") is True}
                         for name, lim in _entries(data, "limiters")},
            "downstreams": {name[:200]: str(state)[:20]
                            for name, state in _entries(data, "downstreams", dict_values=False)}}
        return cls(worker, number(data, "at", 0.0, 1e11), checked)


def _entries(data: dict[str, Any], field: str, *, dict_values: bool = True
             ) -> list[tuple[str, Any]]:
    got = data.get(field)
    if not isinstance(got, dict):
        raise RejectedRecord(f"{field} must be an object")
    return [(str(name), value) for name, value in list(got.items())[:_MAX_ENTRIES]
            if not dict_values or isinstance(value, dict)]


def _optional_count(body: dict[str, Any], field: str) -> int | None:
    return None if body.get(field) is None else int(number(body, field, 0, 1e15))


def _finite(rate: Any) -> float | None:
    """A rate for JSON (which has no infinity): None when unlimited or unknown."""
    return float(rate) if isinstance(rate, int | float) and math.isfinite(rate) else None


class ClusterView:
    """The latest summary of each worker (this one's too, once it has read its own)."""

    def __init__(self) -> None:
        self._latest: dict[str, WorkerStatusRecord] = {}

    def update(self, record: WorkerStatusRecord) -> None:
        known = self._latest.get(record.worker)
        if known is None or record.at >= known.at:  # a replayed older one changes nothing
            self._latest[record.worker] = record

    def forget(self, worker: str) -> None:
        self._latest.pop(worker, None)

    def rows(self, now: float) -> list[dict[str, Any]]:
        """Every worker heard from lately, by name: its summary, age in s, stale or not."""
        for worker in [w for w, r in self._latest.items() if now - r.at > FORGET_AFTER]:
            del self._latest[worker]
        return [{"worker": worker, "age": round(max(0.0, now - r.at), 1),
                 "stale": now - r.at > STALE_AFTER, **r.body}
                for worker, r in sorted(self._latest.items())]
