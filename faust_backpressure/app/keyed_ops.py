"""Keyed limits for operators: per-key overrides on every worker, and each worker's keyed status.

Both travel on the app's compacted ops topic (``<app>-fbp-ops``, see :mod:`.pause`), which every
worker follows from its beginning:

* ``keyed/<limit>/<key hex>``: an operator's limits for one key (``key-override``), or their
  removal. Every worker applies it (each owns other keys' table partitions, so an override
  must be on all of them) and acknowledges (``ack/keyed/<limit>/<key hex>/<worker>``); a worker
  started later reads the latest record per key, so overrides hold across restarts. It wins
  over ``limit.set_limits`` (the stored overrides), the ``limits`` function and the default.
* ``keyed-status/<limit>/<worker>``: every :data:`~.cluster.STATUS_INTERVAL` seconds each
  worker's stats of a keyed limit (counts, per-second rates, its top limited keys);
  ``backpressure status`` sums the fresh ones.

Records are signed with the app's secret when it has one and range-checked always; a record
that fails is counted (``rejected`` / ``ops``) and changes nothing. ``<key hex>`` is the key's
table form (:func:`~faust_backpressure.agents.keyed.encode_key`) in hex.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Hashable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from faust_backpressure.agents.gate_base import KEYED_COUNTERS, KEYED_COUNTS
from faust_backpressure.agents.keyed import TOP_KEYS, KeyedRateLimitGate, encode_key
from faust_backpressure.agents.keyed_store import describe_key
from faust_backpressure.limiters.keyed_buckets import KeyLimits
from faust_backpressure.wire.signing import (
    OperatorCommand,
    RejectedRecord,
    decode_signed,
    encode_signed,
    number,
)

__all__ = ["KEY_TYPES", "MAX_RATE", "KeyOverrideCommand",
           "KeyedStatusRecord", "override_key", "parse_key", "status_body"]

MAX_RATE = 1e12  # as set-rate's
MAX_KEY_BYTES = 1024  # a key's table form; longer ones are not keys of ours
KEY_TYPES = ("str", "bytes", "int")


def parse_key(given: str, key_type: str) -> Hashable:
    """A key typed on the command line, as the limit's key function returns it."""
    if key_type == "bytes":
        return given.encode()
    if key_type == "int":
        return int(given)
    return given


def override_key(limit: str, encoded: bytes) -> bytes:
    return f"keyed/{limit}/{encoded.hex()}".encode()


def _target(value: str) -> bytes:
    return f"keyed/{value}".encode()


@dataclass(frozen=True, slots=True)
class KeyOverrideCommand(OperatorCommand):
    """One key's limits on every worker (``rate`` None: the override is removed)."""

    kind: ClassVar[str] = "key-override"
    limit: str
    key: bytes  #: the key's table form (encode_key)
    rate: float | None
    burst: float | None
    command_id: str
    by: str
    at: float
    reason: str = ""

    @classmethod
    def new(cls, limit: str, key: Hashable, rate: float | None, burst: float | None, by: str,
            reason: str = "") -> KeyOverrideCommand:
        encoded = encode_key(key)
        if len(encoded) > MAX_KEY_BYTES:
            raise ValueError(f"the key is longer than {MAX_KEY_BYTES} bytes")
        for name, value in (("rate", rate), ("burst", burst)):
            if value is not None and not 0 < value <= MAX_RATE:
                raise ValueError(f"{name} must be in (0, {MAX_RATE:g}], got {value!r}")
        if rate is not None and burst is None:
            burst = rate  # one second of tokens, as the limit's own default
        return cls(limit, encoded, rate, None if rate is None else burst, uuid.uuid4().hex,
                   by, time.time(), reason)

    @property
    def key_record(self) -> bytes:
        return override_key(self.limit, self.key)

    @property
    def limits(self) -> KeyLimits | None:
        if self.rate is None or self.burst is None:
            return None
        return KeyLimits(self.rate, self.burst)

    @property
    def shown_key(self) -> str:
        return describe_key(self.key)

    def encode(self, secret: bytes | None = None) -> bytes:
        return self._encode({"target": f"{self.limit}/{self.key.hex()}", "rate": self.rate,
                             "burst": self.burst}, self.key_record, secret)

    @classmethod
    def decode(cls, raw: bytes | None, key: bytes | None,
               secret: bytes | None = None) -> KeyOverrideCommand:
        data, target = cls._decode(raw, key, secret, name="target", record_key=_target)
        limit, _, hexed = target.rpartition("/")
        try:
            encoded = bytes.fromhex(hexed)
        except ValueError:
            raise RejectedRecord("the key is not hex") from None
        if not limit or not encoded or len(encoded) > MAX_KEY_BYTES:
            raise RejectedRecord("no limit or no key, or a key too long")
        rate = burst = None
        if data.get("rate") is not None:
            rate = number(data, "rate", 0.0, MAX_RATE)
            burst = number(data, "burst", 0.0, MAX_RATE)
            if rate <= 0 or burst <= 0:
                raise RejectedRecord("rate and burst must be positive")
        return cls(limit, encoded, rate, burst, *cls.common(data))


