"""``pause PIPELINE`` / ``resume PIPELINE``: every worker stops (or resumes) consuming a pipeline.

The state lives in a compacted one-partition topic of the app, ``<app id>-fbp-ops``, keyed
``pause/<pipeline>``: the latest record says whether the pipeline is paused, by whom and why.
Every worker follows that topic from its beginning with its own consumer (no group), so a
pause holds on every worker, including ones started later, until ``resume``. A worker
applies a record by holding its pipeline's next event (unacked, so nothing is committed past
it; the buffer bound pauses the partitions' fetching) and acknowledges with a record keyed
``ack/<pipeline>/<worker>``; the command waits until as many workers as the app's consumer
group has members have acknowledged. Records are signed with the app's secret when it has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from aiokafka import TopicPartition
from mode import Service

from faust_backpressure.app.cluster import (
    STATUS_INTERVAL,
    ClusterView,
    WorkerStatusRecord,
    worker_body,
    worker_key,
)
from faust_backpressure.app.downstream_ops import (
    BreakerCommand,
    FailingRecord,
    QuotaReport,
    RecoveredRecord,
    SlowDownRecord,
)
from faust_backpressure.app.keyed_ops import (
    KeyedStatusRecord,
    KeyOverrideCommand,
    status_body,
    status_key,
)
from faust_backpressure.app.registry import Installation
from faust_backpressure.faust_seam import send_control
from faust_backpressure.tables.limiter_commands import CommandTimeout
from faust_backpressure.tables.service import find_channel
from faust_backpressure.wire.kafka_clients import (
    KafkaClientSettings,
    kafka_admin,
    kafka_consumer,
    kafka_producer,
    raw_topic,
    topic_partitions,
)
from faust_backpressure.wire.signing import (
    OperatorCommand,
    RejectedRecord,
    Rejections,
)
from faust_backpressure.wire.topics import ops_topic

__all__ = ["PauseCommand", "install_pause_control", "pauses",
           "send_acknowledged", "send_breaker", "send_key_override", "send_pause",
           "worker_name"]

log = logging.getLogger(__name__)

#: Seconds a status record or tombstone may take to send: while the worker stops the producer
#: may never deliver, and the stop must not wait on it.
SEND_TIMEOUT = 2.0


def worker_name() -> str:
    """``host:pid``: how acknowledgements and slow-downs name this worker."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _key(pipeline: str) -> bytes:
    return f"pause/{pipeline}".encode()


@dataclass(frozen=True, slots=True)
class PauseCommand(OperatorCommand):
    kind: ClassVar[str] = "pause"
    pipeline: str
    paused: bool
    command_id: str
    by: str
    at: float
    reason: str = ""

    @property
    def key(self) -> bytes:
        return _key(self.pipeline)

    def encode(self, secret: bytes | None = None) -> bytes:
        return self._encode({"pipeline": self.pipeline, "paused": self.paused}, self.key, secret)

    @classmethod
    def decode(cls, raw: bytes | None, key: bytes | None,
               secret: bytes | None = None) -> PauseCommand:
        data, pipeline = cls._decode(raw, key, secret, name="pipeline", record_key=_key)
        if not isinstance(data.get("paused"), bool):
            raise RejectedRecord("paused must be a boolean")
        return cls(pipeline, data["paused"], *cls.common(data))


