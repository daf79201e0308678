"""Reaching the quota service from outside: the async call client and the child-process driver.

:class:`QuotaClient` is what example apps and benchmarks call; :class:`QuotaServiceProcess`
runs :mod:`faust_backpressure.testing.quota_service` as its own process (so Faust worker
processes can call it) and drives it synchronously.

Example::

    with QuotaServiceProcess(quota=300, servers=16) as proc:
        async with QuotaClient(proc.url) as client:
            result = await client.call("order-42")
            if result.status == 429:
                await asyncio.sleep(float(result.retry_after or 1))
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from faust_backpressure.testing.quota_service import RetryAfterFormat

__all__ = ["CallResult", "QuotaClient", "QuotaServiceProcess"]

_SERVICE_MODULE = "faust_backpressure.testing.quota_service"


@dataclass(frozen=True, slots=True)
class CallResult:
    """One answer: the HTTP status, the raw ``Retry-After`` header (or None), latency in s,
    and the headers that announce a quota (``RateLimit-*``, ``X-RateLimit-*``)."""

    status: int
    retry_after: str | None
    latency: float
    quota_headers: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == 200


class QuotaClient:
    """Calls ``POST {url}/call`` over one shared session of at most ``limit`` connections.

    ``latency`` is what the caller sees, including any wait for a pooled connection.
    ``timeout`` (s) bounds each call. Example::

        async with QuotaClient(url) as client:
            results = await asyncio.gather(*(client.call(str(i)) for i in range(100)))
    """

    def __init__(self, url: str, *, limit: int = 256, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._limit = limit
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        # made on first use: a session belongs to the running loop, not to the constructor's
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit), timeout=self._timeout)
        return self._session

    async def call(self, id: str) -> CallResult:
        """One call; no answer within the timeout raises ``asyncio.TimeoutError``."""
        started = time.monotonic()
        async with self._http().post(f"{self.url}/call", json={"id": id}) as response:
            await response.read()  # the whole answer, so the connection goes back to the pool
        quota = tuple((k, v) for k, v in response.headers.items()
                      if k.lower().startswith(("ratelimit", "x-ratelimit")))
        return CallResult(response.status, response.headers.get("Retry-After"),
                          time.monotonic() - started, quota)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> QuotaClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class QuotaServiceProcess:
    """The service in a child process (the CLI), driven synchronously; killed on exit.

    Example::

        with QuotaServiceProcess(quota=300, servers=16) as proc:
            start_workers(env={"QUOTA_API_URL": proc.url})
            proc.admin(fail=True)
            assert proc.stats()["failed_503"] >= 0
    """

    def __init__(self, quota: float = 300.0, *, burst: float | None = None, servers: int = 16,
                 service_time: float = 0.02, max_queue: int | None = None,
                 retry_after_format: RetryAfterFormat = "seconds",
                 hang_limit: float | None = None, announce: bool = False,
                 start_timeout: float = 30.0) -> None:
        options = {"--quota": quota, "--burst": burst, "--servers": servers,
                   "--service-time": service_time, "--max-queue": max_queue,
                   "--retry-after-format": retry_after_format, "--hang-limit": hang_limit}
        self._args = [f"{k}={v}" for k, v in options.items() if v is not None]
        self._args += ["--announce"] if announce else []
        self.start_timeout = start_timeout
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        # no proxy: 127.0.0.1 must not be sent to an http_proxy from the environment
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def start(self) -> str:
        """Start the child and wait until it listens; returns its URL."""
        self._dir = tempfile.TemporaryDirectory(prefix="quota-service-")
        url_file, log = Path(self._dir.name, "url"), Path(self._dir.name, "log")
        root = str(Path(__file__).resolve().parents[2])  # importable without an install
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", _SERVICE_MODULE, *self._args, f"--url-file={url_file}"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.start_timeout
        while not url_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = log.read_text(errors="replace")[-4000:]
                self.stop()
                raise RuntimeError(f"the quota service did not start:\n{output}")
            time.sleep(0.02)  # another process: a file appearing is the only signal there is
        self.url = url_file.read_text().strip()
        return self.url

    def _request(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="GET" if data is None
                                         else "POST", headers={"Content-Type": "application/json"})
        with self._opener.open(request, timeout=10) as response:
            result: dict[str, Any] = json.load(response)
        return result

    def admin(self, **changes: Any) -> dict[str, Any]:
        """Change settings live (see :meth:`QuotaService.set`); returns the settings."""
        return self._request("/admin", changes)

    def stats(self) -> dict[str, Any]:
        return self._request("/stats")

    def reset_stats(self) -> dict[str, Any]:
        return self._request("/reset-stats", {})

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; ``process.returncode`` is 0 after a clean stop."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> QuotaServiceProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
