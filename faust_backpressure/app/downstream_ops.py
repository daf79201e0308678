"""Downstream guards across workers: slow-downs and operators' breaker commands.

Both travel on the app's compacted ops topic (``<app>-fbp-ops``, see :mod:`.pause`), which every
worker follows from its beginning:

* ``downstream/<name>``: a slow-down one worker got (e.g. HTTP 429): the pause's end (wall
  clock), who and when. Every worker pauses that dependency until then; a worker started later
  reads the latest record and ignores it once its end has passed.
* ``breaker/<name>``: an operator's ``open`` / ``close`` / ``auto``, acknowledged by every
  worker (``ack/breaker/<name>/<worker>``) like pause commands.

Records are signed with the app's secret when it has one and range-checked always: a pause
longer than the guard's ``max_retry_after`` or stamped in the future is rejected and counted.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from faust_backpressure.tables.integrity import (
    RejectedRecord,
    check_time,
    decode_signed,
    encode_signed,
    number,
    text,
)

__all__ = ["BREAKER_STATES", "BreakerCommand", "SlowDownRecord", "breaker_key",
           "slow_down_key"]

BREAKER_STATES = ("open", "close", "auto")
_LONGEST = 3600.0  # no guard's max_retry_after may exceed it


def slow_down_key(name: str) -> bytes:
    return f"downstream/{name}".encode()


def breaker_key(name: str) -> bytes:
    return f"breaker/{name}".encode()


@dataclass(frozen=True, slots=True)
class SlowDownRecord:
    """A dependency paused until ``until`` (wall clock), sent by ``by`` at ``at``."""

    dependency: str
    until: float
    by: str
    at: float

    def encode(self, secret: bytes | None = None) -> bytes:
        body = {"type": "slow-down", "dependency": self.dependency, "until": self.until,
                "by": self.by, "at": self.at}
        return encode_signed(body, slow_down_key(self.dependency), secret)

    @classmethod
    def decode(cls, raw: bytes | None, key: bytes | None, secret: bytes | None, *,
               now: float, max_pause: float, max_skew: float) -> SlowDownRecord:
        data, name = decode_signed(raw, key or b"", secret, name="dependency",
                                   record_key=lambda n: slow_down_key(n), kind="slow-down",
                                   not_one="not a slow-down record")
        at = number(data, "at", 0.0, 1e11)
        check_time(at, now, max_age=1e11, max_skew=max_skew)  # old ones are merely over
        until = number(data, "until", at, at + min(max_pause, _LONGEST))
        return cls(name, until, text(data, "by"), at)


@dataclass(frozen=True, slots=True)
class BreakerCommand:
    """An operator's breaker state for a dependency on every worker."""

    dependency: str
    state: str
    command_id: str
    by: str
    at: float
    reason: str = ""

    @classmethod
    def new(cls, dependency: str, state: str, by: str, reason: str = "") -> BreakerCommand:
        if state not in BREAKER_STATES:
            raise ValueError(f"breaker state must be one of {BREAKER_STATES}, got {state!r}")
        return cls(dependency, state, uuid.uuid4().hex, by, time.time(), reason)

    @property
    def key(self) -> bytes:
        return breaker_key(self.dependency)

    def encode(self, secret: bytes | None = None) -> bytes:
        body: dict[str, Any] = {"type": "breaker", "dependency": self.dependency,
                                "state": self.state, "id": self.command_id, "by": self.by,
                                "at": self.at, "reason": self.reason}
        return encode_signed(body, self.key, secret)

    @classmethod
    def decode(cls, raw: bytes | None, key: bytes | None,
               secret: bytes | None = None) -> BreakerCommand:
        data, name = decode_signed(raw, key or b"", secret, name="dependency",
                                   record_key=lambda n: breaker_key(n), kind="breaker",
                                   not_one="not a breaker record")
        state = data.get("state")
        if state not in BREAKER_STATES:
            raise RejectedRecord(f"state must be one of {BREAKER_STATES}")
        return cls(name, str(state), text(data, "id"), text(data, "by"),
                   number(data, "at", 0.0, 1e11), str(data.get("reason", ""))[:200])
