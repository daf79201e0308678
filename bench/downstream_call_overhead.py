"""CPU per guarded call: what ending the waits at a flow stop costs a downstream guard.

Run: ``PYTHONPATH=. .venv/bin/python bench/downstream_call_overhead.py [--rounds 7]``; writes
``bench/results/downstream-call-overhead.md``. Each round times, in turn, 20,000 no-op calls
of one guard (fixed limit, nothing waits) through ``run_unless`` with no stop event, with the
flow's event (``StopWatch``: the way the pipelines call), and the same permits raced against
the event with two tasks per call (the first version of the change), and a plain agent's
``run`` (no event of its own: the guard watches the app's flow event, to go on without its
permits when the flow stops). CPU
time (``process_time``) per call; medians and ranges over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import types
from collections.abc import Awaitable, Callable
from pathlib import Path

from faust_backpressure.agents.downstream import Downstream, build_downstream
from faust_backpressure.limiters.concurrency_limiter import CallPermit
from faust_backpressure.testing.chaos_report import git_commit

CALLS = 20_000
OUT = Path(__file__).parent / "results" / "downstream-call-overhead.md"


def _value(x: int) -> int:
    return x


async def _timed(call: Callable[[int], Awaitable[object]]) -> float:
    began = time.process_time()
    for i in range(CALLS):
        await call(i)
    return (time.process_time() - began) / CALLS * 1e6


async def _raced_permits(self: Downstream, stopped: asyncio.Event | None) -> CallPermit:
    """The first version of ``Downstream._permits``: two tasks per call."""
    assert stopped is not None
    acquiring = asyncio.ensure_future(self._acquire_permits())
    stopping = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait((acquiring, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    return acquiring.result()


def _cases(stopped: asyncio.Event) -> dict[str, Callable[[int], Awaitable[object]]]:
    plain, watched, raced, agent = (build_downstream("bench", max_concurrency=64,
                                                     limit="fixed") for _ in range(4))
    raced._permits = types.MethodType(_raced_permits, raced)  # type: ignore[method-assign]
    agent.flow_stopped = lambda: stopped  # as the installer sets it (the app's event)
    return {
        "run_unless(None, fn): no stop event": lambda i: plain.run_unless(None, _value, i),
        "run_unless(flow_stopped, fn): StopWatch (now)":
            lambda i: watched.run_unless(stopped, _value, i),
        "run_unless(flow_stopped, fn): two tasks per call (first version)":
            lambda i: raced.run_unless(stopped, _value, i),
        "run(fn) in a plain agent: the app's flow event, StopWatch":
            lambda i: agent.run(_value, i),
    }


async def main(rounds: int) -> str:
    stopped = asyncio.Event()
    cases = _cases(stopped)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, call in cases.items():
            times[name].append(await _timed(call))
    lines = [f"# CPU per guarded call ({CALLS:,} no-op calls a round)", "",
             f"`PYTHONPATH=. .venv/bin/python bench/downstream_call_overhead.py --rounds "
             f"{rounds}`, commit {git_commit()}, load {os.getloadavg()[0]:.2f} at the end; "
             "cases interleaved in every round.", "",
             "| case | median µs/call | range |", "|---|---|---|"]
    for name, values in times.items():
        lines.append(f"| {name} | {statistics.median(values):.1f} | "
                     f"{min(values):.1f}-{max(values):.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    report = asyncio.run(main(parser.parse_args().rounds))
    OUT.write_text(report)
    print(report)
