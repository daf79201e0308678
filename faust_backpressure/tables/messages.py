"""Wire format of the distributed limiter protocol: lease requests, commands, grants, acks.

Everything is a JSON object with ``"v": 1``. Requests and commands may be signed with an
HMAC-SHA256 over the record key and the canonical JSON of the body. Decoding validates every field:
a record that fails raises :class:`RejectedRecord` and is never granted.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from faust_backpressure.config.validation import is_number

__all__ = [
    "PROTOCOL_VERSION",
    "Ack",
    "Command",
    "Grant",
    "LeaseRequest",
    "LimiterConfig",
    "RejectedRecord",
    "decode_reply",
    "decode_request",
    "encode",
]

PROTOCOL_VERSION = 1
_MAX_ID = 200
_MAX_TOKENS = 1e12


class RejectedRecord(ValueError):
    """A record on the request topic is malformed, forged or for another key."""

    def __init__(self, reason: str, limiter_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.limiter_id = limiter_id


@dataclass(frozen=True, slots=True)
class LimiterConfig:
    """How a bucket is created when the table has none; a persisted config always wins."""

    rate: float
    burst: float
    lease_ttl: float
    per_consumer: bool = False
    initial_tokens: float | None = None


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    request_id: str
    limiter_id: str
    worker_id: str
    demand: float
    requested: int
    sent_at: float
    lease_id: str | None
    unspent: float
    config: LimiterConfig
    type: str = "lease"


@dataclass(frozen=True, slots=True)
class Command:
    """``update_rate`` (with ``rate``) or ``reset``, applied by the owner once per id."""

    type: str
    command_id: str
    limiter_id: str
    worker_id: str
    sent_at: float
    rate: float | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    request_id: str
    limiter_id: str
    worker_id: str
    lease_id: str
    tokens: int
    ttl: float
    renews: str | None
    retry_after: float
    epoch: int
    rate: float
    burst: float
    type: str = "grant"


@dataclass(frozen=True, slots=True)
class Ack:
    command_id: str
    limiter_id: str
    worker_id: str
    epoch: int
    rate: float
    type: str = "ack"


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _signature(secret: bytes, key: bytes, body: dict[str, Any]) -> str:
    return hmac.new(secret, key + b"\n" + _canonical(body), hashlib.sha256).hexdigest()


def encode(message: LeaseRequest | Command | Grant | Ack, *, key: bytes = b"",
           secret: bytes | None = None) -> bytes:
    body = {"v": PROTOCOL_VERSION, **asdict(message)}
    if secret is not None:
        body["sig"] = _signature(secret, key, body)
    return _canonical(body)


# -- validation -------------------------------------------------------------------------------


def _str(body: dict[str, Any], name: str, *, optional: bool = False) -> Any:
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_ID:
        raise RejectedRecord(f"{name} must be a non-empty string of at most {_MAX_ID} chars")
    return value


def _num(body: dict[str, Any], name: str, low: float, high: float = _MAX_TOKENS,
         *, optional: bool = False) -> Any:
    value = body.get(name)
    if value is None and optional:
        return None
    if not is_number(value) or not math.isfinite(value) or not low <= value <= high:
        raise RejectedRecord(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _config(raw: Any) -> LimiterConfig:
    if not isinstance(raw, dict):
        raise RejectedRecord("config must be an object")
    per_consumer = raw.get("per_consumer", False)
    if not isinstance(per_consumer, bool):
        raise RejectedRecord("config.per_consumer must be a boolean")
    burst = _num(raw, "burst", 1.0)
    initial = _num(raw, "initial_tokens", 0.0, burst, optional=True)
    return LimiterConfig(rate=_num(raw, "rate", 1e-9), burst=burst,
                         lease_ttl=_num(raw, "lease_ttl", 0.01, 3600.0),
                         per_consumer=per_consumer, initial_tokens=initial)


def _load(key: bytes | None, value: bytes | None, secret: bytes | None) -> dict[str, Any]:
    if not isinstance(key, bytes) or not key:
        raise RejectedRecord("record has no key")
    try:
        body = json.loads(value) if value is not None else None
    except (ValueError, UnicodeDecodeError):
        raise RejectedRecord("value is not JSON") from None
    if not isinstance(body, dict):
        raise RejectedRecord("value is not a JSON object")
    if body.get("v") != PROTOCOL_VERSION:
        raise RejectedRecord(f"unsupported protocol version {body.get('v')!r}")
    if secret is not None:
        sig = body.pop("sig", None)
        if not isinstance(sig, str) or not hmac.compare_digest(
                sig, _signature(secret, key, body)):
            raise RejectedRecord("bad or missing signature")
    return body


def decode_request(key: bytes | None, value: bytes | None,
                   secret: bytes | None = None) -> LeaseRequest | Command:
    """Parse and validate one record of the request topic or raise :class:`RejectedRecord`."""
    limiter_key: str | None = None
    with contextlib.suppress(UnicodeDecodeError):
        limiter_key = key.decode() if isinstance(key, bytes) else None
    try:
        body = _load(key, value, secret)
        limiter_id = _str(body, "limiter_id")
        if limiter_id != limiter_key:
            raise RejectedRecord("limiter_id does not match the record key")
        kind = body.get("type")
        if kind == "lease":
            requested = _num(body, "requested", 0.0)
            return LeaseRequest(
                request_id=_str(body, "request_id"), limiter_id=limiter_id,
                worker_id=_str(body, "worker_id"), demand=_num(body, "demand", 0.0),
                requested=int(requested), sent_at=_num(body, "sent_at", 0.0, 1e11),
                lease_id=_str(body, "lease_id", optional=True),
                unspent=_num(body, "unspent", 0.0), config=_config(body.get("config")))
        if kind in ("update_rate", "reset"):
            rate = _num(body, "rate", 1e-9, optional=kind == "reset")
            return Command(type=kind, command_id=_str(body, "command_id"), limiter_id=limiter_id,
                           worker_id=_str(body, "worker_id"),
                           sent_at=_num(body, "sent_at", 0.0, 1e11), rate=rate)
        raise RejectedRecord(f"unknown record type {kind!r}")
    except RejectedRecord as exc:
        exc.limiter_id = limiter_key
        raise


def decode_reply(value: bytes | None) -> Grant | Ack | None:
    """Parse a record of the grant topic; ``None`` for anything this version does not know."""
    try:
        body = json.loads(value) if value is not None else None
        if not isinstance(body, dict) or body.pop("v", None) != PROTOCOL_VERSION:
            return None
        kind = body.get("type")
        if kind == "grant":
            return Grant(**body)
        if kind == "ack":
            return Ack(**body)
    except (ValueError, TypeError):
        pass
    return None
