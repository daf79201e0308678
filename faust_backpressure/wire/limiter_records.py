"""Wire format of the distributed limiter protocol: lease requests, commands, grants, acks.

Everything is a JSON object with ``"v": 1``. With a secret, every record (requests, commands,
grants, acks) is signed with an HMAC-SHA256 over the record key and the canonical JSON of the body
(see ``signing``): a request's key is its limiter id, a reply's the worker id it answers.
Decoding validates every field (type, range, finiteness): a record that fails is never granted
or applied. :func:`decode_request` raises :class:`RejectedRecord` for it; the decoders of a whole
record (:func:`decode_requests`, :func:`decode_reply_record`) return a :class:`Rejected` in its
place, so the valid requests of a batch still count.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from faust_backpressure.wire.signing import (
    UNKNOWN,
    WRONG_KEY,
    Rejected,
    RejectedRecord,
    encode_signed,
    load_json,
    number,
    text,
    verify,
)

__all__ = ["PROTOCOL_VERSION", "Ack", "Command", "Grant", "LeaseRequest", "LimiterConfig",
           "Rejected", "RejectedRecord", "decode_replies", "decode_reply", "decode_reply_record",
           "decode_request", "decode_requests", "encode", "encode_batch", "encode_replies"]

PROTOCOL_VERSION = 1
_MAX_TOKENS = 1e12
#: Largest epoch, sequence number or count a record may carry (exact in a JSON double).
_MAX_INT = 2.0**53


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
    """A worker's request to a limiter's owner for a rate lease (its demand and what is unspent)."""

    request_id: str
    limiter_id: str
    worker_id: str
    demand: float
    requested: int
    sent_at: float
    lease_id: str | None
    unspent: float
    config: LimiterConfig
    #: Per worker and limiter, increasing: a worker has one request in flight per limiter, so
    #: the owner keeps only each worker's last one (an older ``seq`` is a superseded request).
    seq: int = 0
    #: The worker's recent answer time (first send to grant, seconds): a busy owner sizes the
    #: lease to last until the next answer can arrive.
    rtt: float = 0.0
    #: The most permits one call asked for since the worker's request before this one (a
    #: batch's cost): the owner makes the lease's cap at least that, up to the burst. 0: not
    #: known (a worker of an earlier version).
    largest: int = 0
    type: str = "lease"


@dataclass(frozen=True, slots=True)
class Command:
    """``update_rate`` (with ``rate``, and maybe a new ``burst``) or ``reset``, applied by the
    owner once per id."""

    type: str
    command_id: str
    limiter_id: str
    worker_id: str
    sent_at: float
    rate: float | None = None
    burst: float | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """The owner's answer to a ``LeaseRequest``: a lease (tokens, a rate share; maybe none) and
    when to ask again (``retry_after``)."""

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
    #: Rate leases: permits/s this worker may admit until the lease expires, and the most
    #: of them it may hold unspent (its local burst).
    share: float = 0.0
    share_cap: float = 0.0
    type: str = "grant"


@dataclass(frozen=True, slots=True)
class Ack:
    """The owner's acknowledgement that it applied a ``Command`` (the limiter's rate after it)."""

    command_id: str
    limiter_id: str
    worker_id: str
    epoch: int
    rate: float
    type: str = "ack"


def _fields(message: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` without its deep copies (the hot path of every request)."""
    body = {name: getattr(message, name) for name in message.__dataclass_fields__}
    if isinstance(message, Command) and message.burst is None:
        del body["burst"]  # the bytes of a command without one stay as they were
    config = body.get("config")
    if isinstance(config, LimiterConfig):
        body["config"] = _fields(config)
    return body


def encode(message: LeaseRequest | Command | Grant | Ack, *, key: bytes = b"",
           secret: bytes | None = None) -> bytes:
    return encode_signed({"v": PROTOCOL_VERSION, **_fields(message)}, key, secret)


# -- validation -------------------------------------------------------------------------------


def _num(body: dict[str, Any], name: str, low: float, high: float = _MAX_TOKENS,
         *, optional: bool = False) -> Any:
    return number(body, name, low, high, optional=optional)


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


#: Most requests one batch record may carry (a worker sends one record per partition per pass).
MAX_BATCH = 10_000


