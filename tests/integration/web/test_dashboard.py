"""``/backpressure/ui`` in a real headless Chromium against a live worker on the real broker.

The worker runs in-process with its web server on a free port: a rate-limited agent (a shared
limiter under a control loop whose downstream is far behind: the loop holds it at its emergency
rate) and a pipeline with a DLQ. Chromium loads the dashboard, runs its script (which polls
``/backpressure/?history=1``), and the test checks in the dumped DOM that the values shown are
the live ones. The screenshot is kept at ``test-artifacts/dashboard.png`` (git-ignored).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import faust
import pytest

from faust_backpressure.app import Backpressure
from faust_backpressure.app.keyed_ops import KeyOverrideCommand
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.control import BackpressureThresholds
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.testing.broker import free_port
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import commit_offsets, consume, create_topics, produce
from faust_backpressure.testing.settings import fast_faust_settings
from tests.integration.web.browser import chromium, needs_chromium

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / "test-artifacts"


async def _get_json(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    for _ in range(150):  # the web server starts after table recovery
        try:
            async with http.get(url) as resp:
                state: dict[str, Any] = json.loads(await resp.text())
                return state
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def _cell(dom: str, row_attr: str, key: str, cls: str) -> str:
    """The ``data-value`` of the cell of class ``cls`` in the row ``row_attr="key"``."""
    row = re.search(rf'<tr {row_attr}="{re.escape(key)}">(.*?)</tr>', dom, re.S)
    assert row, f"no row {row_attr}={key!r} in the dashboard"
    cell = re.search(rf'<td class="[^"]*\b{cls}\b[^"]*" data-value="([^"]*)"', row.group(1))
    assert cell, f"no {cls} cell in row {key!r}"
    return cell.group(1)


@needs_chromium
async def test_dashboard_shows_the_live_values_in_a_real_browser(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    orders, source, sink, backlog = (unique_name(n) for n in ("orders", "src", "sink", "bl"))
    await create_topics(kafka_bootstrap, {orders: 1, source: 1, sink: 1, backlog: 1})
    # a downstream group far behind: the control loop holds "orders-api" at emergency
    await produce(kafka_bootstrap, backlog, [(None, b"x")] * 200)
    port = free_port()
    app = faust.App(unique_name("app"), datadir=str(tmp_path),
                    **fast_faust_settings(broker=f"kafka://{kafka_bootstrap}", web_enabled=True,
                                          web_port=port, web_bind="127.0.0.1",
                                          web_host="127.0.0.1"))
    bp = Backpressure(app, settings=BackpressureSettings())
    seen: list[bytes] = []

    @app.agent(app.topic(orders, value_type=bytes, value_serializer="raw"))
    @bp.rate_limit("orders-api", tokens_per_second=40, burst_capacity=40)
    async def take_orders(stream: Any) -> None:
        async for order in stream:
            seen.append(order)

    billing = unique_name("billing")  # started, read nothing: committed 0
    await commit_offsets(kafka_bootstrap, billing, backlog, {0: 0})
    bp.control_loop("orders-api", downstream_group=billing,
                    downstream_topics=[backlog], interval=0.5, policy="step",
                    thresholds=BackpressureThresholds(scaling_threshold=20, max_consumer_lag=50,
                                                      critical_lag=100, backlog_cleared_lag=5))

    def check(value: bytes) -> bytes:
        if value.startswith(b"bad"):
            raise ValueError("bad record")
        return value

    bp.pipeline("price", source=source, sink=sink, process=check, max_retries=0,
                limiter=TokenBucketRateLimiter(500, 500))
    # a loop whose downstream group never committed (a typo): a warning, not throttled on
    bp.control_loop(TokenBucketRateLimiter(30, 30), name="typo-loop",
                    downstream_group=unique_name("typo"), downstream_topics=[backlog],
                    interval=0.5)
    # a keyed limit: one hot customer over its 2/s, deferred
    customers = unique_name("customers")
    await create_topics(kafka_bootstrap, {customers: 1})
    per_customer = bp.rate_limit_per_key("per-customer", tokens_per_second=2,
                                         burst_capacity=2, partitions=1, store="memory://")

    @app.agent(app.topic(customers, key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw"))
    @per_customer
    async def pay(stream: Any) -> None:
        async for _ in stream:
            pass

    await produce(kafka_bootstrap, customers, [(b"C42", b"x")] * 20)
    pricing = bp.downstream("pricing-api", max_concurrency=8, limit="fixed")
    pricing.force("open")  # as an operator would: the page shows it, with "auto" to undo
    await produce(kafka_bootstrap, source,
                  [(None, b"bad" if i % 10 == 0 else b"ok") for i in range(50)])
    await produce(kafka_bootstrap, orders, [(None, b"order")] * 60)
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    base = f"http://127.0.0.1:{port}/backpressure/"
    async with running_app(app), aiohttp.ClientSession() as http:
        await consume(kafka_bootstrap, sink, until=45, timeout=30)
        # a hostile key override (a negative rate) on the ops topic: counted, changes nothing
        hostile = KeyOverrideCommand.new("per-customer", b"C42", 1.0, None, "thief")
        await produce(kafka_bootstrap, f"{app.conf.id}-fbp-ops",
                      [(hostile.key_record, hostile.encode(None).replace(b'"rate":1.0',
                                                                          b'"rate":-1.0'))])
        state = await _get_json(http, base)
        for _ in range(100):  # a few history points and a decision
            state = await _get_json(http, base + "?history=1")
            if len(state["history"]) >= 4 and seen and state["rejected"].get("ops") and all(
                    c["decided_rate"] is not None for c in state["control"].values()) \
                    and state["keyed"]["per-customer"]["deferred"] >= 10 \
                    and any(w["pipelines"].get("price", {}).get("consumed") == 50
                            for w in state["cluster"]):  # a summary (every 5 s) of it all
                break
            await asyncio.sleep(0.2)
        async with http.get(base + "ui") as resp:
            assert resp.status == 200
            assert "text/html" in resp.headers["Content-Type"]
        dom = await chromium(tmp_path, "--virtual-time-budget=3000", "--dump-dom", base + "ui")
        await chromium(tmp_path, "--virtual-time-budget=3000", f"--screenshot={screenshot}",
                        base + "ui")
        after = await _get_json(http, base)

    assert 'class="status live"' in dom, dom[:2000]
    assert f'<span id="app" class="muted">{app.conf.id}</span>' in dom
    # the limiter's rate shown is its live one (the loop may decide between two reads)
    (label,) = [k for k in state["limiters"] if k == "orders-api"]
    rates = {state["limiters"][label]["rate"], after["limiters"][label]["rate"]}
    assert float(_cell(dom, "data-limiter", label, "rate")) in rates
    assert float(_cell(dom, "data-limiter", label, "configured")) == 40.0
    decided = {state["control"]["orders-api"]["decided_rate"],
               after["control"]["orders-api"]["decided_rate"]}
    assert float(_cell(dom, "data-limiter", label, "decided")) in decided
    assert re.search(r'<tr data-limiter="orders-api">.*?sev-EMERGENCY', dom, re.S)
    assert "why: " in dom and 'data-loop="orders-api"' in dom
    # the pipeline: consumed and dead-lettered counts as the worker has them
    assert _cell(dom, "data-pipeline", "price", "consumed") == "50"
    assert _cell(dom, "data-pipeline", "price", "dlq") == "5"
    assert after["pipelines"]["price"]["dead_lettered"] == 5
    # the rate-limited agent's row, with its source backlog
    agent = next(g for g in after["gates"] if g["limiter"] == "orders-api")
    shown = agent["agent"].replace("<", "&lt;").replace(">", "&gt;")
    assert f'data-agent="{shown}"' in dom
    assert agent["source_lag"] is not None
    # the downstream guard: its breaker state and limit as the worker has them
    assert after["downstreams"]["pricing-api"]["breaker"] == "forced_open"
    assert re.search(r'<tr data-dependency="pricing-api">.*?sev-EMERGENCY[^>]*>forced_open',
                     dom, re.S)
    assert _cell(dom, "data-dependency", "pricing-api", "limit") == "8"
    # the keyed limit: its rate and burst per key, its counts, the hot key on top
    assert float(_cell(dom, "data-keyed", "per-customer", "rate")) == 2.0
    assert float(_cell(dom, "data-keyed", "per-customer", "burst")) == 2.0
    assert int(_cell(dom, "data-keyed", "per-customer", "tracked")) >= 1
    assert re.search(r'<tr data-keyed="per-customer">.*?data-field="top">C42 \(\d+\)</td>',
                     dom, re.S), dom[:3000]
    # the loop on a group with no commits says so, and is not throttled
    assert re.search(r'data-loop="typo-loop".*?class="input-warning">input: group '
                     r"'[^']+' has no committed offsets", dom, re.S)
    assert after["control"]["typo-loop"]["severity"] == "NORMAL"
    # the hostile override: counted on the page, and the key kept its default limits
    assert sum(after["rejected"]["ops"].values()) == 1
    assert "ops / " in dom and per_customer.limits_for(b"C42") is None
    # the cluster view: this worker's row, from its own signed summary on the ops topic
    (me,) = [w for w in state["cluster"] if w["pipelines"].get("price", {}).get("consumed")]
    row = re.search(rf'<tr data-worker="{re.escape(me["worker"])}"[^>]*>(.*?)</tr>', dom, re.S)
    assert row, dom[:3000]
    assert re.search(r'class="[^"]*\bconsumed\b[^"]*" data-value="50"', row.group(1))
    assert re.search(r'class="[^"]*\bdlq\b[^"]*" data-value="5"', row.group(1))
    assert "pricing-api: forced_open" in row.group(1)
    assert screenshot.exists() and screenshot.stat().st_size > 10_000