class _OpsFollower(Service):
    """On a worker: follows the ops topic: pauses/resumes its pipelines, slows down and
    forces the breakers of its downstream guards, overrides keys of its keyed limits,
    acknowledges commands; publishes its summary and its keyed limits' status; keeps every
    worker's summary (the cluster view, :mod:`.cluster`)."""

    def __init__(self, bp: Installation, snapshot: Callable[[Installation], dict[str, Any]],
                 **kwargs: Any) -> None:
        self.bp = bp
        self.snapshot = snapshot
        self.worker = worker_name()
        self.cluster = ClusterView()
        self._acked: set[str] = set()
        #: Ops records this worker rejected, by reason.
        self.rejections = Rejections()
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        app = self.bp.app
        topic = raw_topic(app, ops_topic(app.conf.id), partitions=1, compacting=True,
                          replicas=self.bp.settings.internal_replication_factor)
        await topic.maybe_declare()
        consumer = kafka_consumer(app, "ops")
        await consumer.start()
        tp = TopicPartition(ops_topic(app.conf.id), 0)
        await topic_partitions(consumer, tp.topic)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        self.add_future(self._follow(consumer))
        self.add_future(self._publish_status())

    async def _publish_status(self) -> None:
        """Every STATUS_INTERVAL s on the ops topic: each keyed limit's stats (for
        ``status``) and this worker's summary (for every worker's cluster view)."""
        secret = self.bp.settings.secret_key
        last: dict[str, dict[str, Any]] = {}
        try:
            while not self.should_stop:
                try:
                    for name, gate in self.bp.keyed_limits.items():
                        last[name] = status_body(gate, self.worker, last.get(name), time.time())
                        await self._send(status_key(name, self.worker),
                                         KeyedStatusRecord.encode(last[name], secret))
                    await self._send(worker_key(self.worker),
                                     WorkerStatusRecord.encode(self._summary(), secret))
                except Exception:  # a broker hiccup: never the worker's end; stale, then fresh
                    log.warning("status not published", exc_info=True)
                await self.sleep(STATUS_INTERVAL)
        finally:  # gone: tombstones, so that the compacted topic forgets this worker's keyed
            # status (best effort: readers skip stale entries anyway)
            with contextlib.suppress(Exception):
                for name in self.bp.keyed_limits:
                    await self._send(status_key(name, self.worker), None)

    def _summary(self) -> dict[str, Any]:
        channel = find_channel(self.bp.app)
        conf = self.bp.app.conf
        web = f"{conf.canonical_url}".rstrip("/") + "/backpressure/ui" if conf.web_enabled \
            else None
        return worker_body(self.snapshot(self.bp), self.worker,
                           set() if channel is None else set(channel.owned), web, time.time())

    async def _send(self, key: bytes, value: bytes | None) -> None:
        await asyncio.wait_for(send_control(self.bp.app, ops_topic(self.bp.app.conf.id), key,
                                            value), SEND_TIMEOUT)

    async def _follow(self, consumer: Any) -> None:
        try:
            while not self.should_stop:
                batch = await consumer.getmany(timeout_ms=300)
                for records in batch.values():
                    for record in records:
                        await self._dispatch(record.key or b"", record.value)
        finally:
            with contextlib.suppress(Exception):  # best effort: the follower is stopping
                await consumer.stop()

    async def _dispatch(self, key: bytes, value: bytes | None) -> None:
        kind, slash, _ = key.partition(b"/")
        handle = {b"pause": self._apply, b"downstream": self._slow_down,
                  b"quota": self._quota_report, b"recovered": self._recovered,
                  b"failing": self._failing, b"breaker": self._force,
                  b"keyed": self._override_key, b"worker-status": self._worker_status,
                  }.get(kind) if slash else None  # others (acks, keyed status): not ours
        try:
            if handle is not None:
                await handle(value, key)
        except RejectedRecord as exc:
            self.rejections.count(exc)
            log.warning("ops record %r rejected: %s", key[:80], exc.reason)
        except Exception:  # broad: a record we fail to apply must not stop the worker (a
            # crashed follower takes its worker down with it)
            log.exception("ops record %r not applied", key[:80])

    def _news(self, kind: Any, value: bytes | None, key: bytes, **limits: Any) -> Any:
        """A downstream guard's news (``kind``), checked against this worker's clock."""
        return kind.decode(value, key, self.bp.settings.secret_key, now=time.time(),
                           max_skew=self.bp.settings.max_clock_skew, **limits)

    async def _apply(self, value: bytes | None, key: bytes) -> None:
        command = PauseCommand.decode(value, key, self.bp.settings.secret_key)
        pipeline = self.bp.pipelines.get(command.pipeline)
        if pipeline is None:
            return
        if command.paused:
            pipeline.pause({"by": command.by, "at": command.at, "reason": command.reason})
        else:
            pipeline.resume()
        await self._ack(command, command.pipeline, {"paused": command.paused},
                        f"pipeline {command.pipeline} "
                        f"{'paused' if command.paused else 'resumed'}")

    async def _slow_down(self, value: bytes | None, key: bytes) -> None:
        guard = self.bp.downstreams.get(key.decode(errors="replace").removeprefix("downstream/"))
        if guard is not None:
            record = self._news(SlowDownRecord, value, key, max_pause=guard.max_retry_after)
            guard.pause_until(record.until, source=f"from {record.by}")

    async def _recovered(self, value: bytes | None, key: bytes) -> None:
        record = self._news(RecoveredRecord, value, key)
        guard = self.bp.downstreams.get(record.dependency)
        if guard is not None:
            guard.recovered_at(record.at, source=f"from {record.by}")

    async def _failing(self, value: bytes | None, key: bytes) -> None:
        record = self._news(FailingRecord, value, key)
        guard = self.bp.downstreams.get(record.dependency)
        if guard is not None and record.by != self.worker:  # its own: it knows
            guard.failing_until(record.at, record.until, source=f"from {record.by}")

    async def _quota_report(self, value: bytes | None, key: bytes) -> None:
        report = self._news(QuotaReport, value, key)
        guard = self.bp.downstreams.get(report.dependency)
        if guard is not None and guard.quota is not None:
            guard.quota.report(report.by, report.episode, report.served, report.whole)

    async def _worker_status(self, value: bytes | None, key: bytes) -> None:
        if value is None:  # a tombstone: that worker is gone
            self.cluster.forget(key.decode(errors="replace").partition("/")[2])
        else:
            self.cluster.update(WorkerStatusRecord.decode(value, key,
                                                          self.bp.settings.secret_key))

    async def _force(self, value: bytes | None, key: bytes) -> None:
        command = BreakerCommand.decode(value, key, self.bp.settings.secret_key)
        guard = self.bp.downstreams.get(command.dependency)
        if guard is None:
            return
        guard.force(command.state)
        await self._ack(command, f"breaker/{command.dependency}", {"state": command.state},
                        f"breaker {command.dependency} set to {command.state}")

    async def _override_key(self, value: bytes | None, key: bytes) -> None:
        command = KeyOverrideCommand.decode(value, key, self.bp.settings.secret_key)
        gate = self.bp.keyed_limits.get(command.limit)
        if gate is None:
            return
        limits = command.limits
        if limits is None:
            gate.operator_limits.pop(command.key, None)
        else:
            gate.operator_limits[command.key] = limits
        done = ("cleared" if limits is None else
                f"set to {limits.tokens_per_second:g}/s, burst {limits.burst_capacity:g}")
        await self._ack(command, f"keyed/{command.limit}/{command.key.hex()}",
                        {"rate": command.rate, "burst": command.burst},
                        f"keyed limit {command.limit}: key {command.shown_key!r} {done}")

    async def _ack(self, command: PauseCommand | BreakerCommand | KeyOverrideCommand,
                   subject: str, extra: dict[str, Any], done: str) -> None:
        """Log what an operator's ``command`` did (``done``, by whom, why), once, and
        acknowledge it as ``ack/<subject>/<worker>``."""
        if command.command_id in self._acked:  # read again from the start: applied, not news
            return
        self._acked.add(command.command_id)
        log.warning("%s by %s%s", done, command.by,
                    f": {command.reason}" if command.reason else "")
        ack = json.dumps({"type": "pause-ack", "id": command.command_id, "worker": self.worker,
                          **extra}).encode()
        await send_control(self.bp.app, ops_topic(self.bp.app.conf.id),
                           f"ack/{subject}/{self.worker}".encode(), ack)


