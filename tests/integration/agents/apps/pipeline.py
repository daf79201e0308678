"""A pipeline worker for the process-level tests: source -> check -> sink, failures -> DLQ.

Env: FBP_APP_ID, FBP_SOURCE, FBP_SINK, FBP_DLQ, FBP_GUARANTEE (at_least_once|exactly_once),
FBP_FAIL_EVERY (ids divisible by it fail permanently; 0 = none), FBP_COMMIT_INTERVAL (seconds),
FBP_RATE (a per-worker token bucket of that rate, burst = rate), FBP_LIMITER_ID ("id:rate:burst":
a distributed limiter instead), FBP_BATCH (a batch size: the pipeline runs in batch mode,
``process_batch=``, 50 ms timeout), FBP_KEYED ("rate:burst:partitions": a keyed limit
"per-key" by the record's key, instead of the limiters above; FBP_KEYED_ON_LIMIT: its on_limit,
default "defer"; FBP_KEYED_COST=1: its cost= by id, see ``cost_by_id``),
FBP_REPLICATION (Faust's topic_replication_factor, default 1; the internal topics follow
FAUST_BP_INTERNAL_REPLICATION_FACTOR when set).
"""

import logging
import os
from typing import Any

import faust

from faust_backpressure.app import Backpressure
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.tables import DistributedRateLimiterFactory
from faust_backpressure.testing.settings import fast_faust_settings

app = faust.App(os.environ["FBP_APP_ID"], store="rocksdict://",
                processing_guarantee=os.environ.get("FBP_GUARANTEE", "at_least_once"),
                **fast_faust_settings(broker_commit_interval=float(
                    os.environ.get("FBP_COMMIT_INTERVAL", "0.5")),
                    topic_replication_factor=int(os.environ.get("FBP_REPLICATION", "1"))))
bp = Backpressure(app)
if os.environ.get("FBP_DEBUG_LOG"):  # the batch path's decisions, for digging into a failure
    @app.task
    async def debug_log() -> None:  # once the worker has set up logging
        logging.getLogger("faust_backpressure").setLevel(logging.DEBUG)
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.DEBUG)
fail_every = int(os.environ.get("FBP_FAIL_EVERY", "0"))


def check(value: bytes) -> bytes:
    number = int(value.split(b"-")[1])
    if fail_every and number % fail_every == 0:
        raise ValueError(f"id {number} is refused")
    return value


def cost_by_id(event: Any) -> int:
    """A keyed limit's cost of a record (a batch's record as an event): ids divisible by 41
    cost -1 (refused: to the DLQ), by 3 cost 2, the others 1."""
    number = int(event.value.split(b"-")[1])
    return -1 if number % 41 == 0 else 2 if number % 3 == 0 else 1


limiter: Any = None
if os.environ.get("FBP_RATE"):
    rate = float(os.environ["FBP_RATE"])
    limiter = TokenBucketRateLimiter(rate, rate)
elif os.environ.get("FBP_LIMITER_ID"):
    lid, rate_text, burst_text = os.environ["FBP_LIMITER_ID"].split(":")
    limiter = DistributedRateLimiterFactory.create_distributed(
        app, lid, float(rate_text), float(burst_text))
elif os.environ.get("FBP_KEYED"):
    rate_text, burst_text, partitions_text = os.environ["FBP_KEYED"].split(":")
    limiter = bp.rate_limit_per_key("per-key", tokens_per_second=float(rate_text),
                                    burst_capacity=float(burst_text),
                                    partitions=int(partitions_text),
                                    on_limit=os.environ.get("FBP_KEYED_ON_LIMIT", "defer"),
                                    cost=cost_by_id if os.environ.get("FBP_KEYED_COST") else None)



def check_all(values: list[bytes]) -> list[bytes | Exception]:
    out: list[bytes | Exception] = []
    for value in values:
        try:
            out.append(check(value))
        except ValueError as exc:
            out.append(exc)
    return out


batch_size = int(os.environ.get("FBP_BATCH", "0"))
modes: dict[str, Any] = ({"process_batch": check_all, "batch_size": batch_size}
                         if batch_size else {"process": check})
pipeline = bp.pipeline("ids", source=os.environ["FBP_SOURCE"], sink=os.environ["FBP_SINK"],
                       dlq=os.environ["FBP_DLQ"], max_retries=1, retry_backoff=0.01,
                       limiter=limiter, **modes)
