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
FBP_QUOTA, FBP_PARTITIONS (the source's), FBP_CONCURRENCY, KAFKA_BOOTSTRAP_SERVERS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Awaitable, Callable

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


def client() -> QuotaClient:
    global _client
    if _client is None:  # made on the worker's loop
        _client = QuotaClient(os.environ["FBP_QUOTA_URL"])
    return _client


async def call(value: bytes) -> bytes:
    """One call; a non-200 answer raises (the pipeline retries, then dead-letters)."""
    result = await client().call(value.decode())
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
            result = await client().call(value.decode())
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
        result = await client().call(value.decode())
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
