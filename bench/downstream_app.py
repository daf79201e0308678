"""The worker app of ``bench/downstream.py``: a pipeline calling the quota service once per
event, protected in one of five ways (``FBP_WAY``):

* ``none``: a plain pipeline; a non-200 answer raises, the pipeline retries it 3 times
  (0.1 s doubling), then dead-letters it.
* ``fixed``: the same under a distributed limiter shared by every worker at the quota
  (``limiter="bench-quota"``, ``FBP_QUOTA``/s, burst a tenth of that).
* ``backoff``: no limiter; each call retried in place with exponential backoff and full jitter
  (tenacity's ``wait_random_exponential``: 0.1 s doubling up to 5 s, 10 attempts), waiting at
  least ``Retry-After`` when the answer has one; then dead-lettered.
* ``guard``: ``bp.downstream("api", max_concurrency=64)`` and ``bp.pipeline(...,
  downstream=guard)``: the library's way.
* ``guard+rate``: the guard with ``rate_limit="bench-quota"`` at the quota as well.

Every way keeps up to ``FBP_CONCURRENCY`` (64) events in progress per worker, as the guard's
pipeline does. Env: FBP_APP_ID, FBP_SOURCE, FBP_SINK, FBP_DLQ, FBP_QUOTA_URL, FBP_WAY,
FBP_QUOTA, FBP_PARTITIONS (the source's), FBP_CONCURRENCY, KAFKA_BOOTSTRAP_SERVERS;
FBP_CALL_LOG (a folder): each worker writes ``calls-<pid>.csv`` there, one line per call
(``c,<sent>,<answered>,<status>``, wall clock) and, for a guard, its state every 50 ms
(``s,<time>,<breaker>,<limit>,<in flight>,<queued>,<learnt rate>,<lease share>,<lease level>,
<lease left>``): the timelines ``bench/downstream_timeline.py`` reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any

import faust

from faust_backpressure.agents.downstream import Downstream
from faust_backpressure.app import Backpressure
from faust_backpressure.testing.quota_client import CallResult, QuotaClient
from faust_backpressure.testing.settings import fast_faust_settings

WAYS = ("none", "fixed", "backoff", "guard", "guard+rate")
WAY = os.environ.get("FBP_WAY", "guard")
QUOTA = float(os.environ.get("FBP_QUOTA", "300"))
CONCURRENCY = int(os.environ.get("FBP_CONCURRENCY", "64"))
ATTEMPTS, FIRST_WAIT, MAX_WAIT = 10, 0.1, 5.0  # the backoff way's schedule
if WAY not in WAYS:
    raise ValueError(f"FBP_WAY must be one of {WAYS}, got {WAY!r}")

app = faust.App(os.environ["FBP_APP_ID"], store="rocksdict://",
                **fast_faust_settings(topic_partitions=int(os.environ.get("FBP_PARTITIONS",
                                                                          "4"))))
bp = Backpressure(app)
_client: QuotaClient | None = None


class CallFailed(Exception):
    """A call answered with something other than 200 (the ways without a guard)."""


class CallLog:
    """The per-call log (FBP_CALL_LOG), buffered in memory, flushed every second."""

    def __init__(self, folder: str | None) -> None:
        self._file: IO[str] | None = None
        if folder:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"calls-{os.getpid()}.csv")
            self._file = open(path, "a")  # noqa: SIM115 (open for the worker's life)
        self._lines: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._ticks = 0

    def call(self, sent: float, status: int) -> None:
        if self._file is not None:
            self._lines.append(f"c,{sent:.4f},{time.time():.4f},{status}\n")
            self._start()

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._sample_and_flush())

    async def _sample_and_flush(self) -> None:
        assert self._file is not None
        while True:
            await asyncio.sleep(0.05)
            self._sample()
            self._ticks += 1
            if self._ticks % 20 == 0:
                self._file.write("".join(self._lines))
                self._file.flush()
                self._lines.clear()

    def _sample(self) -> None:
        if WAY not in ("guard", "guard+rate"):
            return
        s = guard.stats()
        lease: Any = getattr(guard.quota, "limiter", None)
        share = level = left = float("nan")
        if lease is not None and hasattr(lease, "_lease"):
            share, level = lease._lease.rate, lease._lease.level
            left = lease._lease_expiry - time.monotonic()
        self._lines.append(f"s,{time.time():.4f},{s.breaker},{s.limit},{s.in_flight},"
                           f"{s.queued},{s.learnt_rate},{share:.1f},{level:.2f},{left:.2f}\n")


calls_log = CallLog(os.environ.get("FBP_CALL_LOG"))


def client() -> QuotaClient:
    global _client
    if _client is None:  # made on the worker's loop
        _client = QuotaClient(os.environ["FBP_QUOTA_URL"])
    return _client


async def call(value: bytes) -> bytes:
    """One call; a non-200 answer raises (the pipeline retries, then dead-letters)."""
    sent = time.time()
    result = await client().call(value.decode())
    calls_log.call(sent, result.status)
    if not result.ok:
        raise CallFailed(f"HTTP {result.status}")
    return value


def backoff_wait(attempt: int, result: CallResult | None) -> float:
    """Seconds before attempt ``attempt + 1``: random in [0, 0.1 * 2^(attempt-1)] capped at
    5 s, but never less than the answer's ``Retry-After``."""
    wait = random.uniform(0.0, min(MAX_WAIT, FIRST_WAIT * 2 ** (attempt - 1)))
    if result is not None and result.retry_after is not None:
        with contextlib.suppress(ValueError):  # an HTTP date: this service sends seconds
            wait = max(wait, float(result.retry_after))
    return wait


