"""Downstream guards across workers: slow-downs and operators' breaker commands.

Both travel on the app's compacted ops topic (``<app>-fbp-ops``, see :mod:`.pause`), which every
worker follows from its beginning:

* ``downstream/<name>``: a slow-down one worker got (e.g. HTTP 429): the pause's end (wall
  clock), who and when. Every worker pauses that dependency until then; a worker started later
  reads the latest record and ignores it once its end has passed.
* ``quota/<name>/<worker>``: what a worker was served just before a slow-down episode (the
  episode is named by its pause's end), so that every worker learns the quota from the sum.
* ``recovered/<name>``: a worker's half-open probes passed (the system answers again): every
  worker whose breaker opened before then probes at once instead of at the end of its own wait
  (one probe round per ``RECOVERY_MIN_OPEN`` s at most, however many such records arrive).
* ``failing/<name>``: a worker's breaker opened on failures (not a slow-down's pause): who,
  when, and the end of its open wait. Every other worker's breaker opens too (its own wait),
  unless the record is stale (that end past, or a call it sent since then succeeded).
* ``breaker/<name>``: an operator's ``open`` / ``close`` / ``auto``, acknowledged by every
  worker (``ack/breaker/<name>/<worker>``) like pause commands.

Records are signed with the app's secret when it has one and range-checked always: a pause
longer than the guard's ``max_retry_after`` or stamped in the future is rejected and counted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from faust_backpressure.wire.signing import (
    OperatorCommand,
    RejectedRecord,
    check_time,
    decode_signed,
    encode_signed,
    number,
    text,
)

__all__ = ["BREAKER_STATES", "BreakerCommand", "FailingRecord", "QuotaReport",
           "RecoveredRecord", "SlowDownRecord", "breaker_key", "failing_key", "quota_key",
           "recovered_key", "slow_down_key"]

BREAKER_STATES = ("open", "close", "auto")
_LONGEST = 3600.0  # no guard's max_retry_after may exceed it
_MOST_SERVED = 1e7  # calls per second: no worker's report may exceed it


def slow_down_key(name: str) -> bytes:
    return f"downstream/{name}".encode()


def quota_key(report: str) -> bytes:
    """``report``: ``<dependency>/<worker>``."""
    return f"quota/{report}".encode()


def recovered_key(name: str) -> bytes:
    return f"recovered/{name}".encode()


def failing_key(name: str) -> bytes:
    return f"failing/{name}".encode()


def breaker_key(name: str) -> bytes:
    return f"breaker/{name}".encode()


def _sent_at(data: dict[str, Any], now: float, max_skew: float) -> float:
    """The record's ``at``: a finite time, not ahead of ``now`` by more than ``max_skew``."""
    at = number(data, "at", 0.0, 1e11)
    check_time(at, now, max_age=1e11, max_skew=max_skew)
    return float(at)


@dataclass(frozen=True, slots=True)
class RecoveredRecord:
    """``by``'s probes found ``dependency`` answering again at ``at`` (wall clock)."""

    dependency: str
    by: str
    at: float

    def encode(self, secret: bytes | None = None) -> bytes:
        body = {"type": "recovered", "dependency": self.dependency, "by": self.by,
                "at": self.at}
        return encode_signed(body, recovered_key(self.dependency), secret)

    @classmethod
    def decode(cls, raw: bytes | None, key: bytes | None, secret: bytes | None, *,
               now: float, max_skew: float) -> RecoveredRecord:
        data, name = decode_signed(raw, key or b"", secret, name="dependency",
                                   record_key=recovered_key, kind="recovered",
                                   not_one="not a recovery record")
        at = _sent_at(data, now, max_skew)  # any age: old ones predate any opening
        return cls(name, text(data, "by"), at)


_Until = TypeVar("_Until", bound="_UntilRecord")


