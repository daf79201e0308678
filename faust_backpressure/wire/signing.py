"""What every internal record shares: HMAC signatures, range checks, replay memory, rejections,
and the fields and codec of operator commands.

Used by the limiter protocol (``limiter_records``), the control loop's pressure samples and operator
overrides, and pause records. A record is a JSON object; signed, it carries ``"sig"``:
HMAC-SHA256 over the record key, a newline and the canonical JSON (sorted keys, no spaces) of
the object without ``"sig"``.

Example::

    body = {"v": 1, "lag": 3}
    body["sig"] = sign(b"s3cret", b"orders-api", body)
    verify(b"s3cret", b"orders-api", body)   # pops "sig"; RejectedRecord if it is wrong

    raw = encode_signed({"limiter": "orders-api", "lag": 3}, b"orders-api", b"s3cret")
    body, limiter = decode_signed(raw, b"orders-api", b"s3cret", name="limiter")
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from faust_backpressure.config.validation import is_number
from faust_backpressure.errors import BackpressureError

__all__ = ["OperatorCommand", "Rejected", "RejectedRecord", "Rejections", "ReplayGuard",
           "canonical", "check_time", "decode_signed", "encode_signed", "load_json", "number",
           "sign", "text", "verify"]

#: Rejection reasons (the ``reason`` label of the rejected-records counters).
MALFORMED = "malformed"
BAD_SIGNATURE = "bad_signature"
OUT_OF_RANGE = "out_of_range"
STALE = "stale"
FUTURE = "future"
REPLAYED = "replayed"
WRONG_KEY = "wrong_key"
UNKNOWN = "unknown"

_MAX_TEXT = 200


class RejectedRecord(BackpressureError, ValueError):
    """An internal record is malformed, forged, replayed or out of range: counted, never used.

    Raised by the decoders of one record; the batch decoders return :class:`Rejected` instead.
    ``code`` is one of the reasons above; ``reason`` says what exactly, for the log."""

    def __init__(self, reason: str, limiter_id: str | None = None, *,
                 code: str = MALFORMED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.limiter_id = limiter_id
        self.code = code

    def rejected(self, limiter_id: str | None = None) -> Rejected:
        """This rejection as a value, naming ``limiter_id`` (default: the one it has)."""
        return Rejected(self.reason, self.limiter_id if limiter_id is None else limiter_id,
                        code=self.code)


@dataclass(frozen=True, slots=True)
class Rejected:
    """What a decoder returns in place of a record it refuses (a value, not an exception):
    ``reason`` for the log, ``code`` (one of the reasons above) for the counters, and the
    limiter the record named, when it named one."""

    reason: str
    limiter_id: str | None = None
    code: str = MALFORMED


class Rejections:
    """Rejected records of one receiver, by reason."""

    __slots__ = ("by_reason",)

    def __init__(self) -> None:
        self.by_reason: Counter[str] = Counter()

    def count(self, rejection: Rejected | RejectedRecord) -> None:
        self.by_reason[rejection.code] += 1

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())


def canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"),
                      allow_nan=False).encode()


def sign(secret: bytes, key: bytes, body: dict[str, Any]) -> str:
    return hmac.new(secret, key + b"\n" + canonical(body), hashlib.sha256).hexdigest()


def verify(secret: bytes, key: bytes, body: dict[str, Any]) -> None:
    """Remove ``"sig"`` from ``body``; :class:`RejectedRecord` unless it signs the rest."""
    sig = body.pop("sig", None)
    try:
        ok = isinstance(sig, str) and hmac.compare_digest(sig, sign(secret, key, body))
    except (ValueError, TypeError):  # NaN/inf, or a non-ASCII sig: nothing we signed
        ok = False
    if not ok:
        raise RejectedRecord("bad or missing signature", code=BAD_SIGNATURE)


def load_json(value: bytes | None) -> Any:
    """``json.loads`` that fails only with :class:`RejectedRecord` (deep nesting, huge ints,
    bad UTF-8 included)."""
    if value is None:
        raise RejectedRecord("record has no value")
    try:
        return json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError, TypeError):
        raise RejectedRecord("value is not JSON") from None


def text(body: dict[str, Any], name: str, *, optional: bool = False) -> Any:
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_TEXT:
        raise RejectedRecord(f"{name} must be a non-empty string of at most {_MAX_TEXT} chars")
    return value


def number(body: dict[str, Any], name: str, low: float, high: float,
           *, optional: bool = False) -> Any:
    """A finite number in ``[low, high]`` (never a bool, NaN or infinity) as a float."""
    value = body.get(name)
    if value is None and optional:
        return None
    if not is_number(value) or not math.isfinite(value) or not low <= value <= high:
        raise RejectedRecord(f"{name} must be a number in [{low:g}, {high:g}], got {value!r:.40}",
                             code=OUT_OF_RANGE)
    return float(value)


def encode_signed(body: dict[str, Any], key: bytes, secret: bytes | None) -> bytes:
    """A record's value: ``body`` as canonical JSON, signed over ``key`` when there is a
    ``secret`` (``body`` gets its ``"sig"``)."""
    if secret is not None:
        body["sig"] = sign(secret, key, body)
    return canonical(body)


def decode_signed(raw: bytes | None, key: bytes | None, secret: bytes | None, *, name: str,
                  record_key: Callable[[str], bytes] = str.encode, kind: str | None = None,
                  not_one: str = "value is not a JSON object") -> tuple[dict[str, Any], str]:
    """The JSON object of a record keyed by its field ``name`` (the record key is
    ``record_key(body[name])``), and that field's value; the object has no ``"sig"`` left.

    :class:`RejectedRecord` (reason ``not_one``) unless the value is an object, with
    ``"type": kind`` when ``kind`` is given; when ``key`` is given, unless it is the record's
    key; with a ``secret``, unless the object is signed over the record's key."""
    body = load_json(raw)
    if not isinstance(body, dict) or (kind is not None and body.get("type") != kind):
        raise RejectedRecord(not_one)
    value = text(body, name)
    signed_key = record_key(value)
    if key is not None and key != signed_key:
        raise RejectedRecord(f"{name} does not match the record key", code=WRONG_KEY)
    if secret is not None:
        verify(secret, signed_key, body)
    return body, value


