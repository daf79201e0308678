"""The example app's input -> intermediate -> output (+ DLQ) topology, as a worker process."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from faust_backpressure.agents import headers as h
from faust_backpressure.testing.kafka_io import consume, create_topics, produce
from faust_backpressure.testing.workers import FaustWorker

from .helpers import hdr

pytestmark = pytest.mark.kafka

TOPICS = ("backpressure-input", "backpressure-intermediate", "backpressure-output",
          "backpressure-dlq")


async def test_example_pipeline_app(kafka_bootstrap: str, unique_name: Callable[[str], str],
                                    faust_workers: Callable[..., FaustWorker]) -> None:
    # The example's topic names are fixed, so it gets a fresh broker-wide app id only; the
    # assertions look at this test's own order ids.
    run = unique_name("run")
    await create_topics(kafka_bootstrap, {t: 4 for t in TOPICS})
    worker = faust_workers("examples.pipeline_app", name="example",
                           env={"FBP_EXAMPLE_APP_ID": unique_name("app")}).wait_ready()
    orders = [{"id": f"{run}-{i}", "sku": "s", "quantity": i % 4, "unit_price": 2.5}
              for i in range(40)]
    bad = [b"{oops", json.dumps({"id": f"{run}-neg", "sku": "s", "quantity": -1,
                                  "unit_price": 1.0}).encode()]
    await produce(kafka_bootstrap, "backpressure-input",
                  [(o["id"].encode(), json.dumps(o).encode()) for o in orders]
                  + [(f"{run}-bad{i}".encode(), b) for i, b in enumerate(bad)])

    def mine(records: list) -> list:  # type: ignore[type-arg]
        return [r for r in records if r.key and r.key.decode().startswith(run)]

    out = await consume(kafka_bootstrap, "backpressure-output",
                        until=lambda rs: len(mine(rs)) >= 30, timeout=60)
    dead = await consume(kafka_bootstrap, "backpressure-dlq",
                         until=lambda rs: len(mine(rs)) >= 2, timeout=30)
    priced = {json.loads(r.value)["id"]: json.loads(r.value)["total"] for r in mine(out)}
    assert priced == {o["id"]: o["quantity"] * 2.5 for o in orders if o["quantity"]}
    reasons = {hdr(r)[h.ERROR_TYPE] for r in mine(dead)}
    assert reasons == {b"ValueDecodeError", b"ValueError"}
    assert {hdr(r)[h.PIPELINE] for r in mine(dead)} == {b"validate"}
    assert worker.alive
