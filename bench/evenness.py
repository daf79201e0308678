#!/usr/bin/env python3
"""Evenness and fairness of one shared limit (issue 13), side by side with Redis-backed peers.

Run: ``PYTHONPATH=. python bench/evenness.py [--rounds 5] [--seconds 15]``. Starts its own Kafka
broker (or uses ``$KAFKA_BOOTSTRAP_SERVERS``) and its own ``redis-server`` (on a free port, in a
temporary directory; the Redis peers are skipped with a note when ``redis-server`` or the ``redis``,
``limits``, ``pyrate-limiter`` packages are missing). Prints a markdown report and writes
``bench/results/evenness.md``.

In each of ``--rounds`` (5) interleaved rounds (the systems' order rotates from round to round,
so no system always runs last, on a warmer machine), 3 processes greedily share one limit of
1000/s for ``--seconds`` (15):

(a) faust-backpressure (rate leases, the only kind since the token leases were removed):
    3 real ``faust worker`` processes of ``tests/integration/distributed/apps/limited.py``
    (``await acquire()`` in a loop), burst 2000, lease TTL 2 s.
(b) ``limits`` MovingWindowRateLimiter with RedisStorage and ``pyrate-limiter`` RedisBucket,
    1000 per 1 s: 3 plain Python processes against the local Redis. A ``limits`` process that
    is refused sleeps until the window's reset time (``get_window_stats``); pyrate-limiter
    waits on its own (``try_acquire(blocking=True)``).

Per system: hot-path ops/s (one process, a limit that never binds: the lease-hit
``try_acquire(1)``, or one Redis call per ``hit``/``try_acquire``), admitted over the 10 s
steady part (from t0 + 4 s, once the initial 2000-permit burst has been spent, to t0 + 14 s)
vs rate x 10 s, the worst sliding 1 s window inside the steady part, per-second min/max there,
per-worker shares there (spread = (max - min) / min), round trips per 1000 permits (lease
requests and resends; for the peers, Redis commands), CPU seconds per 1000 permits (the 3
workers' processes, or the 3 peer processes plus ``redis-server``'s own CPU from ``INFO cpu``).
The report gives each figure's median and min-max over the rounds, and every round's row.
The hot-path column compares what one permit costs where it is taken: a local lease hit for
faust-backpressure, one Redis round trip for a peer. Targets (issue 13): worst steady 1 s
window <= 1.05 x rate, shares within 10 %, admitted within 1 % of rate x t, <= 10 lease
requests per 1000 permits, hot path >= 1M ops/s.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.figures import cpu_seconds, median_spread
from bench.redis_local import redis_missing, redis_server, redis_version
from faust_backpressure.tables import DistributedRateLimiter, Grant
from faust_backpressure.testing.broker import kafka_bootstrap
from faust_backpressure.testing.kafka_io import consume, create_topics
from faust_backpressure.testing.workers import FaustWorker, wait_until_settled
from faust_backpressure.wire.limiter_records import LeaseRequest

REPO = Path(__file__).resolve().parents[1]
APP = "tests.integration.distributed.apps.limited"
RATE, BURST, TTL, WORKERS = 1000.0, 2000.0, 2.0, 3
SETTLE, STEADY = 4.0, 10.0  # the steady part: [t0 + SETTLE, t0 + SETTLE + STEADY)


# -- hot path ------------------------------------------------------------------------------

def leased(tokens: int) -> DistributedRateLimiter:
    """A limiter holding a lease of ``tokens`` and a share that never binds, as a worker has
    it between two grants."""
    limiter = DistributedRateLimiter("bench", 1e12, 1e12, worker_id="w", lease_ttl=3600)
    limiter.try_acquire()
    request = limiter.poll()
    assert isinstance(request, LeaseRequest)
    limiter.on_grant(Grant(request_id=request.request_id, limiter_id="bench", worker_id="w",
                           lease_id="1", tokens=tokens, ttl=3600, renews=None,
                           retry_after=3600, epoch=0, rate=1e12, burst=1e12,
                           share=1e9, share_cap=float(tokens)))
    return limiter


def lease_hit_ops(n: int) -> float:
    """Lease-hit ``try_acquire(1)`` ops/s, median of 5 rounds."""
    rounds = []
    for _ in range(5):
        limiter = leased(n + 10)
        take = limiter.try_acquire
        began = time.perf_counter()
        for _ in range(n):
            take()
        rounds.append(n / (time.perf_counter() - began))
    return statistics.median(rounds)


# -- analysis ------------------------------------------------------------------------------

@dataclass
class Result:
    system: str
    hot_ops: float
    times: dict[str, list[float]]  # admissions per worker (wall clock)
    round_trips: int  # lease requests + resends, or Redis commands, over the whole run
    seconds: float
    load: tuple[float, float]  # 1-minute load average before / after the run
    cpu: float = 0.0  # CPU seconds of the run's processes (and Redis) while it ran
    notes: list[str] = field(default_factory=list)

    @functools.cached_property
    def all_times(self) -> list[float]:
        return sorted(t for ts in self.times.values() for t in ts)

    @property
    def t0(self) -> float:
        return self.all_times[0]

    def steady(self, times: list[float]) -> list[float]:
        lo = self.t0 + SETTLE
        return [t for t in times if lo <= t < lo + STEADY]

    def worst(self, since: float, until: float) -> int:
        """Most admissions in a window [t, t + 1 s) inside [t0 + since, t0 + until)."""
        lo, hi = self.t0 + since, self.t0 + until
        times = [t for t in self.all_times if lo <= t < hi]
        return max((bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)
                    if t + 1.0 <= hi), default=0)

    def per_second(self, since: float, seconds: int) -> list[int]:
        counts = [0] * seconds
        lo = self.t0 + since
        for t in self.all_times:
            if lo <= t < lo + seconds:
                counts[int(t - lo)] += 1
        return counts

    def figures(self) -> dict[str, Any]:
        times = self.all_times
        steady = self.steady(times)
        per_second = self.per_second(SETTLE, int(STEADY))
        worst = self.worst(SETTLE, SETTLE + STEADY)
        shares = {w: len(self.steady(sorted(ts))) for w, ts in sorted(self.times.items())}
        low = min(shares.values(), default=0)
        spread = (max(shares.values()) - low) / low if low else float("inf")
        in_run = [t for t in times if t < self.t0 + self.seconds]
        return {"admitted": len(steady), "allowed": RATE * STEADY, "worst": worst,
                "sec_min": min(per_second), "sec_max": max(per_second),
                "per_second": per_second, "shares": shares, "spread": spread,
                "per_1000": self.round_trips / max(1, len(times)) * 1000,
                "cpu_per_1000": self.cpu / max(1, len(times)) * 1000,
                "total": len(in_run), "total_all": len(times)}


# -- (a): faust-backpressure on real workers -------------------------------------------

async def faust_run(bootstrap: str, seconds: float) -> Result:
    tag = f"{os.getpid()}-{time.time_ns()}"
    report = f"bench-even-report-{tag}"
    await create_topics(bootstrap, {report: 1})
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "FBP_APP_ID": f"bench-even-{tag}",
               "FBP_REPORT": report, "FBP_GO_FILE": str(go), "FBP_LEASE_TTL": f"{TTL:g}",
               "FBP_LIMITERS": f"even:{RATE:g}:{BURST:g}"}
        procs = [FaustWorker(APP, name=f"w{i}", env=env, cwd=REPO).start()
                 for i in range(WORKERS)]
        try:
            for proc in procs:
                proc.wait_ready(120)
            wait_until_settled(procs, 120)  # no rebalance pending when the load starts
            before = os.getloadavg()[0]
            cpu_before = cpu_seconds([proc.pid for proc in procs])
            go.touch()

            def done(records: list[Any]) -> bool:
                bodies = [json.loads(r.value) for r in records]
                times = [t for b in bodies for t in b["times"]]
                if not times:
                    return False
                end = min(times) + seconds + 0.5
                # every worker has reported past the end of the run
                last = {b["worker"]: b["at"] for b in bodies}
                return len(last) == WORKERS and min(last.values()) > end

            records = await consume(bootstrap, report, until=done, timeout=seconds + 90)
            after = os.getloadavg()[0]
            cpu = cpu_seconds([proc.pid for proc in procs]) - cpu_before
        finally:
            for proc in procs:
                proc.cleanup()
    bodies = [json.loads(r.value) for r in records]
    times: dict[str, list[float]] = {}
    trips: dict[str, int] = {}
    for body in bodies:
        times.setdefault(body["worker"], []).extend(body["times"])
        # cumulative: the last report counts every lease message, for every permit reported
        trips[body["worker"]] = body.get("requests", 0) + body.get("retries", 0)
    return Result("faust-backpressure, rate leases", lease_hit_ops(1_000_000),
                  times, sum(trips.values()), seconds, (before, after), cpu)


# -- (b): Redis-backed peers ------------------------------------------------------------------

def count_redis_commands() -> Callable[[], int]:
    """Count every command this process sends to Redis (each is one round trip)."""
    import redis

    calls = [0]
    original = redis.Redis.execute_command

    def counted(self: Any, *args: Any, **options: Any) -> Any:
        calls[0] += 1
        return original(self, *args, **options)

    redis.Redis.execute_command = counted  # type: ignore[method-assign]
    return lambda: calls[0]


def make_peer(kind: str, port: int, key: str, limit: int) -> Callable[[], bool]:
    """One call of the peer limiter: True when a permit was admitted (it waits when refused,
    as a caller of that library would)."""
    if kind == "limits":
        from limits import RateLimitItemPerSecond
        from limits.storage import RedisStorage
        from limits.strategies import MovingWindowRateLimiter

        limiter = MovingWindowRateLimiter(RedisStorage(f"redis://127.0.0.1:{port}"))
        item = RateLimitItemPerSecond(limit, 1)

        def call() -> bool:
            if limiter.hit(item, key):
                return True
            reset = limiter.get_window_stats(item, key).reset_time
            time.sleep(min(1.0, max(0.0, reset - time.time())))
            return False

        return call
    import redis
    from pyrate_limiter import Duration, Limiter, Rate, RedisBucket

    bucket = RedisBucket.init([Rate(limit, Duration.SECOND)], redis.Redis(port=port), key)
    pyrate = Limiter(bucket)
    return lambda: bool(pyrate.try_acquire(key, blocking=True))


def peer_main(kind: str, port: int, seconds: float, go: str, out: str) -> None:
    """A plain Python process calling the peer limiter greedily for ``seconds``."""
    calls = count_redis_commands()
    call = make_peer(kind, port, "even", int(RATE))
    while not os.path.exists(go):
        time.sleep(0.005)
    start = calls()
    cpu = time.process_time()
    end = time.time() + seconds
    times = []
    while time.time() < end:
        if call():
            times.append(time.time())
    Path(out).write_text(json.dumps({"times": times, "calls": calls() - start,
                                     "cpu": time.process_time() - cpu}))
    os._exit(0)  # pyrate-limiter's leak thread would otherwise keep the process alive


def peer_hot_ops(kind: str, port: int, seconds: float = 2.0) -> float:
    """One process, a limit that never binds: calls per second (one Redis call each)."""
    code = ("import sys, time; from bench.evenness import make_peer; "
            f"call = make_peer({kind!r}, {port}, 'hot', 10**9); call(); n = 0; "
            f"end = time.perf_counter() + {seconds}; began = time.perf_counter()\n"
            "while time.perf_counter() < end:\n    call(); n += 1\n"
            "print(n / (time.perf_counter() - began)); sys.stdout.flush(); "
            "import os; os._exit(0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def redis_cpu(port: int) -> float:
    """CPU seconds ``redis-server`` has used (user + system, its own ``INFO cpu``)."""
    import redis

    info = redis.Redis(port=port).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def peer_run(kind: str, port: int, seconds: float) -> Result:
    import redis

    redis.Redis(port=port).flushall()
    hot = peer_hot_ops(kind, port)
    redis.Redis(port=port).flushall()
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        outs = [Path(tmp) / f"p{i}.json" for i in range(WORKERS)]
        procs = [subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--peer", kind, "--port", str(port),
             "--seconds", str(seconds), "--go", str(go), "--out", str(out)],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}) for out in outs]
        time.sleep(3.0)  # imports and connections done before the start
        before = os.getloadavg()[0]
        server_before = redis_cpu(port)
        go.touch()
        for proc in procs:
            proc.wait(seconds + 60)
        after = os.getloadavg()[0]
        server = redis_cpu(port) - server_before
        bodies = [json.loads(out.read_text()) for out in outs]
    times = {f"p{i}": body["times"] for i, body in enumerate(bodies)}
    name = ("`limits` MovingWindow + RedisStorage" if kind == "limits"
            else "`pyrate-limiter` RedisBucket")
    return Result(f"{name} (Redis {redis_version()})", hot, times,
                  sum(body["calls"] for body in bodies), seconds, (before, after),
                  server + sum(body["cpu"] for body in bodies))


# -- report ----------------------------------------------------------------------------------

def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("faust-streaming", "limits", "pyrate-limiter", "redis"):
        with contextlib.suppress(PackageNotFoundError):
            parts.append(f"{dist} {version(dist)}")
    return ", ".join(parts)


def render(rounds: list[list[Result]], skipped: str | None, seconds: float,
           commit: str) -> str:
    systems = list(dict.fromkeys(r.system for one in rounds for r in one))
    runs = {name: [r for one in rounds for r in one if r.system == name] for name in systems}
    lines = [
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {commit}; Python "
        f"{platform.python_version()}, {os.cpu_count()} cores; {versions()}; command "
        f"`PYTHONPATH=. python bench/evenness.py --rounds {len(rounds)} --seconds {seconds:g}`.",
        "",
        f"{len(rounds)} interleaved rounds (the order rotates each round). In each run 3 "
        f"processes greedily share one limit of {RATE:.0f}/s for {seconds:g} s (faust-"
        f"backpressure: burst {BURST:.0f}, lease TTL {TTL:g} s, real `faust worker` processes). "
        f"Steady part: t0 + {SETTLE:g} s to t0 + {SETTLE + STEADY:g} s. Medians over the rounds "
        "(min-max). Hot path: a local lease hit for faust-backpressure, one Redis round trip "
        "for a peer. CPU: the 3 processes (and `redis-server` for the peers) during the run.",
        "",
        "| system | hot-path ops/s | admitted / allowed, steady | worst 1 s window / rate "
        "| share spread | round trips / 1000 permits | CPU s / 1000 permits | load 1 min |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]


    for name, results in runs.items():
        figures = [r.figures() for r in results]
        loads = [x for r in results for x in r.load]
        lines.append(
            f"| {name} | {median_spread([r.hot_ops / 1e3 for r in results], ',.0f')}k "
            f"| {median_spread([f['admitted'] / f['allowed'] * 100 for f in figures], '.1f')} % "
            f"| {median_spread([f['worst'] / RATE for f in figures], '.3f')} "
            f"| {median_spread([f['spread'] * 100 for f in figures], '.1f')} % "
            f"| {median_spread([f['per_1000'] for f in figures], ',.1f')} "
            f"| {median_spread([f['cpu_per_1000'] for f in figures], '.3f')} "
            f"| {min(loads):.2f}-{max(loads):.2f} |")
    lines += ["", "Every run, in the order run:", "",
              "| round | system | admitted, steady | worst 1 s | per-second min-max | shares "
              "(spread) | round trips / 1000 | CPU s | load before / after |",
              "| ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    for n, one in enumerate(rounds, 1):
        for r in one:
            f = r.figures()
            shares = " / ".join(f"{v:,}" for v in f["shares"].values())
            lines.append(
                f"| {n} | {r.system} | {f['admitted']:,} ({f['admitted'] / f['allowed']:.1%}) "
                f"| {f['worst']:,} | {f['sec_min']:,}-{f['sec_max']:,} | {shares} "
                f"({f['spread']:.1%}) | {f['per_1000']:.1f} | {r.cpu:.2f} "
                f"| {r.load[0]:.2f} / {r.load[1]:.2f} |")
    lines += ["", "Per second from t0, every run:", ""]
    lines += [f"- round {n}, {r.system}: {r.per_second(0.0, int(seconds))}"
              for n, one in enumerate(rounds, 1) for r in one]
    if skipped:
        lines += ["", skipped]
    return "\n".join(lines) + "\n"


def main(rounds: int, seconds: float) -> str:
    from faust_backpressure.testing.chaos_report import git_commit

    missing = redis_missing("limits", "pyrate_limiter", "redis")
    kinds = ["faust"] + ([] if missing else ["limits", "pyrate"])
    done: list[list[Result]] = []
    with contextlib.ExitStack() as stack:
        bootstrap = stack.enter_context(kafka_bootstrap())  # outside any event loop
        port = 0 if missing else stack.enter_context(redis_server())
        for n in range(rounds):
            order = kinds[n % len(kinds):] + kinds[:n % len(kinds)]
            done.append([asyncio.run(faust_run(bootstrap, seconds)) if kind == "faust"
                         else peer_run(kind, port, seconds) for kind in order])
            sys.stderr.write(f"round {n + 1} of {rounds} done\n")
    skipped = f"Redis peers skipped: {missing}." if missing else None
    return render(done, skipped, seconds, git_commit())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--peer", choices=["limits", "pyrate"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        peer_main(args.peer, args.port, args.seconds, args.go, args.out)
    text = main(args.rounds, args.seconds)
    out = REPO / "bench" / "results" / "evenness.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Evenness and fairness (issue 13)\n\n" + text)
    sys.stdout.write(text)
