"""Header names carried by shed and dead-letter records, and how they are built and read.

Every header is ``bp.``-prefixed ASCII text so any Kafka tool can show it. The original
record's own headers are kept, in front of these.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

__all__ = ["ATTEMPTS", "ERROR_MESSAGE", "ERROR_TYPE", "FIRST_FAILURE", "LAST_FAILURE", "PIPELINE",
           "REPLAY_COUNT", "SHED_AGENT", "SHED_AT", "SHED_LIMITER", "SHED_PRIORITY", "SHED_REASON",
           "SOURCE_OFFSET", "SOURCE_PARTITION", "SOURCE_TOPIC", "STAGE", "TRACEBACK", "Failure",
           "Headers", "HeadersIn", "dlq_headers", "error_type", "header", "header_text", "owned_by",
           "replay_count", "shed_headers", "source_headers", "without_bp_headers"]

Headers = list[tuple[str, bytes]]
#: Headers as Faust/aiokafka hand them over: pairs, or a mapping.
HeadersIn = Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None

PREFIX = "bp."
ERROR_TYPE = "bp.error.type"
ERROR_MESSAGE = "bp.error.message"
TRACEBACK = "bp.error.traceback"
STAGE = "bp.stage"
SOURCE_TOPIC = "bp.source.topic"
SOURCE_PARTITION = "bp.source.partition"
SOURCE_OFFSET = "bp.source.offset"
ATTEMPTS = "bp.attempts"
FIRST_FAILURE = "bp.first_failure"
LAST_FAILURE = "bp.last_failure"
PIPELINE = "bp.pipeline"
REPLAY_COUNT = "bp.replay.count"
SHED_REASON = "bp.shed.reason"
SHED_LIMITER = "bp.shed.limiter"
SHED_AGENT = "bp.shed.agent"
SHED_AT = "bp.shed.at"
SHED_PRIORITY = "bp.shed.priority"
REQUEUED = "bp.requeued"

_MESSAGE_LIMIT = 1024


def _iso(ts: float) -> bytes:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").encode()


def _pairs(headers: HeadersIn) -> Iterable[tuple[str, bytes]]:
    if headers is None:
        return ()
    if isinstance(headers, Mapping):
        return headers.items()
    return headers


def header(headers: HeadersIn, name: str) -> bytes | None:
    """The last value of header ``name`` (Kafka allows repeats; the newest wins)."""
    found = None
    for key, value in _pairs(headers):
        if key == name:
            found = value
    return found


def header_text(raw: bytes | None) -> str:
    """A header value as text: UTF-8 if it decodes, else its ``repr`` (never raises)."""
    if raw is None:
        return "None"
    try:
        return bytes(raw).decode("utf-8")
    except (UnicodeDecodeError, TypeError, ValueError):
        return repr(raw)


def owned_by(headers: HeadersIn, pipeline: str) -> bool:
    """Whether a DLQ record with these headers is ``pipeline``'s: no ``bp.pipeline`` header
    counts as ours. Replay and ``dlq-inspect`` both decide by this."""
    owner = header(headers, PIPELINE)
    return owner is None or header_text(owner) == pipeline


def error_type(headers: HeadersIn) -> str:
    """``bp.error.type`` as text, ``?`` when missing: what ``dlq-inspect`` counts by and
    ``replay --error-type`` matches."""
    raw = header(headers, ERROR_TYPE)
    return "?" if raw is None else header_text(raw)


def _count(headers: HeadersIn, name: str) -> int:
    """Header ``name`` as a count: 0 if absent or not a number."""
    raw = header(headers, name)
    try:
        return int(raw) if raw else 0
    except ValueError:
        return 0


def replay_count(headers: HeadersIn) -> int:
    return _count(headers, REPLAY_COUNT)


def without_bp_headers(headers: HeadersIn) -> Headers:
    """The record's own headers: ours are dropped (a replayed record starts clean)."""
    return [(k, bytes(v)) for k, v in _pairs(headers) if not k.startswith(PREFIX)]


@dataclass
class Failure:
    """What went wrong with one record, across its attempts."""

    error: BaseException
    stage: str
    attempts: int
    first_failure: float
    last_failure: float

    @classmethod
    def now(cls, error: BaseException, stage: str, attempts: int,
            first_failure: float | None = None) -> Failure:
        now = time.time()
        return cls(error, stage, attempts, first_failure or now, now)


def _truncated_traceback(error: BaseException, limit: int) -> bytes:
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    if len(text) > limit:
        # Keep the first line (so it still reads as a traceback) and the end: the innermost
        # frames and the message say the most.
        first, _, rest = text.partition("\n")
        text = f"{first}\n  ...\n{rest[-max(0, limit - len(first) - 7):]}"
    return text.encode("utf-8", "replace")


def source_headers(topic: str, partition: int, offset: int) -> Headers:
    """Where a record was read (of a dead-lettered, shed or deferred record)."""
    return [(SOURCE_TOPIC, topic.encode()), (SOURCE_PARTITION, str(partition).encode()),
            (SOURCE_OFFSET, str(offset).encode())]


def dlq_headers(original: HeadersIn, *, pipeline: str, topic: str,
                partition: int, offset: int, failure: Failure, traceback_limit: int) -> Headers:
    """Original headers (ours stripped, replay count kept) followed by the failure's reason."""
    error = failure.error
    message = str(error)
    if error.__cause__ is not None:
        message = f"{message} (caused by {type(error.__cause__).__name__}: {error.__cause__})"
    out = without_bp_headers(original)
    out += [
        (ERROR_TYPE, type(error).__name__.encode()),
        (ERROR_MESSAGE, message[:_MESSAGE_LIMIT].encode("utf-8", "replace")),
        (TRACEBACK, _truncated_traceback(error, traceback_limit)),
        (STAGE, failure.stage.encode()),
        *source_headers(topic, partition, offset),
        (ATTEMPTS, str(failure.attempts).encode()),
        (FIRST_FAILURE, _iso(failure.first_failure)),
        (LAST_FAILURE, _iso(failure.last_failure)),
        (PIPELINE, pipeline.encode()),
        (REPLAY_COUNT, str(replay_count(original)).encode()),
    ]
    return out


def shed_headers(original: HeadersIn, *, agent: str, limiter: str,
                 topic: str, partition: int, offset: int, permits: int,
                 cause: str = "", priority: int | None = None,
                 threshold: int | None = None) -> Headers:
    """Why an event was shed: the limiter refused ``permits`` and the agent does not wait;
    or, with ``priority`` and ``threshold``, its priority was below the shed level."""
    out = without_bp_headers(original)
    if priority is not None and threshold is not None:
        reason = (f"load shedding: priority {priority} < shed level {threshold}"
                  + (f" ({cause})" if cause else ""))
    else:
        reason = f"rate limit: {permits} permit(s) refused" + (f" ({cause})" if cause else "")
    out += [
        (SHED_REASON, reason.encode()),
        (SHED_LIMITER, limiter.encode()),
        (SHED_AGENT, agent.encode()),
        (SHED_AT, _iso(time.time())),
        *source_headers(topic, partition, offset),
    ]
    if priority is not None:
        out.append((SHED_PRIORITY, str(priority).encode()))
    return out


def requeue_headers(original: HeadersIn) -> Headers:
    """Original headers (ours stripped, replay count kept) and how often it was requeued."""
    out = without_bp_headers(original)
    if replay_count(original):
        out.append((REPLAY_COUNT, str(replay_count(original)).encode()))
    return [*out, (REQUEUED, str(_count(original, REQUEUED) + 1).encode())]
