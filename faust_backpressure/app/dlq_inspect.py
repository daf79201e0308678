"""``faust -A app backpressure dlq-inspect PIPELINE``: what is in a pipeline's DLQ, read-only.

Counts of the pipeline's dead-lettered records by ``bp.error.type`` and by ``bp.stage``, the
first and last Kafka timestamps, the earliest ``bp.first_failure`` and latest
``bp.last_failure`` headers, and a sample of records with their ``bp.*`` headers. Nothing is
committed and no consumer group is joined: the DLQ's partitions are assigned and read. At most
``--max-records`` records are read, spread over the partitions and taken from the end (the
newest); when that is fewer than the DLQ holds, the output says so ("counted 10,000 of
1,234,567 records"). Records of other pipelines (a shared DLQ) are passed over, as
``dlq-replay`` does. Undecodable header values are shown as their ``repr``.

Example::

    $ faust -A myapp backpressure dlq-inspect orders --sample 3
    $ faust -A myapp backpressure dlq-inspect orders --json --max-records 50000

    summary = await inspect_dlq(client_settings(app, "ops"), pipeline="orders",
                                dlq_topic="orders-dlq", max_records=1000)
    summary.by_error_type       # Counter({'ValueError': 812, 'TimeoutError': 188})

Exit codes: 0 done (an empty or missing DLQ included), 1 Kafka failed or the read did not
finish within ``--timeout`` (what was read is shown), 2 a usage error.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeAlias, TypeVar

import click
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from faust_backpressure.agents.headers import (
    FIRST_FAILURE,
    LAST_FAILURE,
    PREFIX,
    STAGE,
    TRACEBACK,
    error_type,
    header,
    owned_by,
)
from faust_backpressure.agents.headers import header_text as text
from faust_backpressure.app.cli import backpressure, declared, fail, installation, table
from faust_backpressure.wire.kafka_clients import (
    KafkaClientSettings,
    batches_to_end,
    client_settings,
    kafka_consumer,
    topic_partitions,
)

__all__ = ["DlqSummary", "budgets", "dlq_inspect", "inspect_dlq"]

Record: TypeAlias = "ConsumerRecord[Any, Any]"
_Moment = TypeVar("_Moment", int, datetime)

#: shown of a record's key and value in a sample (bytes; the repr says more was cut)
VALUE_LIMIT = 60
#: shown of a header value in the plain form (the JSON form has it whole)
HEADER_LIMIT = 100


def short(raw: bytes | None, limit: int = VALUE_LIMIT) -> str:
    """A short ``repr`` of a key or value: ``b'id-00500'``, or ``b'{"a": ...'...`` when cut."""
    if raw is None:
        return "None"
    if not isinstance(raw, (bytes, bytearray)):
        raw = str(raw).encode("utf-8", "replace")
    return repr(bytes(raw[:limit])) + ("..." if len(raw) > limit else "")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="milliseconds")


def _iso_ms(ms: int | None) -> str | None:
    """A Kafka timestamp (ms) in ISO form; None when there is none."""
    return None if ms is None else _iso(datetime.fromtimestamp(ms / 1000, timezone.utc))


def _when(raw: bytes | None) -> datetime | None:
    """A ``bp.first_failure``/``bp.last_failure`` header as a time (None if unreadable)."""
    try:
        moment = datetime.fromisoformat(text(raw))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _timestamp(record: Record) -> int | None:
    """The record's Kafka timestamp, None when it has none (-1)."""
    return record.timestamp if record.timestamp is not None and record.timestamp >= 0 else None


def _widen(pick: Callable[[_Moment, _Moment], _Moment], known: _Moment | None,
           new: _Moment | None) -> _Moment | None:
    """The first or last (``pick``: min or max) of ``known`` and ``new``; None is no value."""
    return known if new is None else new if known is None else pick(known, new)