def install_pause_control(bp: Installation,
                          snapshot: Callable[[Installation], dict[str, Any]]) -> None:
    """Follow the ops topic on every worker of an app that uses the library (pipelines,
    gates, limiters, control loops, downstream guards or keyed limits): pause/resume,
    slow-downs, breaker commands, key overrides, and the cluster view's summaries (this
    worker's made of its page's ``snapshot(bp)``)."""
    app = bp.app

    async def fbp_pause_control() -> None:
        if (bp.pipelines or bp.downstreams or bp.keyed_limits or bp.all_gates()
                or bp.registered_limiters or bp.control_loops):
            bp.ops_follower = _OpsFollower(bp, snapshot)
            await app.add_runtime_dependency(bp.ops_follower)

    app.task(fbp_pause_control)


async def _group_members(kafka: KafkaClientSettings | str, group: str) -> int:
    async with kafka_admin(kafka, "ops") as admin:
        responses = await admin.describe_consumer_groups([group])
    return sum(len(g[5]) for r in responses for g in r.groups if g[1] == group)


async def send_pause(kafka: KafkaClientSettings | str, app_id: str, pipeline: str, *,
                     paused: bool, by: str, reason: str = "", secret: bytes | None,
                     timeout: float = 30.0) -> tuple[int, int]:
    """Write the pause state and wait for every worker's acknowledgement; ``(acked, workers)``.
    :class:`CommandTimeout` if fewer acknowledge in time."""
    command = PauseCommand(pipeline, paused, uuid.uuid4().hex, by, time.time(), reason)
    return await send_acknowledged(
        kafka, app_id, command.key, command.encode(secret), command.command_id,
        what=f"{'pause' if paused else 'resume'} of {pipeline!r}", timeout=timeout)


