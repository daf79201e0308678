"""The package as a user gets it: a wheel built from the sdist, installed (not editable) into a
fresh venv, used from a directory where the checkout is not importable.

It checks what only a real install shows: the version the distribution carries is
``faust_backpressure.__version__``; ``py.typed``, the dashboard's static files and the Kafka
pom are in the installed package; the ``rocksdict://`` store entry point is registered; and a
small app (a ``Backpressure(app)`` pipeline with a limiter) runs as a real ``faust worker`` of
the venv's Python against the test broker, moves records to its sink and serves
``/backpressure/ui`` and ``/backpressure/`` from the installed files.

Dependencies come from the package index through pip's cache (``--prefer-binary``): a warm
machine installs them in seconds. Without an index the test skips, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import faust_backpressure
from faust_backpressure.testing.broker import _die_with_parent, free_port
from faust_backpressure.testing.kafka_io import consume, create_topics, produce
from faust_backpressure.testing.workers import READY_PATTERN

# A cold pip cache downloads every dependency: more than the suite's 300 s may be needed.
pytestmark = [pytest.mark.kafka, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DATA = ("py.typed", "app/static/dashboard.html", "app/static/dashboard.js",
                "app/static/dashboard.css", "testing/kafka-pom.xml")

# What pip and build print when the package index cannot be reached (then: skip, not fail).
OFFLINE = re.compile(r"NewConnectionError|Failed to establish a new connection|"
                     r"Temporary failure in name resolution|Name or service not known|"
                     r"Network is unreachable|ConnectTimeout|ProxyError|"
                     r"Could not fetch URL|connection broken", re.IGNORECASE)

TINY_APP = '''\
"""A tiny app run from the installed wheel: orders doubled by a rate-limited pipeline."""
import os

import faust

from faust_backpressure import Backpressure, TokenBucketRateLimiter
from faust_backpressure.testing.settings import fast_faust_settings

app = faust.App(os.environ["TINY_APP_ID"], store="rocksdict://",
                **fast_faust_settings(web_enabled=True))
bp = Backpressure(app)


class Reading(faust.Record, serializer="json"):
    id: str
    value: int


def double(reading: Reading) -> Reading:
    return Reading(id=reading.id, value=reading.value * 2)


bp.pipeline("double", source=app.topic(os.environ["TINY_SOURCE"], value_type=Reading),
            sink=app.topic(os.environ["TINY_SINK"], value_type=Reading), process=double,
            dlq=os.environ["TINY_DLQ"], limiter=TokenBucketRateLimiter(200, 200))
'''

# Run by the venv's Python outside the checkout: what the installed distribution holds.
PROBE = '''\
import importlib.metadata as md, importlib.resources as r, json, sys
import faust_backpressure
root = r.files("faust_backpressure")
dist = md.distribution("faust-backpressure")
stores = [e.name for e in md.entry_points(group="faust.stores")]
print(json.dumps({
    "version": faust_backpressure.__version__,
    "dist_version": dist.version,
    "file": faust_backpressure.__file__,
    "direct_url": json.loads(dist.read_text("direct_url.json") or "{}"),
    "data": {name: root.joinpath(name).is_file() for name in sys.argv[1:]},
    "dashboard": root.joinpath("app/static/dashboard.html").read_text(),
    "stores": stores,
}))
'''


def _offline_reason(output: str) -> str | None:
    """Why the package index is out of reach, or None when it is reachable (a failure is
    then the package's own)."""
    match = OFFLINE.search(output)
    if match is not None:  # (build wraps pip's lines: the words after the match, unwrapped)
        return " ".join(output[match.start():match.start() + 240].split())[:160]
    # pip does not always say so (e.g. no retries: just "from versions: none"): ask the index.
    try:
        probe = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "setuptools",
                                "--retries", "1", "--timeout", "15"], capture_output=True,
                               text=True, timeout=120, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "pip index versions setuptools: no answer in 120 s"
    if probe.returncode == 0:
        return None
    lines = [line.strip() for line in (probe.stdout + probe.stderr).splitlines() if line.strip()]
    return f"pip index versions setuptools: {lines[-1] if lines else probe.returncode}"[:200]


