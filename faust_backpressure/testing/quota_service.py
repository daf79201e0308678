"""A small HTTP service that behaves like a real quota'd API, for tests and benchmarks.

``POST /call`` is one call (optional JSON body ``{"id": ...}``, echoed back). A token bucket
shared by all callers caps the rate: over it, ``429`` with ``Retry-After`` at once. Admitted
calls wait FIFO for one of ``servers`` servers and hold it ``service_time`` s, so latency grows
beyond ``servers`` calls in flight. Switches (``fail``: quick 503s; ``hang``: calls held;
``announce``: answers say the quota) and the quota change live (:meth:`QuotaService.set`,
``POST /admin``). ``GET /stats``, ``POST /reset-stats``. It listens on 127.0.0.1 only.

As its own process, e.g. for Faust workers (``quota_client.QuotaServiceProcess`` does it)::

    python -m faust_backpressure.testing.quota_service --quota 300 --url-file /tmp/quota-url
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

__all__ = ["HOST", "QuotaService", "RetryAfterFormat", "main"]

RetryAfterFormat = Literal["seconds", "date"]
HOST = "127.0.0.1"  # loopback only: a test double must never be reachable from elsewhere
TIMELINE_SECONDS = 3600  # per-second history kept by /stats
LATENCY_SAMPLES = 100_000  # the overall percentiles are over the last this many ok calls
SETTINGS = ("quota", "burst", "servers", "service_time", "fail", "fail_retry_after", "hang",
            "announce")
_QUIET = {"ok": 0, "429": 0, "503": 0, "p50_ms": None, "p99_ms": None}


def _number(name: str, value: object, low: float, *, above: bool = False,
            whole: bool = False) -> float:
    """``value`` checked (a ValueError is what /admin turns into a 400)."""
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or value < low or (above and value == low) or (whole and value != int(value))):
        raise ValueError(f"{name} must be a {'whole ' * whole}number {'>' if above else '>='} "
                         f"{low:g}, got {value!r}")
    return float(value)


def _percentile(ordered: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an ascending list; None when it is empty."""
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)] if ordered else None


