"""The batch path of a pipeline (``process_batch=``; design and guarantees in docs/batching.md).

The seam diverts the source's fetched records here (:class:`BatchRunner` is their
:class:`~faust_backpressure.faust_seam.BatchTap`); one task cuts them into batches of one
partition, waits for the pipeline's gates, decodes, calls ``process_batch`` once, sends the
outputs straight to aiokafka's producer and acks the batch's offset range into Faust's
bookkeeping once every output is acked by Kafka (at_least_once), or commits the batch's
transaction (exactly_once, one per batch). A batch that cannot finish (the flow stopped while
it waited, or its partition was revoked) is abandoned: never acked, read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from faust.types import TP

from faust_backpressure.agents.batch import (
    Batch,
    BatchQueues,
    check_results,
    outputs_of,
    prepare,
    raw_sink_name,
)
from faust_backpressure.agents.batch_order import KeyChains, all_acked
from faust_backpressure.agents.batch_priority import send_low, split_low
from faust_backpressure.agents.batch_seek import SeekBacks
from faust_backpressure.agents.downstream import WaitAborted
from faust_backpressure.agents.flow import PRESSURE_DROP_RATIO, unless_flow_stops
from faust_backpressure.agents.headers import Failure
from faust_backpressure.agents.keyed_batch import KeyedBatches
from faust_backpressure.agents.latency import LatencyWindow
from faust_backpressure.agents.sensor import notify_sensors
from faust_backpressure.faust_seam import (
    ack_offsets,
    batch_writer,
    commit_through,
    crash_worker,
    flow_stopped_event,
    hold_partition,
    is_stale_generation,
    raw_producer,
    release_partition,
    transaction_producer,
)
from faust_backpressure.limiters.base import Clock

__all__ = ["BatchRunner"]

log = logging.getLogger(__name__)

#: At most this many batches of a partition wait for their acks (at_least_once).
MAX_PENDING_PER_PARTITION = 4
#: A partition whose queue holds this many batches is not fetched until it is down to 40%.
HIGH_WATER_BATCHES = 10
#: Seconds a revoke or stop waits for batches in progress before abandoning them.
BATCH_REVOKE_TIMEOUT = 5.0


class _Abandoned(Exception):
    """The batch cannot finish here: it is read again (never acked, never dead-lettered)."""


class BatchRunner:
    """Runs one pipeline's batches (see the module's docstring)."""

    def __init__(self, pipeline: Any, process_batch: Callable[[list[Any]], Any],
                 batch_size: int, batch_timeout: float, ordered_by_key: bool = False,
                 clock: Clock = time.monotonic) -> None:
        self.pipeline = pipeline  # a Pipeline (not imported: it imports this module)
        self.app = pipeline.app
        self.process_batch = process_batch
        #: per partition and key, the held events' chains (only with ``ordered_by_key``)
        self.chains = KeyChains(broken=_Abandoned) if ordered_by_key else None
        #: a keyed limit's split of each batch (docs/batching.md, "Keyed limits in a batch")
        self.keyed = None if pipeline.keyed is None else KeyedBatches(pipeline.keyed, _Abandoned)
        self.queues = BatchQueues(batch_size, batch_timeout)
        self.exactly_once = False  # set when it runs (see run)
        self._clock = clock
        # Room for several batches, not 2: a released partition is fetched again ~1 s later;
        # with little room every partition ends up waiting (docs/batching.md, "What is built")
        self.high_water = HIGH_WATER_BATCHES * batch_size
        self._held: set[Any] = set()
        self._wake = asyncio.Event()
        self._pending: dict[Any, set[asyncio.Future[None]]] = {}
        self._in_progress = 0
        self._current: Batch | None = None  # the batch run() is running
        self.seeks = SeekBacks(pipeline.name)
        self._idle = asyncio.Event()
        self._idle.set()
        self.batches = 0
        self.abandoned = 0
        #: Done batches: first record handed over -> acked (at_least_once) or committed
        #: (exactly_once), i.e. what a batch adds to the lag; and their process_batch time.
        self.latency = LatencyWindow()
        self.processing = LatencyWindow()
        self.revoke_timeout = BATCH_REVOKE_TIMEOUT
        self._sink_names = frozenset(sink.get_topic_name() for sink in pipeline.sinks)

    def divert(self, tp: TP, records: list[Any], first: int, generation: int) -> None:
        self.queues.add(tp, records, first, generation, self._clock())
        if self.queues.size(tp) >= self.high_water and tp not in self._held:
            self._held.add(tp)
            log.debug("pipeline %s: %s held", self.pipeline.name, tp)
            hold_partition(self.app, tp)
        self._wake.set()

    def revoke(self, tps: set[TP]) -> None:
        self.queues.clear(tps)
        self._held.difference_update(tps)
        self.seeks.forget(tps)
        if self.chains is not None:
            self.chains.forget(tps)

    def sought(self, tp: TP, offset: int) -> None:
        """``tp`` is delivered again from ``offset`` (:class:`SeekBacks`)."""
        self.seeks.sought(self.queues, self._current, tp, offset)
        self._maybe_release(tp)

    async def wait_idle(self) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), self.revoke_timeout)
        except asyncio.TimeoutError:
            log.warning("pipeline %s: %d batch(es) still in progress after %.1f s; they are "
                        "read again", self.pipeline.name, self._in_progress, self.revoke_timeout)

    async def run(self) -> None:
        """Take ready batches for ever (the pipeline's agent runs this)."""
        # Known only now: Faust's in_transaction needs in_worker, set after the app module
        # (and its pipelines) were imported (docs/batching.md, "What is built").
        self.exactly_once = bool(self.app.in_transaction)
        while True:
            batch = self.queues.next_ready(self._clock(), skip=self._busy())
            if batch is None:
                await self._sleep_until_ready()
                continue
            self._maybe_release(batch.tp)
            self._started()
            self._current = batch
            try:
                await self._run_batch(batch)
            except Exception as exc:
                self._crash(batch, exc)
                return
            finally:
                self._current = None
                self._finished()

    def _busy(self) -> list[Any]:
        return [tp for tp, pending in self._pending.items()
                if len(pending) >= MAX_PENDING_PER_PARTITION]

    async def _sleep_until_ready(self) -> None:
        self._wake.clear()
        deadline = self.queues.deadline()
        timeout = None if deadline is None else max(0.001, deadline - self._clock())
        if self._pending and (timeout is None or timeout > 0.05):
            timeout = 0.05  # a partition at its pending limit frees up when acks arrive
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _maybe_release(self, tp: Any) -> None:
        if tp in self._held and self.queues.size(tp) <= self.high_water * PRESSURE_DROP_RATIO:
            self._held.discard(tp)
            log.debug("pipeline %s: %s released", self.pipeline.name, tp)
            release_partition(self.app, tp)

    def _started(self) -> None:
        self._in_progress += 1
        self._idle.clear()

    def _finished(self) -> None:
        self._in_progress -= 1
        if not self._in_progress:
            self._idle.set()

    async def _run_batch(self, batch: Batch) -> None:
        try:
            await self._gates(batch)
            if self.exactly_once:
                await self._exactly_once(batch)
                return
            completion = await self._send_batch(batch, raw_producer(self.app))
        except _Abandoned:
            if self.keyed is not None:
                self.keyed.give_back(batch.tp, batch.split)
            self._abandon(batch, "before its sends")
            return
        # at_least_once: the next batch goes on while this one's acks arrive
        self._started()
        task = asyncio.ensure_future(self._complete(batch, completion))
        pending = self._pending.setdefault(batch.tp, set())
        pending.add(task)
        task.add_done_callback(lambda t: self._done_pending(batch.tp, t))

    def _done_pending(self, tp: Any, task: asyncio.Future[None]) -> None:
        self._pending.get(tp, set()).discard(task)
        self._finished()
        self._wake.set()
        error = None if task.cancelled() else task.exception()
        if isinstance(error, Exception):
            self._crash(None, error)

    def _crash(self, batch: Batch | None, error: Exception) -> None:
        """A batch failed in a way no retry here fixes (Kafka refused a send after its own
        retries, a fenced producer): the worker stops, as Faust's does; it is read again."""
        where = "" if batch is None else f" ({batch.tp}@{batch.first}..{batch.last})"
        log.error("pipeline %s: a batch failed%s: %r", self.pipeline.name, where, error)
        crash_worker(self.app, error)

    async def _complete(self, batch: Batch, completion: asyncio.Future[None]) -> None:
        try:
            await completion
        except _Abandoned:
            self._abandon(batch, "a key's chain broke")
            return
        if ack_offsets(self.app, batch.tp, batch.first, batch.last, batch.generation):
            self._done(batch)
        else:
            self._abandon(batch, "its partition was revoked before its acks came")

    def _abandon(self, batch: Batch, why: str) -> None:
        self.abandoned += 1  # not acked: read again after the rebalance that stopped it
        log.info("pipeline %s: batch %s@%d..%d abandoned (%s)", self.pipeline.name, batch.tp,
                 batch.first, batch.last, why)

    def _done(self, batch: Batch) -> None:
        self.batches += 1
        self.latency.observe(self._clock() - batch.opened_at)
        self.processing.observe(batch.processing)

    async def _exactly_once(self, batch: Batch) -> None:
        producer = await transaction_producer(self.app, batch.tp)
        if producer is None:
            raise _Abandoned()
        async with batch_writer(self.app, batch.tp):
            completion = await self._send_batch(batch, producer)
            await completion
            if not ack_offsets(self.app, batch.tp, batch.first, batch.last, batch.generation):
                raise _Abandoned()
        if await commit_through(self.app, batch.tp, batch.last + 1, timeout=30.0):
            self._done(batch)
        else:
            log.warning("pipeline %s: the batch %s@%d..%d was not committed (revoked?)",
                        self.pipeline.name, batch.tp, batch.first, batch.last)

    async def _gates(self, batch: Batch) -> None:
        """Pause, priority shedding (its records leave the batch: no tokens), the limiter
        for the batch's cost, a keyed limit's split; the flow stopping abandons the batch
        (no overdraft: a whole batch over the limit is too much)."""
        pipeline = self.pipeline
        self.seeks.skip_processed(self.app, batch)
        if pipeline.paused and not await pipeline.wait_resumed():
            raise _Abandoned()
        gate = pipeline.gate
        if gate is not None and gate.shed_threshold is not None:  # (a control loop's level)
            batch.records, batch.low = split_low(gate, batch.records)
        if gate is not None and batch.records and not (
                len(batch) <= gate.capacity and gate.limiter.try_acquire(len(batch))):
            gate.waits += 1
            if not await unless_flow_stops(self.app, gate.acquire_by_one(len(batch))):
                raise _Abandoned()
        if batch.stale or is_stale_generation(self.app, batch.generation):
            raise _Abandoned()
        if self.keyed is not None:  # the last gate: a batch abandoned after it gives back
            batch.split = await self.keyed.split(batch, self.queues)

    async def _send_batch(self, batch: Batch, producer: Any) -> asyncio.Future[None]:
        """Decode, process, send; returns what completes once every output (retries and
        dead letters included) is acked by Kafka."""
        admitted = batch.records if batch.split is None else batch.split.admitted
        self.pipeline.stats.consumed += len(admitted)
        keys: list[Any] = []
        values: list[Any] = []
        records: list[Any] = []
        futures: list[Any] = []
        undecodable: list[tuple[Any, Exception]] = []
        decode = self.pipeline.decode
        for record in admitted:
            try:
                key, value = decode(record)
            except Exception as exc:
                undecodable.append((record, exc))
                continue
            keys.append(key)
            values.append(value)
            records.append(record)
        results = await self._call(values, batch)  # before any send: abandoned, none sent
        if not batch.start_sending():  # sought back meanwhile: read again
            raise _Abandoned()
        for record, error in undecodable:
            futures.append(await self._dead_letter(producer, record,
                                                   Failure.now(error, "decode", 0)))
        if batch.low and self.pipeline.gate is not None:  # shed by priority in _gates
            futures.extend(await send_low(self.pipeline.gate, producer, batch.low))
        items: Iterable[tuple[Any, Any, Any, Any]] = zip(records, keys, values, results,
                                                          strict=True)
        held: dict[Any, list[tuple[Any, Any, Any, Any]]] = {}
        if self.chains is not None:  # ordered_by_key: a failing key's later events wait
            items, held = self.chains.hold_back(batch.tp, list(items))
        failed: list[tuple[Any, Any, Any, BaseException]] = []
        # the common case inline (one sink, one raw output per event): no call per event
        fast = raw_sink_name(self.pipeline.sinks)
        send = producer.send
        produced = 0
        for record, key, value, result in items:
            if fast is not None and type(result) is bytes and (key is None
                                                               or type(key) is bytes):
                futures.append(await send(fast, result, key=key))
                produced += 1
            elif isinstance(result, BaseException):
                failed.append((record, key, value, result))
            else:
                produced += await self._send_outputs(producer, record, key, result, 1, futures)
        self._sent_to_sensors(produced)
        if self.keyed is not None and batch.split is not None:  # after their keys' outputs
            futures.extend(await self.keyed.send_split(producer, batch.split, self._dead_letter))
        if held and self.chains is not None:  # after the sends above: none is overtaken
            futures.extend(self.chains.start(
                batch.tp, held, functools.partial(self._in_key_order, producer)))
        if failed:
            futures.append(asyncio.ensure_future(self._retry_all(producer, failed)))
        return asyncio.ensure_future(self._all_acked_seen(futures))

    async def _in_key_order(self, producer: Any,
                            held: Sequence[tuple[Any, Any, Any, Any]]) -> list[Any]:
        """Events in order (one key's held ones, or a batch's failed ones): a failed one is
        retried (or dead-lettered) before the next one's outputs go out. Returns their send
        futures."""
        futures: list[Any] = []
        for record, key, value, result in held:
            if isinstance(result, BaseException):
                await self._retry(producer, record, key, value, result, futures)
            else:
                self._sent_to_sensors(await self._send_outputs(producer, record, key, result,
                                                               1, futures))
        return futures

    def _sent_to_sensors(self, sends: int) -> None:
        """Counts ``sends`` (every output to each sink) in the stats and for sensors with batch
        hooks (credit flow's ``SinkSends``): Faust's per-send sensor calls do not happen here."""
        self.pipeline.stats.produced += sends
        if sends:
            per_sink = sends // len(self._sink_names)
            notify_sensors(self.app, "on_batch_sent", dict.fromkeys(self._sink_names, per_sink))

    async def _all_acked_seen(self, futures: list[Any]) -> None:
        """Every future's ack (a retry task's: a list of them) reported once, when all came."""
        acked: list[Any] = []
        for future in futures:
            metadata = await future
            acked.extend(metadata if isinstance(metadata, list) else [metadata])
        notify_sensors(self.app, "on_batch_acked", [m for m in acked if m is not None])

    async def _call(self, values: list[Any], batch: Batch | None = None) -> list[Any]:
        """One result per value; a call that raises or miscounts is split in halves, down to
        single values, whose error is then their result. The calls' time is ``batch``'s."""
        if not values:
            return []
        try:
            guard = self.pipeline.downstream
            if guard is not None:  # the batch is one call: pause, breaker, rate, slot
                try:
                    results = await guard.run_unless(flow_stopped_event(self.app),
                                                     self._timed, list(values), batch)
                except WaitAborted:
                    raise _Abandoned() from None
            else:
                results = await self._timed(list(values), batch)
            return check_results(values, results)
        except _Abandoned:
            raise
        except Exception as exc:
            if len(values) == 1:
                return [exc]
            middle = len(values) // 2
            return [*await self._call(values[:middle], batch),
                    *await self._call(values[middle:], batch)]

    async def _timed(self, values: list[Any], batch: Batch | None) -> Any:
        """``process_batch(values)``; its time (user code alone) adds to ``batch.processing``."""
        started = self._clock()
        try:
            results = self.process_batch(values)
            if inspect.isawaitable(results):
                results = await results
            return results
        finally:
            if batch is not None:
                batch.processing += self._clock() - started

    async def _send_outputs(self, producer: Any, record: Any, key: Any, result: Any,
                            attempts: int, futures: list[Any]) -> int:
        """Sends ``result``'s outputs to the sinks (the DLQ if one refuses); how many sends."""
        stats = self.pipeline.stats
        outputs = outputs_of(result)
        if not outputs:
            stats.filtered += 1
            return 0
        try:
            prepared = [(sink.get_topic_name(), *prepare(sink, key, output))
                        for output in outputs for sink in self.pipeline.sinks]
        except Exception as exc:  # an output the sink's serializer refuses: no retry helps
            futures.append(await self._dead_letter(producer, record,
                                                   Failure.now(exc, "sink", attempts)))
            return 0
        for topic, raw_key, raw_value in prepared:
            futures.append(await producer.send(topic, raw_value, key=raw_key))
        return len(prepared)

    async def _retry_all(self, producer: Any,
                         failed: Sequence[tuple[Any, Any, Any, BaseException]]) -> list[Any]:
        """The failed events retried (or dead-lettered) one by one; their sends' acks."""
        return await all_acked(await self._in_key_order(producer, failed))

    async def _retry(self, producer: Any, record: Any, key: Any, value: Any,
                     error: BaseException, futures: list[Any]) -> None:
        """One failed event, alone: retried per the pipeline's settings, then dead-lettered."""
        pipeline = self.pipeline
        failure = Failure.now(error, "process", 1)
        attempt = 1
        while attempt <= pipeline.max_retries:
            pipeline.stats.retries += 1
            await asyncio.sleep(pipeline.backoff(attempt))
            attempt += 1
            (result,) = await self._call([value])
            if not isinstance(result, BaseException):
                self._sent_to_sensors(await self._send_outputs(producer, record, key, result,
                                                               attempt, futures))
                return
            failure = Failure.now(result, "process", attempt, failure.first_failure)
        futures.append(await self._dead_letter(producer, record, failure))

    async def _dead_letter(self, producer: Any, record: Any, failure: Failure) -> Any:
        pipeline = self.pipeline
        headers = pipeline.dead_letter_headers(record, failure)
        return await producer.send(pipeline.dlq_topic_name, record.value, key=record.key,
                                   headers=headers)