def _versioned(body: Any, not_one: str) -> dict[str, Any]:
    """``body`` if it is a JSON object of this protocol version (``not_one``: the reason if
    it is no object)."""
    if not isinstance(body, dict):
        raise RejectedRecord(not_one)
    if body.get("v") != PROTOCOL_VERSION:
        raise RejectedRecord(f"unsupported protocol version {body.get('v')!r:.40}",
                             code=UNKNOWN)
    return body


def _check(key: bytes, raw: Any, secret: bytes | None) -> dict[str, Any]:
    body = _versioned(raw, "value is not a JSON object")
    if secret is not None:
        verify(secret, key, body)
    return body


def _load(key: bytes | None, value: bytes | None) -> Any:
    if not isinstance(key, bytes) or not key:
        raise RejectedRecord("record has no key", code=WRONG_KEY)
    return None if value is None else load_json(value)


def _parse(body: dict[str, Any], limiter_key: str | None) -> LeaseRequest | Command:
    limiter_id = text(body, "limiter_id")
    if limiter_id != limiter_key:
        raise RejectedRecord("limiter_id does not match the record key", code=WRONG_KEY)
    kind = body.get("type")
    if kind == "lease":
        requested = _num(body, "requested", 0.0)
        request_id = text(body, "request_id")
        return LeaseRequest(
            request_id=request_id, limiter_id=limiter_id, seq=int(_num(body, "seq", 0.0, _MAX_INT)),
            worker_id=text(body, "worker_id"), demand=_num(body, "demand", 0.0),
            requested=int(requested), sent_at=_num(body, "sent_at", 0.0, 1e11),
            lease_id=text(body, "lease_id", optional=True),
            unspent=_num(body, "unspent", 0.0), config=_config(body.get("config")),
            rtt=_num(body, "rtt", 0.0, 3600.0, optional=True) or 0.0,
            largest=int(_num(body, "largest", 0.0, optional=True) or 0))
    if kind in ("update_rate", "reset"):
        rate = _num(body, "rate", 1e-9, optional=kind == "reset")
        burst = _num(body, "burst", 1.0, optional=True) if kind == "update_rate" else None
        return Command(type=kind, command_id=text(body, "command_id"), limiter_id=limiter_id,
                       worker_id=text(body, "worker_id"),
                       sent_at=_num(body, "sent_at", 0.0, 1e11), rate=rate, burst=burst)
    raise RejectedRecord(f"unknown record type {kind!r:.40}", code=UNKNOWN)


def _key_text(key: bytes | None) -> str | None:
    """The limiter id a record key names (None: no key, or not UTF-8)."""
    with contextlib.suppress(UnicodeDecodeError):
        return key.decode() if isinstance(key, bytes) else None
    return None


def decode_request(key: bytes | None, value: bytes | None,
                   secret: bytes | None = None) -> LeaseRequest | Command:
    """Parse and validate one record of the request topic or raise :class:`RejectedRecord`."""
    limiter_key = _key_text(key)
    try:
        body = _load(key, value)
        assert key is not None
        return _parse(_check(key, body, secret), limiter_key)
    except RejectedRecord as exc:
        exc.limiter_id = limiter_key
        raise


def encode_batch(messages: list[LeaseRequest | Command],
                 secret: bytes | None = None) -> tuple[bytes, bytes]:
    """``(key, value)`` of one record carrying several requests/commands: a JSON array of
    their bodies, each signed as if sent alone (key = its limiter id). All of them must map to
    the same partition; the record key is the first one's limiter id."""
    key = messages[0].limiter_id.encode()
    bodies = [encode(m, key=m.limiter_id.encode(), secret=secret) for m in messages]
    return key, b"[" + b",".join(bodies) + b"]"


