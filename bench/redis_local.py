"""A throw-away local ``redis-server`` for the benchmarks' Redis-backed peers.

``redis_server()`` starts one on a free port in a temporary directory (no persistence) and
stops it on exit; ``redis_missing()`` says why the peers cannot run (None: they can).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_missing(*modules: str) -> str | None:
    """A note for the report when ``redis-server`` or one of ``modules`` is missing."""
    if shutil.which("redis-server") is None:
        return ("`redis-server` is not on PATH (e.g. `apt-get install -y redis-server`)")
    for module in modules:
        try:
            __import__(module)
        except ImportError as exc:
            return f"{exc} (`pip install -e '.[bench]'`)"
    return None


@contextlib.contextmanager
def redis_server() -> Iterator[int]:
    """A local redis-server on a free port; yields the port once it answers."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="fbp-redis-") as tmp:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp,
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            import redis

            client = redis.Redis(port=port)
            deadline = time.monotonic() + 20
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    words = [w for w in out.stdout.split() if w.startswith("v=")]
    return words[0][2:] if words else "?"
