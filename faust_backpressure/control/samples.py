"""The pressure sample: what one worker saw of one limiter, as a record of the pressure topic.

A JSON object keyed by the limiter's name; with a secret it is signed like every internal record
(``wire.signing``: HMAC-SHA256 over the key and the canonical JSON). :meth:`WorkerSample.
decode` validates every field (type, range, finiteness) and raises nothing but
:class:`RejectedRecord`; when a sample is too old or from the future, and whether it is a replay,
is decided by the receiver, which knows the loop's interval (see ``loop.ControlLoops.handle``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from faust_backpressure.wire.signing import decode_signed, encode_signed, number, text

__all__ = ["MAX_LAG", "WorkerSample"]

#: Largest lag a sample may claim (records): far above any real backlog, exact as a double.
MAX_LAG = 10**15
#: Committed offsets summed over a group: at most this many (int64 offsets, many partitions).
MAX_PROCESSED = 10**18
#: Members of a consumer group a sample may claim.
MAX_MEMBERS = 1_000_000
#: Utilization and CPU are shares of 1; a little above 1 happens, far above it never does.
_MAX_SHARE = 100.0


@dataclass(frozen=True, slots=True)
class WorkerSample:
    """What one worker saw of one limiter at ``at`` (its wall clock): the pressure event."""

    limiter: str
    worker: str
    at: float
    lag: int
    utilization: float
    cpu: float
    #: The downstream group's committed offsets summed (its processed count), if known.
    processed: int | None = None
    #: How many members the downstream group has (its workers' consumers), if known.
    members: int | None = None
    #: The highest failure rate of the systems this worker's stream calls (its downstream
    #: guards' breaker windows), in [0, 1]; None without guards.
    error_rate: float | None = None

    @property
    def sample_id(self) -> str:
        """Unique per sample of a worker: what replay protection remembers."""
        return f"{self.worker}\n{self.at!r}"

    def encode(self, secret: bytes | None = None) -> bytes:
        body: dict[str, Any] = {"limiter": self.limiter, "worker": self.worker, "at": self.at,
                                "lag": self.lag, "utilization": self.utilization,
                                "cpu": self.cpu, "processed": self.processed,
                                "members": self.members, "error_rate": self.error_rate}
        body = {name: value for name, value in body.items() if value is not None}  # optional
        return encode_signed(body, self.limiter.encode(), secret)

    @classmethod
    def decode(cls, raw: bytes | None, key: bytes | None = None,
               secret: bytes | None = None) -> WorkerSample:
        """Validate a pressure record; with a ``secret`` its signature over ``key`` too. A
        ``key`` that is given must be the sample's limiter (it is the record key)."""
        data, limiter = decode_signed(raw, key, secret, name="limiter",
                                      not_one="pressure sample is not a JSON object")
        return cls(limiter=limiter, worker=text(data, "worker"),
                   at=number(data, "at", 0.0, 1e11), lag=int(number(data, "lag", 0, MAX_LAG)),
                   utilization=number(data, "utilization", 0.0, _MAX_SHARE),
                   cpu=number(data, "cpu", 0.0, _MAX_SHARE),
                   processed=None if data.get("processed") is None
                   else int(number(data, "processed", 0, MAX_PROCESSED)),
                   members=None if data.get("members") is None
                   else int(number(data, "members", 0, MAX_MEMBERS)),
                   error_rate=number(data, "error_rate", 0.0, 1.0, optional=True))
