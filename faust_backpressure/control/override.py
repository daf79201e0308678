"""Operator overrides of a control loop: ``hold`` a limiter at a rate until ``release``.

An override is a record of the app's pressure (control) topic keyed by the limiter, next to
the samples, so the one worker deciding that limiter applies it in order with them; the
records are the audit trail. The decider keeps the override in the control table (it survives
a restart of every worker) and, while it holds, applies no decision of the policy. Signed with
the app's secret like every internal record; at most :data:`MAX_AGE` seconds old, never twice.

Example (what ``faust -A app backpressure emergency-stop orders-api`` sends)::

    Override.hold("orders-api", rate=None, by="alice@ops").encode(secret)
"""

from __future__ import annotations

import getpass
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from faust_backpressure.wire.signing import (
    OperatorCommand,
    RejectedRecord,
    decode_signed,
    encode_signed,
    number,
)

__all__ = ["MARKER", "MAX_AGE", "Override", "operator"]

#: Oldest override record still applied (seconds): a command, not a replayable fact.
MAX_AGE = 120.0
#: The bytes that tell an override from a sample in the canonical JSON (samples have no type).
MARKER = b'"type":"override"'


def operator() -> str:
    """``user@host`` of whoever runs the command (for the audit trail)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError, ImportError):  # no user name in a container: the host says
        user = "?"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True, slots=True)
class Override:
    limiter: str
    action: str  # "hold" | "release"
    override_id: str
    by: str
    at: float
    #: the rate to hold (None: the loop's emergency rate)
    rate: float | None = None
    reason: str = ""

    @classmethod
    def hold(cls, limiter: str, *, rate: float | None, by: str, reason: str = "") -> Override:
        return cls(limiter, "hold", uuid.uuid4().hex, by, time.time(), rate, reason)

    @classmethod
    def release(cls, limiter: str, *, by: str, reason: str = "") -> Override:
        return cls(limiter, "release", uuid.uuid4().hex, by, time.time(), None, reason)

    def encode(self, secret: bytes | None = None) -> bytes:
        body: dict[str, Any] = {"type": "override", "limiter": self.limiter,
                                "action": self.action, "id": self.override_id, "by": self.by,
                                "at": self.at, "reason": self.reason}
        if self.rate is not None:
            body["rate"] = self.rate
        return encode_signed(body, self.limiter.encode(), secret)

    @classmethod
    def decode(cls, raw: bytes | None, key: bytes | None = None,
               secret: bytes | None = None) -> Override:
        data, limiter = decode_signed(raw, key, secret, name="limiter", kind="override",
                                      not_one="not an override record")
        action = data.get("action")
        if action not in ("hold", "release"):
            raise RejectedRecord(f"unknown override action {action!r:.40}")
        rate = None if data.get("rate") is None else number(data, "rate", 1e-9, 1e12)
        override_id, by, at, reason = OperatorCommand.common(data)  # as every command's
        return cls(limiter, action, override_id, by, at, rate, reason)

    def to_state(self, rate: float) -> dict[str, Any]:
        """What the control table keeps while it holds."""
        return {"id": self.override_id, "rate": rate, "by": self.by, "at": self.at,
                "reason": self.reason}