def decode_requests(key: bytes | None, value: bytes | None, secret: bytes | None = None
                    ) -> list[LeaseRequest | Command | Rejected]:
    """Parse a record of the request topic: one request (an object) or a batch (an array,
    see :func:`encode_batch`). Never raises: a bad record is one :class:`Rejected`; in a
    batch, each bad element is one, and the others are still valid."""
    if not (value or b"").lstrip().startswith(b"["):
        try:
            return [decode_request(key, value, secret)]
        except RejectedRecord as exc:  # it names the record key's limiter
            return [exc.rejected()]
    try:
        bodies = _load(key, value)
        if not isinstance(bodies, list) or not 0 < len(bodies) <= MAX_BATCH:
            raise RejectedRecord(f"a batch is an array of 1 to {MAX_BATCH} requests")
    except RejectedRecord as exc:
        return [exc.rejected(_key_text(key))]
    out: list[LeaseRequest | Command | Rejected] = []
    for body in bodies:
        lid = body.get("limiter_id") if isinstance(body, dict) else None
        lid = lid if isinstance(lid, str) and 0 < len(lid) <= 200 else None
        try:
            if lid is None:
                raise RejectedRecord("batch element has no limiter_id")
            out.append(_parse(_check(lid.encode(), body, secret), lid))
        except RejectedRecord as exc:
            out.append(exc.rejected(lid))
    return out


def _reply(raw: Any, secret: bytes | None) -> Grant | Ack:
    body = _versioned(raw, "reply is not a JSON object")
    worker_id = text(body, "worker_id")
    if secret is not None:  # signed by the owner with the key it is sent under
        verify(secret, worker_id.encode(), body)
    kind = body.get("type")
    limiter_id, epoch = text(body, "limiter_id"), int(_num(body, "epoch", 0.0, _MAX_INT))
    rate = _num(body, "rate", 1e-9)
    if kind == "grant":
        return Grant(request_id=text(body, "request_id"), limiter_id=limiter_id,
                     worker_id=worker_id, lease_id=text(body, "lease_id"),
                     tokens=int(_num(body, "tokens", 0.0)), ttl=_num(body, "ttl", 0.0, 3600.0),
                     renews=text(body, "renews", optional=True),
                     retry_after=_num(body, "retry_after", 0.0, 3600.0), epoch=epoch,
                     rate=rate, burst=_num(body, "burst", 1.0),
                     share=_num(body, "share", 0.0, optional=True) or 0.0,
                     share_cap=_num(body, "share_cap", 0.0, optional=True) or 0.0)
    if kind == "ack":
        return Ack(command_id=text(body, "command_id"), limiter_id=limiter_id,
                   worker_id=worker_id, epoch=epoch, rate=rate)
    raise RejectedRecord(f"unknown reply type {kind!r:.40}", code=UNKNOWN)


def decode_reply_record(value: bytes | None, secret: bytes | None = None
                        ) -> list[Grant | Ack | Rejected]:
    """A record of the grant topic: one reply (an object) or a batch (an array), each reply
    validated (and its signature checked when there is a ``secret``) on its own. Never
    raises: a bad record, or each bad reply of a batch, is one :class:`Rejected`."""
    try:
        body = load_json(value)
        bodies = body if isinstance(body, list) else [body]
        if not 0 < len(bodies) <= MAX_BATCH:
            raise RejectedRecord(f"a batch is an array of 1 to {MAX_BATCH} replies")
    except RejectedRecord as exc:
        return [exc.rejected()]
    out: list[Grant | Ack | Rejected] = []
    for one in bodies:
        try:
            out.append(_reply(one, secret))
        except RejectedRecord as exc:
            out.append(exc.rejected())
    return out


def decode_reply(value: bytes | None, secret: bytes | None = None) -> Grant | Ack | None:
    """Parse a record of the grant topic; ``None`` for anything not one valid reply."""
    replies = decode_replies(value, secret)
    return replies[0] if len(replies) == 1 else None


def decode_replies(value: bytes | None, secret: bytes | None = None) -> list[Grant | Ack]:
    """The valid replies in a grant-topic record (see :func:`decode_reply_record`)."""
    return [r for r in decode_reply_record(value, secret) if not isinstance(r, Rejected)]


def encode_replies(replies: list[Grant | Ack], secret: bytes | None = None) -> bytes:
    """One grant-topic record for several replies to the same worker, each signed with its
    worker id as the key when there is a ``secret``."""
    bodies = [encode(reply, key=reply.worker_id.encode(), secret=secret) for reply in replies]
    return bodies[0] if len(bodies) == 1 else b"[" + b",".join(bodies) + b"]"