async def send_breaker(kafka: KafkaClientSettings | str, app_id: str, dependency: str, *,
                       state: str, by: str, reason: str = "", secret: bytes | None,
                       timeout: float = 30.0) -> tuple[int, int]:
    """Force a downstream guard's breaker (``open``, ``close``, ``auto``) on every worker;
    ``(acked, workers)``. :class:`CommandTimeout` if fewer acknowledge in time."""
    command = BreakerCommand.new(dependency, state, by, reason)
    return await send_acknowledged(kafka, app_id, command.key, command.encode(secret),
                                   command.command_id,
                                   what=f"breaker {state} of {dependency!r}", timeout=timeout)


async def send_key_override(kafka: KafkaClientSettings | str, app_id: str,
                            command: KeyOverrideCommand, *, secret: bytes | None,
                            timeout: float = 30.0) -> tuple[int, int]:
    """Set or clear one key's limits of a keyed limit on every worker; ``(acked, workers)``.
    :class:`CommandTimeout` if fewer acknowledge in time."""
    return await send_acknowledged(
        kafka, app_id, command.key_record, command.encode(secret), command.command_id,
        what=f"key override of {command.limit!r} {command.shown_key!r}", timeout=timeout)


async def send_acknowledged(kafka: KafkaClientSettings | str, app_id: str, key: bytes,
                            value: bytes, command_id: str, *, what: str,
                            timeout: float = 30.0) -> tuple[int, int]:
    """Write a command to the ops topic and wait until every worker of the app's group has
    acknowledged it; ``(acked, workers)``. :class:`CommandTimeout` if fewer do in time."""
    topic = ops_topic(app_id)
    async with kafka_consumer(kafka, "ops") as consumer, kafka_producer(kafka, "ops") as producer:
        if not await topic_partitions(consumer, topic, 5.0):
            raise CommandTimeout(f"app {app_id!r} has no {topic} topic: no worker with a "
                                 "pipeline, a downstream guard or a keyed limit has run")
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        await consumer.position(tp)
        await producer.send_and_wait(topic, value, key=key, partition=0)
        acked: set[str] = set()
        workers = await _group_members(kafka, app_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=300)
            for record in batch.get(tp, []):
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    body = json.loads(record.value)
                    if body.get("type") == "pause-ack" and body.get("id") == command_id:
                        acked.add(str(body["worker"]))
            if workers and len(acked) >= workers:
                return len(acked), workers
            workers = workers or await _group_members(kafka, app_id)
        raise CommandTimeout(f"{what} acknowledged by {len(acked)} of {workers} worker(s) "
                             f"within {timeout:g} s")


def pauses(ops: dict[str, Any]) -> dict[str, Any]:
    """The latest pause record per pipeline among the ops topic's records."""
    return {k.removeprefix("pause/"): v for k, v in ops.items()
            if k.startswith("pause/") and isinstance(v, dict)}

