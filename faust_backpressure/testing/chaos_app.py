"""The chaos scenario's worker: ``bp.pipeline`` IN -> OUT with a DLQ and a distributed limiter.

Run by :mod:`faust_backpressure.testing.chaos` as ``faust -A faust_backpressure.testing.chaos_app
worker``; configured by the environment:

``FBP_APP_ID``, ``FBP_SOURCE``, ``FBP_SINK``, ``FBP_DLQ``, ``FBP_GUARANTEE``
(``at_least_once`` | ``exactly_once``), ``FBP_LIMITER`` (``id:rate:burst``, a distributed limiter
shared by every worker), ``FBP_MAX_RETRIES`` (default 2), ``FBP_BATCH`` (> 0: batch mode,
batches of that size), ``FBP_WORKER_NAME`` (set by
:class:`~faust_backpressure.testing.workers.FaustWorker`).

Input values are JSON objects ``{"id": ..., "fail": bool}`` (a few are not JSON: the DLQ gets them
with stage ``decode``); ``fail`` makes ``process`` raise every time (the DLQ gets them with stage
``process`` after ``1 + max_retries`` attempts). An output is ``{"id", "worker", "at"}``, ``at``
being when ``process`` ran: right after the gate admitted the event, so the outputs' ``at`` are
the admission timestamps the scenario checks the limiter's bound with.
"""

from __future__ import annotations

import os
import time
from typing import Any

import faust

from faust_backpressure.app import Backpressure
from faust_backpressure.testing.settings import fast_faust_settings

__all__ = ["app", "bp", "check", "check_all"]

WORKER = os.environ.get("FBP_WORKER_NAME", "worker")

app = faust.App(os.environ["FBP_APP_ID"], store="rocksdict://",
                processing_guarantee=os.environ.get("FBP_GUARANTEE", "at_least_once"),
                **fast_faust_settings())
bp = Backpressure(app)
source = app.topic(os.environ["FBP_SOURCE"], key_type=bytes, key_serializer="raw",
                   value_serializer="json")


def check(value: Any) -> dict[str, Any]:
    """Refuse records marked ``fail``; stamp the others with this worker and the time."""
    if not isinstance(value, dict) or "id" not in value:
        raise ValueError(f"not a chaos record: {value!r}"[:200])
    if value.get("fail"):
        raise ValueError(f"record {value['id']} is refused (marked to fail)")
    return {"id": value["id"], "worker": WORKER, "at": time.time()}


def check_all(values: list[Any]) -> list[Any]:
    """Batch mode (``FBP_BATCH``): :func:`check` per value, a refusal as that value's result."""
    results: list[Any] = []
    for value in values:
        try:
            results.append(check(value))
        except ValueError as exc:
            results.append(exc)
    return results


_batch = int(os.environ.get("FBP_BATCH", "0"))
_mode: dict[str, Any] = ({"process_batch": check_all, "batch_size": _batch} if _batch
                         else {"process": check})
_limiter_id, _rate, _burst = os.environ.get("FBP_LIMITER", "chaos:1500:1500").split(":")
pipeline = bp.pipeline("chaos", source=source, sink=os.environ["FBP_SINK"],
                       dlq=os.environ["FBP_DLQ"], **_mode, limiter=_limiter_id,
                       tokens_per_second=float(_rate), burst_capacity=float(_burst),
                       max_retries=int(os.environ.get("FBP_MAX_RETRIES", "2")),
                       retry_backoff=0.01)