async def call_with_backoff(value: bytes) -> bytes:
    """Up to ``ATTEMPTS`` calls with backoff in between; then the last error is raised."""
    for attempt in range(1, ATTEMPTS + 1):
        result: CallResult | None = None
        try:
            sent = time.time()
            result = await client().call(value.decode())
            calls_log.call(sent, result.status)
            if result.ok:
                return value
            error: Exception = CallFailed(f"HTTP {result.status}")
        except (OSError, asyncio.TimeoutError) as exc:  # aiohttp's errors are OSErrors
            error = exc
        if attempt == ATTEMPTS:
            raise error
        await asyncio.sleep(backoff_wait(attempt, result))
    raise AssertionError("unreachable")


def guarded(guard: Downstream) -> Callable[[bytes], Awaitable[bytes]]:
    """The call for a guard: 429 and 503 become its slow-down / unavailable errors."""
    async def call_through(value: bytes) -> bytes:
        sent = time.time()
        result = await client().call(value.decode())
        calls_log.call(sent, result.status)
        guard.read_quota_headers(result.quota_headers)  # nothing unless the service announces
        if not result.ok:
            raise guard.slow_down_from_http(result.status, result.retry_after)
        return value
    return call_through


SOURCE, SINK, DLQ = os.environ["FBP_SOURCE"], os.environ["FBP_SINK"], os.environ["FBP_DLQ"]
if WAY in ("guard", "guard+rate"):
    guard = (bp.downstream("api", max_concurrency=CONCURRENCY) if WAY == "guard" else
             bp.downstream("api", max_concurrency=CONCURRENCY, rate_limit="bench-quota",
                           tokens_per_second=QUOTA, burst_capacity=QUOTA / 10))
    pipeline = bp.pipeline("calls", source=SOURCE, sink=SINK, dlq=DLQ,
                           process=guarded(guard), downstream=guard)
elif WAY == "backoff":
    pipeline = bp.pipeline("calls", source=SOURCE, sink=SINK, dlq=DLQ,
                           process=call_with_backoff, max_retries=0, concurrency=CONCURRENCY)
else:
    fixed = WAY == "fixed"
    pipeline = bp.pipeline("calls", source=SOURCE, sink=SINK, dlq=DLQ, process=call,
                           max_retries=3, retry_backoff=0.1, concurrency=CONCURRENCY,
                           limiter="bench-quota" if fixed else None,
                           tokens_per_second=QUOTA if fixed else None,
                           burst_capacity=QUOTA / 10 if fixed else None)