def budgets(available: Mapping[int, int], max_records: int) -> dict[int, int]:
    """How many of the newest records to read of each partition (``{partition: records}``):
    ``max_records`` at most in all, spread evenly, what a small partition does not need going
    to the bigger ones."""
    out: dict[int, int] = {}
    left = max(0, max_records)
    ordered = sorted(available.items(), key=lambda item: (item[1], item[0]))
    for i, (partition, size) in enumerate(ordered):
        share = -(-left // (len(ordered) - i))  # ceil: never more than ``left``
        out[partition] = min(max(0, size), share)
        left -= out[partition]
    return out


@dataclass
class DlqSummary:
    """What :func:`inspect_dlq` found; :meth:`add` takes the records one by one."""

    pipeline: str
    dlq_topic: str
    sample_size: int = 5
    exists: bool = True
    partitions: int = 0
    #: offsets the DLQ spans (end - beginning, summed; transaction markers take offsets too)
    in_topic: int = 0
    max_records: int | None = None
    #: fewer records read than the DLQ holds: the counts are of the newest ones only
    bounded: bool = False
    #: the read stopped at its deadline before the planned records were read
    complete: bool = True
    counted: int = 0
    other_pipelines: int = 0
    by_error_type: Counter[str] = field(default_factory=Counter)
    by_stage: Counter[str] = field(default_factory=Counter)
    first_timestamp: int | None = None
    last_timestamp: int | None = None
    first_failure: datetime | None = None
    last_failure: datetime | None = None
    #: per error type, its newest records (at most ``sample_size`` each), shown as a dict
    _newest: dict[str, list[tuple[int, int, int, dict[str, Any]]]] = field(
        default_factory=dict, init=False, repr=False)

    def add(self, record: Record) -> None:
        """Count one DLQ record (records of other pipelines only as passed over)."""
        if not owned_by(record.headers, self.pipeline):
            self.other_pipelines += 1
            return
        self.counted += 1
        kind = error_type(record.headers)
        self.by_error_type[kind] += 1
        stage = header(record.headers, STAGE)
        self.by_stage["?" if stage is None else text(stage)] += 1
        ts = _timestamp(record)
        self.first_timestamp = _widen(min, self.first_timestamp, ts)
        self.last_timestamp = _widen(max, self.last_timestamp, ts)
        self.first_failure = _widen(min, self.first_failure,
                                    _when(header(record.headers, FIRST_FAILURE)))
        self.last_failure = _widen(max, self.last_failure,
                                   _when(header(record.headers, LAST_FAILURE)))
        if self.sample_size > 0:
            kept = self._newest.setdefault(kind, [])
            kept.append((ts or 0, record.partition, record.offset, _shown(record)))
            if len(kept) > self.sample_size:  # the oldest goes
                kept.remove(min(kept, key=lambda item: item[:3]))

    def add_all(self, records: Iterable[Record]) -> DlqSummary:
        for record in records:
            self.add(record)
        return self

    @property
    def sample(self) -> list[dict[str, Any]]:
        """Up to ``sample_size`` records: the newest of each error type first (the most
        frequent types first), then the newest others; oldest to newest."""
        queues = [sorted(kept, key=lambda item: item[:3], reverse=True)
                  for _, kept in sorted(self._newest.items(),
                                        key=lambda kv: (-self.by_error_type[kv[0]], kv[0]))]
        # round by round: each type's newest, then each type's second newest, ...
        chosen = [item for round_ in itertools.zip_longest(*queues) for item in round_
                  if item is not None][:self.sample_size]
        return [shown for *_, shown in sorted(chosen, key=lambda item: item[:3])]

    @property
    def read(self) -> int:
        return self.counted + self.other_pipelines

    def to_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline, "dlq": self.dlq_topic, "exists": self.exists,
            "partitions": self.partitions, "records_in_topic": self.in_topic,
            "read": self.read, "counted": self.counted,
            "other_pipelines": self.other_pipelines, "max_records": self.max_records,
            "bounded": self.bounded, "complete": self.complete,
            "by_error_type": dict(self.by_error_type.most_common()),
            "by_stage": dict(self.by_stage.most_common()),
            "kafka_timestamps": {"first": _iso_ms(self.first_timestamp),
                                 "last": _iso_ms(self.last_timestamp)},
            "failures": {"first": _iso(self.first_failure), "last": _iso(self.last_failure)},
            "sample": self.sample,
        }


def _shown(record: Record) -> dict[str, Any]:
    """One sample record as shown: where, when, short key and value, its ``bp.*`` headers
    (the last of a repeated name wins, as :func:`header` reads them)."""
    return {
        "partition": record.partition, "offset": record.offset,
        "timestamp": _iso_ms(_timestamp(record)),
        "key": short(record.key), "value": short(record.value),
        "headers": {name: text(value) for name, value in record.headers
                    if isinstance(name, str) and name.startswith(PREFIX)},
    }