class _Bucket:
    """Token bucket, refilled lazily from the clock; it starts full, like most real APIs."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens, self._last = burst, clock()

    def _refill(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        return self._tokens

    def take(self) -> float:
        """Take a token: 0.0 when granted, else the seconds until one is there."""
        if self._refill() >= 1.0 - 1e-9:  # float refill must not make 1 token look like 0.99..
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def update(self, rate: float, burst: float) -> None:
        self._refill()  # tokens earned at the old rate are kept, up to the new burst
        self.rate, self.burst = rate, burst
        self._tokens = min(self._tokens, burst)


class _Servers:
    """``capacity`` servers handed out strictly FIFO; the capacity may change at any time."""

    def __init__(self, capacity: int, on_change: Callable[[], None]) -> None:
        self.capacity, self.busy, self._on_change = capacity, 0, on_change
        self.waiters: deque[asyncio.Future[None]] = deque()

    def free_now(self) -> bool:
        return not self.waiters and self.busy < self.capacity

    async def acquire(self) -> None:
        if self.free_now():
            self.busy += 1
            self._on_change()
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        self._on_change()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as it was cancelled: hand the server on
            elif waiter in self.waiters:  # else _wake dropped it already
                self.waiters.remove(waiter)
                self._on_change()
            raise

    def release(self) -> None:
        self.busy -= 1
        self._wake()
        self._on_change()

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        self._wake()

    def _wake(self) -> None:
        while self.waiters and self.busy < self.capacity:
            waiter = self.waiters.popleft()
            if not waiter.done():  # a cancelled waiter gets nothing
                self.busy += 1
                waiter.set_result(None)


class _Timeline:
    """Per-second counts and ok-latency p50/p99 for the last ``TIMELINE_SECONDS``, by the
    second a call finished; only the current second keeps raw latencies (bounded memory)."""

    def __init__(self) -> None:
        self.start, self._second, self._counts = time.monotonic(), 0, {"ok": 0, "429": 0, "503": 0}
        self._done: deque[dict[str, Any]] = deque(maxlen=TIMELINE_SECONDS)
        self._latencies: list[float] = []

    def _entry(self) -> dict[str, Any]:
        ordered = sorted(self._latencies)
        return {"second": self._second, **self._counts,
                "p50_ms": _percentile(ordered, 50), "p99_ms": _percentile(ordered, 99)}

    def _roll(self) -> None:
        second = int(time.monotonic() - self.start)
        if second == self._second:
            return
        self._done.append(self._entry())
        # quiet seconds are kept as zeros, so a plot of the timeline has no holes
        quiet = range(max(self._second + 1, second - TIMELINE_SECONDS), second)
        self._done.extend({"second": q, **_QUIET} for q in quiet)
        self._second, self._counts, self._latencies = second, {"ok": 0, "429": 0, "503": 0}, []

    def record(self, kind: str, latency_ms: float) -> None:
        self._roll()
        self._counts[kind] += 1
        if kind == "ok":
            self._latencies.append(latency_ms)

    def snapshot(self) -> list[dict[str, Any]]:
        self._roll()
        return [*self._done, self._entry()]


class QuotaService:
    """An HTTP API with a shared quota, a fixed pool of servers and fault switches.

    ``burst`` defaults to ``quota / 10`` (at least 1). ``servers=0`` takes every server away
    (admitted calls queue). Beyond ``max_queue`` waiting calls (default: unbounded) calls get
    503; ``hang`` holds calls until it is switched off or for ``hang_limit`` s, then 503.
    ``clock`` drives the quota bucket only (tests freeze it).

    Example::

        async with QuotaService(quota=50, burst=5, servers=2, service_time=0.05) as svc:
            async with QuotaClient(svc.url) as client:
                result = await client.call("a")          # status 200, 429 or 503
            await svc.wait_until(lambda c: c["calls"] == 1)
    """

    def __init__(self, quota: float = 300.0, *, burst: float | None = None, servers: int = 16,
                 service_time: float = 0.02, max_queue: int | None = None,
                 retry_after_format: RetryAfterFormat = "seconds", fail: bool = False,
                 fail_retry_after: float | None = None, hang: bool = False,
                 hang_limit: float | None = None, port: int = 0, announce: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if retry_after_format not in ("seconds", "date"):
            raise ValueError(f"retry_after_format: 'seconds' or 'date', not {retry_after_format!r}")
        self.retry_after_format: RetryAfterFormat = retry_after_format
        queue = None if max_queue is None else _number("max_queue", max_queue, 0, whole=True)
        self.max_queue = None if queue is None else int(queue)
        self.hang_limit = None if hang_limit is None else _number("hang_limit", hang_limit, 0)
        self.port, self.url, self._burst_given = port, "", False
        self.service_time, self.fail, self.fail_retry_after = 0.0, False, 0.0
        self.hang = self.announce = False
        self._unhung, self._changed = asyncio.Event(), asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._closing, self._in_flight, self._hanging = False, 0, 0
        # infinite tokens at first: set() caps them at the burst, so the bucket starts full
        self._bucket, self._servers = _Bucket(1.0, math.inf, clock), _Servers(0, self._notify)
        self.reset_stats()
        self.set(quota=quota, burst=burst, servers=servers, service_time=service_time, fail=fail,
                 fail_retry_after=fail_retry_after or 0.0, hang=hang, announce=announce)

    def set(self, *, quota: float | None = None, burst: float | None = None,
            servers: int | None = None, service_time: float | None = None,
            fail: bool | None = None, fail_retry_after: float | None = None,
            hang: bool | None = None, announce: bool | None = None) -> dict[str, Any]:
        """Change settings live (``None``: unchanged), e.g. ``svc.set(quota=100, hang=True)``.

        A new ``quota`` without ``burst`` gets the default burst unless a burst was ever given;
        ``fail_retry_after=0``: no ``Retry-After`` on fail answers; ``announce``: every answer
        says the quota (``RateLimit-Policy: "quota";q=300;w=1``). All is checked, then applied.
        """
        rate = self._bucket.rate if quota is None else _number("quota", quota, 0.0, above=True)
        new_burst = self._bucket.burst if self._burst_given else max(1.0, rate / 10)
        new_burst = new_burst if burst is None else _number("burst", burst, 1.0)
        size = None if servers is None else int(_number("servers", servers, 0, whole=True))
        service = None if service_time is None else _number("service_time", service_time, 0)
        retry = None if fail_retry_after is None else _number("fail_retry_after",
                                                              fail_retry_after, 0)
        for name, flag in (("fail", fail), ("hang", hang), ("announce", announce)):
            if flag is not None and not isinstance(flag, bool):  # JSON from /admin
                raise ValueError(f"{name} must be true or false, got {flag!r}")
        self._burst_given = self._burst_given or burst is not None
        self._bucket.update(rate, new_burst)
        if size is not None:
            self._servers.resize(size)
        self.service_time = self.service_time if service is None else service
        self.fail_retry_after = self.fail_retry_after if retry is None else retry
        self.fail = self.fail if fail is None else fail
        self.hang = self.hang if hang is None else hang
        self.announce = self.announce if announce is None else announce
        self._apply_hang()
        self._notify()
        return self.settings()

    def _apply_hang(self) -> None:
        # held calls wait on this event; stopping releases them whatever the switch says
        (self._unhung.clear if self.hang and not self._closing else self._unhung.set)()

    def settings(self) -> dict[str, Any]:
        return {"quota": self._bucket.rate, "burst": self._bucket.burst,
                "servers": self._servers.capacity, "service_time": self.service_time,
                "fail": self.fail, "fail_retry_after": self.fail_retry_after,
                "hang": self.hang, "announce": self.announce, "max_queue": self.max_queue,
                "hang_limit": self.hang_limit, "retry_after_format": self.retry_after_format}

    def counters(self) -> dict[str, Any]:
        """The live counters (cheap: no timeline, no percentiles)."""
        return {**self._counts, "in_flight": self._in_flight, "queued": len(self._servers.waiters),
                "busy": self._servers.busy, "hanging": self._hanging,
                "quota": self._bucket.rate, "elapsed_s": time.monotonic() - self._timeline.start}

    def stats(self) -> dict[str, Any]:
        """Settings, counters, ok-latency percentiles (ms) and the per-second timeline."""
        ordered = sorted(self._latencies)
        latency = {"count": len(ordered), "p50": _percentile(ordered, 50),
                   "p90": _percentile(ordered, 90), "p99": _percentile(ordered, 99),
                   "max": ordered[-1] if ordered else None}
        return {**self.settings(), **self.counters(), "latency_ms": latency,
                "timeline": self._timeline.snapshot()}

    def reset_stats(self) -> None:
        """Zero the counters and restart the timeline (live state such as in_flight stays)."""
        self._counts = dict.fromkeys(("calls", "ok", "rejected_429", "failed_503"), 0)
        self._counts["max_in_flight"] = self._in_flight
        self._latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._timeline = _Timeline()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[dict[str, Any]], bool],
                         timeout: float = 10.0) -> dict[str, Any]:
        """Wait until ``predicate(counters())`` holds (checked at each change: no polling)."""
        async def check() -> dict[str, Any]:
            while True:
                changed = self._changed
                if predicate(counters := self.counters()):
                    return counters
                await changed.wait()

        return await asyncio.wait_for(check(), timeout)

    async def _call(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
            payload = json.loads(body) if body.strip() else {}
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return web.json_response({"error": "the body must be a JSON object"}, status=400)
        started = time.monotonic()
        self._counts["calls"] += 1
        self._in_flight += 1
        self._counts["max_in_flight"] = max(self._counts["max_in_flight"], self._in_flight)
        self._notify()
        try:
            status, headers = await self._serve()
        finally:
            self._in_flight -= 1
        latency_ms = (time.monotonic() - started) * 1000
        kind = {200: "ok", 429: "429"}.get(status, "503")
        self._counts[{"ok": "ok", "429": "rejected_429", "503": "failed_503"}[kind]] += 1
        if kind == "ok":
            self._latencies.append(latency_ms)
        self._timeline.record(kind, latency_ms)
        self._notify()
        if self.announce:  # the IETF draft's field: q calls per w seconds
            headers["RateLimit-Policy"] = f'"quota";q={round(self._bucket.rate)};w=1'
        return web.json_response({"id": payload.get("id"), "status": status},
                                 status=status, headers=headers)

    async def _serve(self) -> tuple[int, dict[str, str]]:
        """One call: the hang switch, the fail switch, the quota, the queue, then a server."""
        if self.hang:
            self._hanging += 1
            self._notify()
            try:
                await asyncio.wait_for(self._unhung.wait(), self.hang_limit)
            except asyncio.TimeoutError:
                return 503, {}  # held for hang_limit: give up, as a gateway would
            finally:
                self._hanging -= 1
            if self._closing:
                return 503, {}
        if self.fail:
            return 503, self._retry_after(self.fail_retry_after) if self.fail_retry_after else {}
        wait = self._bucket.take()
        if wait > 0:
            return 429, self._retry_after(wait)  # at once: a rejected call takes no server
        if (not self._servers.free_now() and self.max_queue is not None
                and len(self._servers.waiters) >= self.max_queue):
            return 503, {}
        await self._servers.acquire()
        try:
            await asyncio.sleep(self.service_time)  # a real service: the time really passes
        finally:
            self._servers.release()
        return 200, {}

    def _retry_after(self, wait: float) -> dict[str, str]:
        seconds = max(1, math.ceil(wait))  # whole seconds and never 0, or clients would spin
        if self.retry_after_format == "date":
            # an HTTP date has whole-second resolution: round up so no client comes back early
            return {"Retry-After": formatdate(math.ceil(time.time()) + seconds, usegmt=True)}
        return {"Retry-After": str(seconds)}

    async def _admin(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object")
            if unknown := sorted(set(changes) - set(SETTINGS)):
                raise ValueError(f"unknown settings {unknown}; known: {list(SETTINGS)}")
            return web.json_response(self.set(**changes))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def _stats(self, request: web.Request) -> web.Response:
        if request.path == "/reset-stats":
            self.reset_stats()
        return web.json_response(self.stats())

    async def start(self) -> str:
        """Listen on 127.0.0.1 (``port=0``: a free port); returns ``http://127.0.0.1:PORT``."""
        if self._runner is not None:
            raise RuntimeError("the quota service is already running")
        app = web.Application()
        app.add_routes([web.post("/call", self._call), web.post("/admin", self._admin),
                        web.get("/stats", self._stats), web.post("/reset-stats", self._stats)])
        # held or queued calls get 1 s to finish on stop, then they are cancelled
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, HOST, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._closing = runner, False
        self._apply_hang()
        self.url = f"http://{HOST}:{runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        """Stop listening; held calls are released with 503."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing = True
        self._apply_hang()
        await runner.cleanup()

    async def __aenter__(self) -> QuotaService:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "python -m faust_backpressure.testing.quota_service", description="An HTTP API with a "
        "quota, for tests and benchmarks.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--quota", type=float, default=300.0, help="calls per second, shared by all callers")
    add("--burst", type=float, default=None, help="bucket size (none: quota/10, at least 1)")
    add("--servers", type=int, default=16, help="calls served at once; the rest queue FIFO")
    add("--service-time", type=float, default=0.02, help="seconds a call holds a server")
    add("--max-queue", type=int, default=None, help="queued calls beyond this get 503")
    add("--retry-after-format", choices=("seconds", "date"), default="seconds")
    add("--fail", action="store_true", help="start with every call answered 503")
    add("--fail-retry-after", type=float, default=None, help="Retry-After on fail answers")
    add("--hang", action="store_true", help="start with every call held")
    add("--hang-limit", type=float, default=None, help="seconds a call is held, then 503")
    add("--announce", action="store_true", help="every answer says the quota (RateLimit-Policy)")
    add("--port", type=int, default=0, help="0: a free port")
    add("--url-file", type=Path, default=None, help="write the URL here once listening")
    return parser


async def _run(args: argparse.Namespace) -> None:
    options = vars(args)  # the flags are named after QuotaService's keywords
    url_file: Path | None = options.pop("url_file")
    svc, stopping, loop = QuotaService(**options), asyncio.Event(), asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    url = await svc.start()
    try:
        if url_file is not None:
            partial = url_file.with_name(url_file.name + ".partial")
            partial.write_text(url)
            os.replace(partial, url_file)  # atomic: a reader never sees half a URL
        print(url, flush=True)
        await stopping.wait()
    finally:
        await svc.stop()


def main(argv: list[str] | None = None) -> int:
    """The CLI: serve until SIGTERM or SIGINT."""
    asyncio.run(_run(_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