class OperatorCommand:
    """What every operator command on the ops topic (pause, breaker, key override) has besides
    its own fields, and their codec: an id, who sent it, when (wall clock) and why.

    A subclass is a frozen dataclass that ends with these four fields (``reason`` defaults to
    ``""``) and sets :attr:`kind`, the record's ``"type"``."""

    __slots__ = ()
    #: The record's ``"type"``; a record of another type is "not a <kind> record".
    kind: ClassVar[str]
    command_id: str
    by: str
    at: float
    reason: str

    def _encode(self, fields: dict[str, Any], key: bytes, secret: bytes | None) -> bytes:
        """The record: the subclass's own ``fields`` and the common ones, signed over ``key``."""
        body = {"type": self.kind, **fields, "id": self.command_id, "by": self.by,
                "at": self.at, "reason": self.reason}
        return encode_signed(body, key, secret)

    @classmethod
    def _decode(cls, raw: bytes | None, key: bytes | None, secret: bytes | None, *, name: str,
                record_key: Callable[[str], bytes]) -> tuple[dict[str, Any], str]:
        """:func:`decode_signed` for this kind; the key is required: a record without one is
        no command's."""
        return decode_signed(raw, key or b"", secret, name=name, record_key=record_key,
                             kind=cls.kind, not_one=f"not a {cls.kind} record")

    @staticmethod
    def common(data: dict[str, Any]) -> tuple[str, str, float, str]:
        """The common fields of a decoded record, range-checked: id, by, at, reason (the
        control loop's ``Override``, on another topic, reads its own by this too)."""
        return (text(data, "id"), text(data, "by"), number(data, "at", 0.0, 1e11),
                str(data.get("reason", ""))[:200])


def check_time(at: float, now: float, *, max_age: float, max_skew: float) -> None:
    """``at`` (a sender's wall clock) is at most ``max_age`` in the past and ``max_skew`` in
    the future of ``now``."""
    if at - now > max_skew:
        raise RejectedRecord(f"timestamp {at:.3f} is {at - now:.1f} s in the future",
                             code=FUTURE)
    if now - at > max_age:
        raise RejectedRecord(f"timestamp {at:.3f} is {now - at:.1f} s old", code=STALE)


class ReplayGuard:
    """Ids seen within ``window`` seconds (at most ``capacity`` of them, oldest forgotten
    first): with timestamps older than ``window`` rejected, a replay is always caught."""

    __slots__ = ("_seen", "capacity", "window")

    def __init__(self, window: float, capacity: int = 100_000) -> None:
        self.window = window
        self.capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check(self, record_id: str, now: float) -> None:
        """Remember ``record_id``; :class:`RejectedRecord` if it was seen in the window."""
        seen = self._seen
        while seen and (len(seen) >= self.capacity
                        or now - next(iter(seen.values())) > self.window):
            seen.popitem(last=False)
        if record_id in seen:
            raise RejectedRecord(f"record {record_id!r:.80} was already seen", code=REPLAYED)
        seen[record_id] = now

    def __len__(self) -> int:
        return len(self._seen)