async def inspect_dlq(kafka: KafkaClientSettings | str, *, pipeline: str, dlq_topic: str,
                      max_records: int = 10_000, sample: int = 5,
                      timeout: float = 30.0) -> DlqSummary:
    """Read the newest ``max_records`` (at most) of ``dlq_topic`` and summarize those of
    ``pipeline``; see the module docstring. No group, no commits."""
    summary = DlqSummary(pipeline, dlq_topic, sample_size=sample, max_records=max_records)
    # (earliest: a seek below the log start, retention having deleted records since, reads on
    # from the start instead of skipping to the end)
    async with kafka_consumer(kafka, "dlq-inspect", isolation_level="read_committed",
                              auto_offset_reset="earliest") as consumer:
        parts = sorted(await topic_partitions(consumer, dlq_topic, 2.0))
        summary.exists, summary.partitions = bool(parts), len(parts)
        tps = [TopicPartition(dlq_topic, p) for p in parts]
        if not tps:
            return summary
        first = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        plan = budgets({tp.partition: end[tp] - first[tp] for tp in tps}, max_records)
        summary.in_topic = sum(end[tp] - first[tp] for tp in tps)
        summary.bounded = sum(plan.values()) < summary.in_topic
        todo = {tp for tp in tps if plan[tp.partition] > 0}
        consumer.assign(sorted(todo, key=lambda tp: tp.partition))
        for tp in todo:
            consumer.seek(tp, end[tp] - plan[tp.partition])
        deadline = time.monotonic() + timeout
        async for batch in batches_to_end(consumer, end, todo, max_records=1000):
            for tp, records in batch.items():
                summary.add_all(r for r in records if r.offset < end[tp])
            if todo and time.monotonic() > deadline:
                summary.complete = False
                break
    return summary


def _oneline(name: str, value: str, limit: int = HEADER_LIMIT) -> str:
    """A header value on one line, cut to ``limit``; of a traceback its end (the innermost
    frame and the message say the most)."""
    flat = value.strip().replace("\r", "\\r").replace("\n", "\\n")
    if len(flat) <= limit:
        return flat
    return "..." + flat[-limit:] if name == TRACEBACK else flat[:limit] + "..."


def render(summary: DlqSummary) -> str:
    """The plain form of ``dlq-inspect``."""
    where = f"DLQ {summary.dlq_topic} of pipeline {summary.pipeline}"
    if not summary.exists or summary.in_topic == 0:
        return f"{where} is empty" + ("" if summary.exists else " (the topic does not exist)")
    if summary.bounded:
        read = (f"counted {summary.read:,} of {summary.in_topic:,} records: a bounded sample "
                f"(the newest, spread over {summary.partitions} partition(s); "
                f"--max-records {summary.max_records:,})")
    else:
        read = f"counted all {summary.read:,} records ({summary.partitions} partition(s))"
    lines = [f"{where}: {read}"]
    if summary.other_pipelines:
        lines.append(f"passed over {summary.other_pipelines:,} record(s) of other pipelines "
                     "(not in the counts below)")
    if not summary.complete:
        lines.append("warning: the read stopped at --timeout: the counts are partial")
    if not summary.counted:
        lines.append(f"no record of pipeline {summary.pipeline} among them")
        return "\n".join(lines)
    shown = summary.to_json()
    lines += ["", table([["Kafka timestamp", shown["kafka_timestamps"]["first"],
                           shown["kafka_timestamps"]["last"]],
                          ["bp.first_failure / bp.last_failure", shown["failures"]["first"],
                           shown["failures"]["last"]]], ["", "first", "last"])]
    lines += ["", table(summary.by_error_type.most_common(), ["error type", "records"])]
    lines += ["", table(summary.by_stage.most_common(), ["stage", "records"])]
    if shown["sample"]:
        lines += ["", f"sample ({len(shown['sample'])} record(s), the newest of each error "
                  "type first)"]
    for item in shown["sample"]:
        lines.append(f"  {summary.dlq_topic}[{item['partition']}]@{item['offset']}  "
                     f"{item['timestamp']}  key {item['key']}  value {item['value']}")
        lines += [f"    {name}: {_oneline(name, value)}"
                  for name, value in item["headers"].items()]
    return "\n".join(lines)


@backpressure.command(name="dlq-inspect")
@click.argument("pipeline")
@click.option("--sample", "sample", type=click.IntRange(min=0), default=5, show_default=True,
              help="Show N records with their bp.* headers.")
@click.option("--max-records", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Read at most N records (the newest, spread over the partitions).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Seconds the read may take.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.pass_context
def dlq_inspect(ctx: click.Context, pipeline: str, sample: int, max_records: int,
                timeout: float, as_json: bool) -> None:
    """What is in a pipeline's DLQ (read-only): counts by error type and stage, first and
    last timestamps, a sample of records with their bp.* headers."""
    bp = installation(ctx)
    declared("pipeline", pipeline, bp.pipelines)
    try:
        summary = asyncio.run(inspect_dlq(
            client_settings(bp.app, "dlq-inspect"), pipeline=pipeline,
            dlq_topic=bp.pipelines[pipeline].dlq_topic_name, max_records=max_records,
            sample=sample, timeout=timeout))
    except KafkaError as exc:
        fail(f"reading the DLQ of {pipeline}: {exc!r}")
    click.echo(json.dumps(summary.to_json(), indent=2) if as_json else render(summary))
    if not summary.complete:
        fail(f"the read did not finish within {timeout:g} s (raise --timeout)")