def status_key(limit: str, worker: str) -> bytes:
    return f"keyed-status/{limit}/{worker}".encode()


def status_body(gate: KeyedRateLimitGate, worker: str, previous: dict[str, Any] | None,
                now: float) -> dict[str, Any]:
    """What a worker publishes of one keyed limit: its stats, per-second rates since
    ``previous`` (its last published body), the top limited keys."""
    stats = asdict(gate.stats())
    body: dict[str, Any] = {"type": "keyed-status", "target": f"{gate.name}/{worker}",
                            "worker": worker, "at": now, "agent": gate.agent_name,
                            "on_limit": gate.on_limit, "rate": stats["rate"],
                            "burst": stats["burst"], "top_limited": stats["top_limited"],
                            **{k: stats[k] for k in KEYED_COUNTS}}
    for field in KEYED_COUNTERS:
        body[f"{field}_per_s"] = None
        if previous is not None and now > float(previous["at"]):
            body[f"{field}_per_s"] = max(0.0, (stats[field] - previous[field])
                                         / (now - float(previous["at"])))
    return body


@dataclass(frozen=True, slots=True)
class KeyedStatusRecord:
    """A worker's published stats of one keyed limit (checked: numbers in range)."""

    limit: str
    worker: str
    at: float
    body: dict[str, Any]

    @staticmethod
    def encode(body: dict[str, Any], secret: bytes | None) -> bytes:
        return encode_signed(dict(body), b"keyed-status/" + body["target"].encode(), secret)

    @classmethod
    def decode(cls, raw: bytes | None, key: bytes | None,
               secret: bytes | None = None) -> KeyedStatusRecord:
        data, target = decode_signed(raw, key or b"", secret, name="target",
                                     record_key=lambda t: f"keyed-status/{t}".encode(),
                                     kind="keyed-status", not_one="not a keyed-status record")
        limit, _, worker = target.partition("/")
        checked: dict[str, Any] = {"agent": str(data.get("agent", ""))[:200],
                                   "on_limit": str(data.get("on_limit", ""))[:20],
                                   "rate": number(data, "rate", 0.0, MAX_RATE),
                                   "burst": number(data, "burst", 0.0, MAX_RATE)}
        for field in KEYED_COUNTS:
            checked[field] = int(number(data, field, 0, 1e15))
        for field in KEYED_COUNTERS:
            checked[f"{field}_per_s"] = number(data, f"{field}_per_s", 0.0, 1e12, optional=True)
        top = data.get("top_limited")
        checked["top_limited"] = [
            {"key": str(t.get("key", ""))[:200], "type": str(t.get("type", ""))[:20],
             "refused": int(number(t, "refused", 0, 1e15)),
             "limits": t.get("limits") if isinstance(t.get("limits"), dict) else None}
            for t in (top if isinstance(top, list) else [])[:TOP_KEYS] if isinstance(t, dict)]
        return cls(limit, worker, number(data, "at", 0.0, 1e11), checked)
