"""The chaos scenario's worker: pipelines IN -> OUT with a DLQ under one distributed limiter.

Run by :mod:`faust_backpressure.testing.chaos` as ``faust -A faust_backpressure.testing.chaos_app
worker``; configured by the environment:

``FBP_APP_ID``, ``FBP_TAG`` (the run's topics: :func:`~.chaos_plan.topic_names`),
``FBP_PIPELINES`` (comma-separated: ``event``, a per-event pipeline, ``process=``; ``batch``,
``process_batch=`` with batches of ``FBP_BATCH`` (default 100)), ``FBP_GUARANTEE``
(``at_least_once`` | ``exactly_once``), ``FBP_LIMITER`` (``id:rate:burst``, a distributed limiter
shared by every worker and every pipeline), ``FBP_MAX_RETRIES`` (default 2), ``FBP_WORKER_NAME``
(set by :class:`~faust_backpressure.testing.workers.FaustWorker`), ``FBP_CONTROL`` (``1``: a
control loop on the limiter, watching the first pipeline's sink for a group that never
commits: it samples, publishes and decides on every worker through every fault, and holds
the rate, its lag being 0 and its CPU threshold 100%), ``FBP_QUOTA_URL`` (a quota service the
``event`` pipeline calls per good record through a downstream guard, ``chaos-api``, after
stamping it: a 429 pauses every worker and is retried, never dead-lettered).

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

from faust_backpressure.agents import Pipeline
from faust_backpressure.app import Backpressure
from faust_backpressure.control import BackpressureThresholds
from faust_backpressure.testing.chaos_plan import topic_names
from faust_backpressure.testing.quota_client import QuotaClient
from faust_backpressure.testing.settings import fast_faust_settings

__all__ = ["app", "bp", "check", "check_all", "pipelines"]

WORKER = os.environ.get("FBP_WORKER_NAME", "worker")

app = faust.App(os.environ["FBP_APP_ID"], store="rocksdict://",
                processing_guarantee=os.environ.get("FBP_GUARANTEE", "at_least_once"),
                **fast_faust_settings())
bp = Backpressure(app)


def check(value: Any) -> dict[str, Any]:
    """Refuse records marked ``fail``; stamp the others with this worker and the time."""
    if not isinstance(value, dict) or "id" not in value:
        raise ValueError(f"not a chaos record: {value!r}"[:200])
    if value.get("fail"):
        raise ValueError(f"record {value['id']} is refused (marked to fail)")
    return {"id": value["id"], "worker": WORKER, "at": time.time()}


def check_all(values: list[Any]) -> list[Any]:
    """The ``batch`` pipeline: :func:`check` per value, a refusal as that value's result."""
    results: list[Any] = []
    for value in values:
        try:
            results.append(check(value))
        except ValueError as exc:
            results.append(exc)
    return results


class _Dependency:
    """The quota service, called through the guard once :func:`check` has stamped the record
    (so ``at`` stays the gate's admission time; the guard's waits come after it)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.guard = bp.downstream("chaos-api", max_concurrency=16)
        self.client: QuotaClient | None = None

    async def call(self, rid: str) -> int:
        if self.client is None:  # made on the worker's loop
            self.client = QuotaClient(self.url)
        result = await self.client.call(rid)
        if not result.ok:
            raise self.guard.slow_down_from_http(result.status, result.retry_after)
        return result.status

    async def check(self, value: Any) -> dict[str, Any]:
        output = check(value)
        status: int = await self.guard.run(self.call, output["id"])  # (not 200: raised)
        return {**output, "status": status}


_dependency = _Dependency(os.environ["FBP_QUOTA_URL"]) if "FBP_QUOTA_URL" in os.environ else None
_limiter_id, _rate, _burst = os.environ.get("FBP_LIMITER", "chaos:1500:1500").split(":")
_modes: dict[str, dict[str, Any]] = {
    "event": {"process": check if _dependency is None else _dependency.check},
    "batch": {"process_batch": check_all, "batch_size": int(os.environ.get("FBP_BATCH", "100"))}}


def _pipeline(name: str) -> Pipeline:
    source, sink, dlq = topic_names(os.environ["FBP_TAG"], name)
    return bp.pipeline(
        f"chaos-{name}", source=app.topic(source, key_type=bytes, key_serializer="raw",
                                          value_serializer="json"),
        sink=sink, dlq=dlq, **_modes[name], limiter=_limiter_id,
        tokens_per_second=float(_rate), burst_capacity=float(_burst),
        max_retries=int(os.environ.get("FBP_MAX_RETRIES", "2")), retry_backoff=0.01)


# built in one expression, not filled in a loop: no module-level container is mutated
# (tests/unit/test_layers.py keeps per-app state out of modules)
pipelines = {name: _pipeline(name) for name in os.environ.get("FBP_PIPELINES", "event").split(",")}
if os.environ.get("FBP_CONTROL") == "1":
    _, _first_sink, _ = topic_names(os.environ["FBP_TAG"], next(iter(pipelines)))
    bp.control_loop(_limiter_id, downstream_group=f"{app.conf.id}-audit",
                    downstream_topics=[_first_sink],
                    interval=0.5, thresholds=BackpressureThresholds(cpu_threshold=1.0))
