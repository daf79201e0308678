"""The quota'd test API (issue 22): real HTTP on 127.0.0.1, counts that follow from the bucket.

The quota bucket runs on a frozen clock wherever counts are asserted, so no token refills
while a burst is in flight however slow the machine is; waits are on the service's own
change events (``wait_until``), never on sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import pytest

from faust_backpressure.testing.quota_client import CallResult, QuotaClient, QuotaServiceProcess
from faust_backpressure.testing.quota_service import QuotaService

Start = Callable[..., Awaitable[tuple[QuotaService, QuotaClient]]]


class FrozenClock:
    """The quota bucket's clock: it moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start a service (and a client for it); both are stopped after the test."""
    started: list[tuple[QuotaService, QuotaClient]] = []

    async def make(**options: Any) -> tuple[QuotaService, QuotaClient]:
        svc = QuotaService(**options)
        client = QuotaClient(await svc.start(), timeout=30.0)
        started.append((svc, client))
        return svc, client

    yield make
    for svc, client in started:
        await client.close()
        await svc.stop()


async def burst(client: QuotaClient, n: int) -> list[CallResult]:
    return list(await asyncio.gather(*(client.call(f"c{i}") for i in range(n))))


def statuses(results: list[CallResult]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    return counts


async def test_quota_admits_the_burst_and_rejects_the_rest_with_retry_after(start: Start) -> None:
    svc, client = await start(quota=50, burst=5, service_time=0, clock=FrozenClock())
    results = await burst(client, 30)
    assert statuses(results) == {200: 5, 429: 25}
    for result in results:
        if result.status == 429:
            assert result.retry_after is not None and int(result.retry_after) >= 1
        else:
            assert result.retry_after is None
    stats = svc.stats()
    assert (stats["calls"], stats["ok"], stats["rejected_429"], stats["failed_503"]) \
        == (30, 5, 25, 0)
    assert stats["in_flight"] == 0 and stats["quota"] == 50


async def test_retry_after_is_the_whole_seconds_until_a_token(start: Start) -> None:
    clock = FrozenClock()
    _svc, client = await start(quota=0.4, burst=1, service_time=0, clock=clock)
    assert (await client.call("a")).status == 200
    rejected = await client.call("b")
    assert (rejected.status, rejected.retry_after) == (429, "3")  # 1 token / 0.4 per s = 2.5 s
    clock.now += 2.5
    assert (await client.call("c")).status == 200


async def test_retry_after_as_an_http_date_parses_back(start: Start) -> None:
    _svc, client = await start(quota=0.4, burst=1, service_time=0, retry_after_format="date",
                               clock=FrozenClock())
    await client.call("a")
    before = datetime.now(timezone.utc).replace(microsecond=0)
    rejected = await client.call("b")
    after = datetime.now(timezone.utc)
    assert rejected.status == 429 and rejected.retry_after is not None
    when = parsedate_to_datetime(rejected.retry_after)
    assert when.tzinfo is not None
    assert before + timedelta(seconds=3) <= when <= after + timedelta(seconds=4)


async def test_latency_grows_with_calls_beyond_the_servers(start: Start) -> None:
    svc, client = await start(quota=10_000, burst=100, servers=2, service_time=0.05)
    results = await burst(client, 6)
    assert statuses(results) == {200: 6}
    # 6 calls on 2 servers: the last pair waits for two pairs before it (a queue lower bound)
    assert max(r.latency for r in results) >= 3 * 0.05 - 0.001
    stats = svc.stats()
    assert stats["ok"] == 6 and stats["latency_ms"]["count"] == 6
    assert stats["latency_ms"]["max"] >= 50


async def test_fail_switch_answers_503_with_retry_after(start: Start) -> None:
    svc, client = await start(quota=1000, burst=100, service_time=0)
    svc.set(fail=True, fail_retry_after=2)
    failed = await client.call("a")
    assert (failed.status, failed.retry_after) == (503, "2")
    svc.set(fail=False)
    assert (await client.call("b")).status == 200
    assert (svc.stats()["failed_503"], svc.stats()["ok"]) == (1, 1)


async def test_hang_holds_a_call_until_switched_off(start: Start) -> None:
    svc, client = await start(quota=1000, burst=100, service_time=0, hang=True)
    call = asyncio.create_task(client.call("held"))
    await svc.wait_until(lambda c: c["hanging"] == 1)
    assert not call.done() and svc.counters()["in_flight"] == 1
    svc.set(hang=False)
    assert (await call).status == 200
    assert svc.counters()["hanging"] == 0


async def test_hang_limit_gives_up_with_503(start: Start) -> None:
    svc, client = await start(quota=1000, burst=100, service_time=0, hang=True, hang_limit=0.05)
    assert (await client.call("a")).status == 503
    assert svc.counters()["failed_503"] == 1


async def test_a_rejected_or_failed_call_does_not_wait_for_a_server(start: Start) -> None:
    # servers=0: an admitted call queues for good, so only answers that take no server return
    svc, client = await start(quota=1, burst=1, servers=0, clock=FrozenClock())
    queued = asyncio.create_task(client.call("queued"))
    await svc.wait_until(lambda c: c["queued"] == 1)
    assert (await client.call("over the quota")).status == 429
    svc.set(fail=True)
    assert (await client.call("failing")).status == 503
    assert svc.counters()["queued"] == 1 and not queued.done()
    svc.set(fail=False, servers=1)
    assert (await queued).status == 200


async def test_max_queue_turns_the_overflow_into_503(start: Start) -> None:
    clock = FrozenClock()
    svc, client = await start(quota=1, burst=10, servers=0, max_queue=2, clock=clock)
    waiting = [asyncio.create_task(client.call(f"w{i}")) for i in range(2)]
    await svc.wait_until(lambda c: c["queued"] == 2)
    overflow = await client.call("overflow")
    assert (overflow.status, overflow.retry_after) == (503, None)
    svc.set(servers=2)
    assert [(await w).status for w in waiting] == [200, 200]
    assert svc.stats()["max_in_flight"] == 3


async def test_admin_changes_quota_live_over_http(start: Start) -> None:
    clock = FrozenClock()
    svc, client = await start(quota=50, burst=5, service_time=0, clock=clock)
    assert statuses(await burst(client, 10)) == {200: 5, 429: 5}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{svc.url}/admin", json={"quota": 1000, "burst": 20}) as resp:
            assert resp.status == 200
            settings = await resp.json()
        assert (settings["quota"], settings["burst"]) == (1000, 20)
        for bad in ({"servers": 0.5}, {"quota": 0}, {"fail": "yes"}, {"colour": 1}, [1]):
            async with http.post(f"{svc.url}/admin", json=bad) as resp:
                assert resp.status == 400, bad
        clock.now += 0.1  # at 50/s that would be 5 tokens; at 1000/s, a full bucket of 20
        assert statuses(await burst(client, 30)) == {200: 20, 429: 10}
        async with http.post(f"{svc.url}/admin", json={"fail": True}) as resp:
            assert resp.status == 200
        assert (await client.call("x")).status == 503
    assert svc.stats()["quota"] == 1000 and svc.stats()["servers"] == 16


async def test_call_echoes_the_id_and_stats_and_reset_over_http(start: Start) -> None:
    svc, client = await start(quota=10, burst=2, service_time=0, clock=FrozenClock())
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{svc.url}/call", json={"id": "order-7"}) as resp:
            assert (resp.status, await resp.json()) == (200, {"id": "order-7", "status": 200})
        async with http.post(f"{svc.url}/call") as resp:  # no body at all
            assert (await resp.json())["id"] is None
        async with http.post(f"{svc.url}/call", data=b"not json") as resp:
            assert resp.status == 400
        await client.call("rejected")
        async with http.get(f"{svc.url}/stats") as resp:
            stats = await resp.json()
        assert (stats["calls"], stats["ok"], stats["rejected_429"]) == (3, 2, 1)
        timeline = stats["timeline"]
        assert sum(s["ok"] for s in timeline) == 2 and sum(s["429"] for s in timeline) == 1
        assert {"second", "ok", "429", "503", "p50_ms", "p99_ms"} <= set(timeline[-1])
        assert stats["latency_ms"]["p50"] is not None and stats["latency_ms"]["count"] == 2
        async with http.post(f"{svc.url}/reset-stats") as resp:
            reset = await resp.json()
        assert (reset["calls"], reset["ok"], reset["latency_ms"]["count"]) == (0, 0, 0)
        assert sum(s["ok"] for s in reset["timeline"]) == 0


async def test_the_child_process_serves_and_stops() -> None:
    with QuotaServiceProcess(quota=1000, burst=100, servers=4, service_time=0.001) as proc:
        assert proc.url.startswith("http://127.0.0.1:")
        async with QuotaClient(proc.url) as client:
            assert (await client.call("a")).status == 200
            assert proc.admin(fail=True)["fail"] is True
            assert (await client.call("b")).status == 503
        stats = proc.stats()
        assert (stats["calls"], stats["ok"], stats["failed_503"]) == (2, 1, 1)
        assert proc.process is not None
    assert proc.process.returncode == 0  # SIGTERM: a clean stop


def test_bad_settings_are_refused_up_front() -> None:
    for bad in ({"quota": 0}, {"burst": 0.5}, {"servers": -1}, {"max_queue": 1.5},
                {"retry_after_format": "http"}):
        with pytest.raises(ValueError):
            QuotaService(**bad)
    svc = QuotaService(quota=100)
    assert svc.stats()["burst"] == 10  # quota/10 by default
    with pytest.raises(ValueError):
        svc.set(quota=200, servers=0.5)  # type: ignore[arg-type]
    assert svc.settings()["quota"] == 100  # nothing applied when one value is bad


async def test_announce_says_the_quota_in_every_answer_and_follows_a_change(start: Start) -> None:
    svc, client = await start(quota=50, burst=2, service_time=0, announce=True)
    results = [await client.call(str(i)) for i in range(4)]
    assert {r.status for r in results} == {200, 429}  # on refusals too
    assert all(dict(r.quota_headers) == {"RateLimit-Policy": '"quota";q=50;w=1'}
               for r in results)
    svc.set(quota=100)
    assert dict((await client.call("x")).quota_headers)["RateLimit-Policy"].endswith("q=100;w=1")
    svc.set(announce=False)
    assert (await client.call("y")).quota_headers == ()
