"""``POST /backpressure/api/...`` on a live worker: 401 and nothing changed without the
``admin_token``; with it, pause/resume, emergency-stop/restore and set-rate take effect, and
the dashboard (in headless Chromium, when installed) shows the hold and the pause."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import faust
import pytest

from faust_backpressure.app import Backpressure
from faust_backpressure.app.pause import pauses
from faust_backpressure.config import BackpressureSettings
from faust_backpressure.limiters import TokenBucketRateLimiter
from faust_backpressure.tables.limiter_commands import read_compacted
from faust_backpressure.testing.broker import free_port
from faust_backpressure.testing.inprocess import running_app
from faust_backpressure.testing.kafka_io import consume, create_topics, produce
from faust_backpressure.testing.settings import fast_faust_settings
from faust_backpressure.wire.topics import ops_topic
from tests.integration.web.browser import CHROMIUM, chromium

pytestmark = pytest.mark.kafka

TOKEN = "s3cret-admin-token"
REPO = Path(__file__).resolve().parents[3]


async def test_write_endpoints_need_the_admin_token(
        kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    source, sink, down = unique_name("src"), unique_name("sink"), unique_name("down")
    orders = unique_name("orders")
    await create_topics(kafka_bootstrap, {source: 1, sink: 1, down: 1, orders: 1})
    port = free_port()
    app = faust.App(unique_name("app"), datadir=str(tmp_path),
                    **fast_faust_settings(broker=f"kafka://{kafka_bootstrap}", web_enabled=True,
                                          web_port=port, web_bind="127.0.0.1",
                                          web_host="127.0.0.1"))
    bp = Backpressure(app, settings=BackpressureSettings(admin_token=TOKEN))
    bp.pipeline("price", source=source, sink=sink, process=lambda v: v, max_retries=0,
                limiter="price-api", tokens_per_second=100, burst_capacity=100)
    bp.control_loop(TokenBucketRateLimiter(50, 50), name="orders", downstream_group="nobody",
                    downstream_topics=[down], interval=0.5)
    bp.downstream("pricing-api", max_concurrency=4)
    per_customer = bp.rate_limit_per_key("per-customer", tokens_per_second=100)

    @app.agent(app.topic(orders), name=unique_name("charge"))
    @per_customer
    async def charge(stream: Any) -> None:
        async for _ in stream:
            pass

    await produce(kafka_bootstrap, source, [(None, b"x")] * 3)
    base = f"http://127.0.0.1:{port}/backpressure/"

    async with running_app(app), aiohttp.ClientSession() as http:
        await consume(kafka_bootstrap, sink, until=3, timeout=30)

        async def post(action: str, body: dict[str, Any], token: str | None = TOKEN
                       ) -> tuple[int, dict[str, Any]]:
            headers = {} if token is None else {"Authorization": f"Bearer {token}"}
            for _ in range(100):  # the web server starts after table recovery
                try:
                    async with http.post(base + "api/" + action, json=body,
                                         headers=headers) as resp:
                        return resp.status, json.loads(await resp.text())
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            raise AssertionError("no web server")

        async def state() -> dict[str, Any]:
            async with http.get(base) as resp:
                got: dict[str, Any] = json.loads(await resp.text())
                return got

        # without the token, or with a wrong one: 401 and nothing sent
        for action, body in (("pause", {"pipeline": "price"}),
                             ("emergency-stop", {"limiter": "orders", "rate": 2}),
                             ("set-rate", {"limiter": "price-api", "rate": 7})):
            for token in (None, "wrong", ""):
                status, answer = await post(action, body, token)
                assert status == 401, (action, token, answer)
        await asyncio.sleep(1.0)
        now = await state()
        assert now["pipelines"]["price"]["paused"] is False
        assert now["control"]["orders"]["override"] is None
        assert now["limiters"]["price-api"]["rate"] == 100
        assert pauses(await read_compacted(kafka_bootstrap, ops_topic(app.conf.id))) == {}

        # bad bodies: 400 / 404, nothing sent
        assert (await post("set-rate", {"limiter": "price-api", "rate": -1}))[0] == 400
        assert (await post("pause", {"pipeline": "nope"}))[0] == 404

        # with the token: each takes effect, acknowledged
        status, answer = await post("pause", {"pipeline": "price", "reason": "test"})
        assert status == 200 and answer["acked"] >= 1, answer
        assert (await state())["pipelines"]["price"]["paused"] is True
        if CHROMIUM is not None:  # the dashboard shows who paused it
            dom = await chromium(tmp_path, "--virtual-time-budget=2000", "--dump-dom",
                                 base + "ui")
            assert "PAUSED by http@" in dom, dom[:3000]
        status, answer = await post("resume", {"pipeline": "price"})
        assert status == 200, answer
        assert (await state())["pipelines"]["price"]["paused"] is False

        status, answer = await post("emergency-stop", {"limiter": "orders", "rate": 2,
                                                       "by": "tester"})
        assert status == 200, answer
        held = (await state())["control"]["orders"]["override"]
        assert held["rate"] == 2 and held["by"].startswith("tester@")
        if CHROMIUM is not None:  # the dashboard shows the hold, who set it, and restore
            dom = await chromium(tmp_path, "--virtual-time-budget=2000", "--dump-dom",
                                 base + "ui")
            assert "sev-OVERRIDE" in dom and "held at 2/s by tester@" in dom, dom[:3000]
            assert ">restore</button>" in dom
            shot = REPO / "test-artifacts" / "dashboard-override.png"
            shot.parent.mkdir(exist_ok=True)
            await chromium(tmp_path, "--virtual-time-budget=2000", f"--screenshot={shot}",
                           base + "ui")
        status, answer = await post("restore", {"limiter": "orders"})
        assert status == 200, answer
        assert (await state())["control"]["orders"]["override"] is None

        status, answer = await post("set-rate", {"limiter": "price-api", "rate": 7})
        assert status == 200 and answer["rate"] == 7, answer

        # a downstream guard's breaker, forced open on every worker and given back
        assert (await post("breaker", {"dependency": "pricing-api", "state": "x"}))[0] == 400
        assert (await post("breaker", {"dependency": "nope", "state": "open"}))[0] == 404
        assert (await post("breaker", {"dependency": "pricing-api", "state": "open"},
                           "wrong"))[0] == 401
        status, answer = await post("breaker", {"dependency": "pricing-api", "state": "open",
                                                "reason": "maintenance"})
        assert status == 200 and answer["acked"] >= 1, answer
        assert (await state())["downstreams"]["pricing-api"]["breaker"] == "forced_open"
        status, answer = await post("breaker", {"dependency": "pricing-api", "state": "auto"})
        assert status == 200, answer
        assert (await state())["downstreams"]["pricing-api"]["breaker"] == "closed"

        # one key's limits of a keyed limit, on every worker, then cleared
        override = {"limit": "per-customer", "key": "c1", "rate": 5, "reason": "abuse"}
        assert (await post("key-override", override, "wrong"))[0] == 401
        assert (await post("key-override", {**override, "limit": "nope"}))[0] == 404
        for bad in ({"key_type": "float"}, {"rate": -5}, {"burst": "big"},
                    {"clear": True}, {"key_type": "int"}):  # "c1" is no int
            assert (await post("key-override", {**override, **bad}))[0] == 400, bad
        assert (await state())["keyed"]["per-customer"]["overrides"] == 0
        status, answer = await post("key-override", override)
        assert status == 200 and answer["acked"] >= 1, answer
        assert (answer["key"], answer["rate"], answer["burst"]) == ("c1", 5, 5)
        assert (await state())["keyed"]["per-customer"]["overrides"] == 1
        status, answer = await post("key-override", {"limit": "per-customer", "key": "c1",
                                                     "clear": True})
        assert status == 200 and answer["rate"] is None, answer
        assert (await state())["keyed"]["per-customer"]["overrides"] == 0