def _run(cmd: Sequence[str | Path], what: str, *, cwd: Path, timeout: float = 300,
         env: dict[str, str] | None = None) -> str:
    """Run ``cmd``; its output. Fails with the output's tail, or skips when the package index
    is out of reach."""
    try:
        done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        # (partial output comes as bytes here, even with text=True)
        output = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part
                         for part in (exc.stdout or "", exc.stderr or ""))
        reason = _offline_reason(output)
        if reason is not None:
            pytest.skip(f"{what}: the package index is out of reach ({reason})")
        raise AssertionError(f"{what}: still running after {timeout:.0f} s:\n"
                             f"{output[-4000:]}") from None
    output = done.stdout + done.stderr
    if done.returncode != 0:
        reason = _offline_reason(output)
        if reason is not None:
            pytest.skip(f"{what}: the package index is out of reach ({reason})")
        raise AssertionError(f"{what} failed (exit {done.returncode}):\n{output[-4000:]}")
    return output


def _outside_env(**extra: str) -> dict[str, str]:
    """The test's environment without anything that would make the checkout importable."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    return {**env, "PIP_DEFAULT_TIMEOUT": "30", "PYTHONUNBUFFERED": "1", **extra}


@contextlib.contextmanager
def _worker(python: Path, app_dir: Path, port: int, env: dict[str, str]
            ) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``faust -A tinyapp worker`` of the venv's Python, its web server on ``port``; SIGTERM
    (then SIGKILL) at the end."""
    log_path = app_dir / "worker.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(python), "-m", "faust", "-A", "tinyapp", "--datadir", str(app_dir / "state"),
             "-l", "info", "worker", "--web-port", str(port), "--web-bind", "127.0.0.1",
             "--web-host", "127.0.0.1"],
            cwd=app_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, start_new_session=True)
    try:
        yield proc, log_path
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _fresh_wheel(dist: Path) -> bool:
    """Whether ``dist`` holds one wheel and one sdist of this version, newer than every file
    they are built from (git's files of the package, pyproject.toml, README.md)."""
    version = faust_backpressure.__version__
    built = [*dist.glob(f"faust_backpressure-{version}-*.whl"),
             *dist.glob(f"faust_backpressure-{version}.tar.gz")]
    if len(built) != 2 or len(list(dist.glob("faust_backpressure-*.whl"))) != 1:
        return False
    tracked = subprocess.run(["git", "ls-files", "faust_backpressure", "pyproject.toml",
                              "README.md", "MANIFEST.in"], cwd=REPO, capture_output=True,
                             text=True, stdin=subprocess.DEVNULL)
    sources = [REPO / name for name in tracked.stdout.splitlines()]
    if tracked.returncode != 0 or not sources:
        return False
    newest = max(p.stat().st_mtime for p in sources if p.is_file())
    return min(p.stat().st_mtime for p in built) > newest