@dataclass(frozen=True, slots=True)
class _UntilRecord:
    """News that ``dependency`` is held until ``until`` (wall clock), sent by ``by`` at ``at``:
    one codec for the kinds below, which differ in key, type and longest hold."""

    kind: ClassVar[str]
    key_of: ClassVar[Callable[[str], bytes]]
    dependency: str
    until: float
    by: str
    at: float

    def encode(self, secret: bytes | None = None) -> bytes:
        body = {"type": self.kind, "dependency": self.dependency, "until": self.until,
                "by": self.by, "at": self.at}
        return encode_signed(body, type(self).key_of(self.dependency), secret)

    @classmethod
    def decode(cls: type[_Until], raw: bytes | None, key: bytes | None, secret: bytes | None,
               *, now: float, max_skew: float, max_pause: float = _LONGEST) -> _Until:
        data, name = decode_signed(raw, key or b"", secret, name="dependency",
                                   record_key=cls.key_of, kind=cls.kind,
                                   not_one=f"not a {cls.kind} record")
        at = _sent_at(data, now, max_skew)  # any age: old ones are merely over
        until = number(data, "until", at, at + min(max_pause, _LONGEST))
        return cls(name, until, text(data, "by"), at)


@dataclass(frozen=True, slots=True)
class SlowDownRecord(_UntilRecord):
    """A dependency paused until ``until`` (wall clock), sent by ``by`` at ``at``; decoded
    with the guard's ``max_pause``."""

    kind: ClassVar[str] = "slow-down"
    key_of: ClassVar[Callable[[str], bytes]] = staticmethod(slow_down_key)


@dataclass(frozen=True, slots=True)
class FailingRecord(_UntilRecord):
    """``by``'s breaker for ``dependency`` opened on failures at ``at``, open until ``until``
    (wall clock)."""

    kind: ClassVar[str] = "failing"
    key_of: ClassVar[Callable[[str], bytes]] = staticmethod(failing_key)


@dataclass(frozen=True, slots=True)
class QuotaReport:
    """``by`` was served ``served`` calls/s of ``dependency`` before the episode whose pause
    ends at ``episode`` (wall clock); sent at ``at``. ``whole``: read over a whole interval
    (else part of one: an upper bound; absent in older records: whole)."""

    dependency: str
    episode: float
    served: float
    by: str
    at: float
    whole: bool = True

    def encode(self, secret: bytes | None = None) -> bytes:
        body = {"type": "quota-report", "report": f"{self.dependency}/{self.by}",
                "dependency": self.dependency, "episode": self.episode,
                "served": self.served, "by": self.by, "at": self.at, "whole": self.whole}
        return encode_signed(body, quota_key(f"{self.dependency}/{self.by}"), secret)

    @classmethod
    def decode(cls, raw: bytes | None, key: bytes | None, secret: bytes | None, *,
               now: float, max_skew: float) -> QuotaReport:
        data, report = decode_signed(raw, key or b"", secret, name="report",
                                     record_key=quota_key, kind="quota-report",
                                     not_one="not a quota report")
        dependency, by = text(data, "dependency"), text(data, "by")
        if report != f"{dependency}/{by}":
            raise RejectedRecord("report does not name its dependency and worker")
        at = _sent_at(data, now, max_skew)  # any age: old ones match no episode
        episode = number(data, "episode", at - _LONGEST, at + _LONGEST)
        whole = data.get("whole", True)
        if not isinstance(whole, bool):
            raise RejectedRecord("whole is not true or false")
        return cls(dependency, episode, number(data, "served", 0.0, _MOST_SERVED), by, at,
                   whole)


@dataclass(frozen=True, slots=True)
class BreakerCommand(OperatorCommand):
    """An operator's breaker state for a dependency on every worker."""

    kind: ClassVar[str] = "breaker"
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
        return self._encode({"dependency": self.dependency, "state": self.state}, self.key,
                            secret)

    @classmethod
    def decode(cls, raw: bytes | None, key: bytes | None,
               secret: bytes | None = None) -> BreakerCommand:
        data, name = cls._decode(raw, key, secret, name="dependency", record_key=breaker_key)
        state = data.get("state")
        if state not in BREAKER_STATES:
            raise RejectedRecord(f"state must be one of {BREAKER_STATES}")
        return cls(name, str(state), *cls.common(data))