def _wait_ready(proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(READY_PATTERN, log_path.read_text(errors="replace")):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(
                f"the worker from the wheel was not ready (exit code {proc.poll()}):\n"
                f"{log_path.read_text(errors='replace')[-5000:]}")
        time.sleep(0.2)


async def _get(http: aiohttp.ClientSession, url: str, timeout: float = 30
               ) -> tuple[int, str, str]:
    """Status, content type and body; retried while the web server is not listening yet (it
    starts once the tables are recovered)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with http.get(url) as resp:
                return resp.status, resp.content_type, await resp.text()
        except aiohttp.ClientConnectionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_wheel_installs_and_runs_an_app(kafka_bootstrap: str, tmp_path: Path,
                                             unique_name: Callable[[str], str]) -> None:
    started = time.monotonic()
    timings: dict[str, float] = {}

    def lap(step: str) -> None:
        timings[step] = round(time.monotonic() - started - sum(timings.values()), 1)

    # 1. sdist, then the wheel from the sdist (as `make dist`): nothing stale in the checkout's
    # build/ can slip into it. CI runs `make dist` just before: its wheel is used when it is
    # newer than every file it is built from (15-40 s of build saved), else one is built here.
    dist = REPO / "dist"
    if not _fresh_wheel(dist):
        dist = tmp_path / "dist"
        _run([sys.executable, "-m", "build", "--outdir", dist, REPO], "python -m build",
             cwd=REPO)
    wheels = sorted(dist.glob("faust_backpressure-*.whl"))
    assert len(wheels) == 1, sorted(p.name for p in dist.iterdir())
    wheel = wheels[0]
    assert wheel.name.startswith(f"faust_backpressure-{faust_backpressure.__version__}-")
    lap("build")

    # 2. A fresh venv with the wheel (not editable), dependencies from the index.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], "python -m venv", cwd=tmp_path)
    python = venv / "bin" / "python"
    lap("venv")
    # --no-compile: the worker compiles what it imports (the bytecode of every installed
    # module took ~7 s of the suite's CPU)
    _run([python, "-m", "pip", "install", "--prefer-binary", "--disable-pip-version-check",
          "--no-input", "--no-compile", wheel], "pip install of the wheel", cwd=tmp_path,
         timeout=600, env=_outside_env())
    lap("pip install")

    # 3. From a directory outside the checkout: what the installed package holds.
    outside = tmp_path / "app"
    outside.mkdir()
    probe = json.loads(_run([python, "-c", PROBE, *PACKAGE_DATA], "the import probe",
                            cwd=outside, env=_outside_env()).strip().splitlines()[-1])
    installed = Path(probe["file"]).resolve()
    assert installed.is_relative_to(venv.resolve()), installed  # not the checkout
    assert not installed.is_relative_to(REPO), installed
    assert probe["version"] == probe["dist_version"] == faust_backpressure.__version__
    assert probe["direct_url"].get("url", "").endswith(wheel.name), probe["direct_url"]
    assert "dir_info" not in probe["direct_url"], probe["direct_url"]  # not editable
    assert probe["data"] == dict.fromkeys(PACKAGE_DATA, True), probe["data"]
    assert "<html" in probe["dashboard"].lower()
    assert "rocksdict" in probe["stores"], probe["stores"]
    lap("probe")

    # 4. A tiny app from the installed package, as a real worker with its web server.
    source, sink, dlq = unique_name("src"), unique_name("sink"), unique_name("dlq")
    await create_topics(kafka_bootstrap, {source: 4, sink: 4, dlq: 4})
    (outside / "tinyapp.py").write_text(TINY_APP)
    port = free_port()
    env = _outside_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, TINY_APP_ID=unique_name("app"),
                       TINY_SOURCE=source, TINY_SINK=sink, TINY_DLQ=dlq)
    count = 30
    with _worker(python, outside, port, env) as (proc, log_path):
        try:
            _wait_ready(proc, log_path)
            lap("worker ready")
            sent = {f"r{i}": i for i in range(count)}
            await produce(kafka_bootstrap, source,
                          [(k.encode(), json.dumps({"id": k, "value": v}).encode())
                           for k, v in sent.items()])
            out = await consume(kafka_bootstrap, sink, until=count, timeout=60)
            got = {json.loads(r.value)["id"]: json.loads(r.value)["value"] for r in out}
            assert got == {k: 2 * v for k, v in sent.items()}
            lap("records through")

            base = f"http://127.0.0.1:{port}/backpressure/"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                status, ctype, page = await _get(http, base + "ui")
                assert (status, ctype) == (200, "text/html"), (status, ctype, page[:300])
                assert page == probe["dashboard"]  # the installed file, served as is
                for name in ("dashboard.js", "dashboard.css"):
                    status, _, body = await _get(http, base + "ui/" + name)
                    assert status == 200 and body, (name, status)
                status, ctype, text = await _get(http, base)
                assert status == 200, (status, text[:300])
                state: dict[str, Any] = json.loads(text)
                assert "double" in state["pipelines"], sorted(state["pipelines"])
            lap("web")
        except BaseException:
            print(f"\n===== worker log ({log_path}) =====\n"
                  f"{log_path.read_text(errors='replace')[-8000:]}")
            raise
    assert proc.returncode is not None
    lap("stop")
    print(f"\nrelease test steps (s): {timings}, total {time.monotonic() - started:.1f} s")
