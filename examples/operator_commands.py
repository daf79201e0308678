"""A walk-through of the operator commands against a running worker: what each one returns.

Start a worker of the example app, then run this from another shell with the same environment
(broker, ``CONTROL_EXAMPLE_NAME``, ``FAUST_BP_*``)::

    faust -A examples.control_app worker -l info
    python -m examples.operator_commands            # --app, --limiter, --pipeline: see --help

It runs, one after the other, each as ``faust -A <app> backpressure ...`` (what an operator
types; see docs/operations.md):

1. ``status --json``: the limiter and the pipeline as the cluster sees them;
2. ``set-rate orders-api 150``: a new shared rate, acknowledged by the limiter's owner (the
   control loop moves it again at its next decision);
3. ``emergency-stop orders-api --rate 5``: an operator hold that wins over the control loop;
   ``status`` shows severity ``OVERRIDE`` and who holds it;
4. ``restore orders-api``: the hold is released, the loop decides again;
5. ``pause price``: the pipeline stops consuming on every worker; ``status`` shows it paused;
6. ``resume price``: it goes on where it stopped.

Each command's exit code and output are printed. It exits 0 when every command succeeded and
``status`` showed each change take effect, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

Check = Callable[[dict[str, Any]], bool]


class Walkthrough:
    def __init__(self, app: str, limiter: str, pipeline: str, timeout: float) -> None:
        self.app, self.limiter, self.pipeline, self.timeout = app, limiter, pipeline, timeout
        self.failures: list[str] = []

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``faust -A APP backpressure ARGS``, printed with its exit code and output."""
        command = [sys.executable, "-m", "faust", "-A", self.app, "backpressure", *args]
        print(f"$ faust -A {self.app} backpressure {shlex.join(args)}", flush=True)
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=self.timeout + 60, env=os.environ.copy())
        shown = done.stderr if args[0] == "status" else done.stdout + done.stderr
        for line in shown.strip().splitlines():
            print(f"    {line}")
        print(f"    -> exit code {done.returncode}", flush=True)
        if done.returncode != 0:
            self.failures.append(f"{shlex.join(args)}: exit code {done.returncode}: "
                                 f"{done.stderr.strip()}")
        return done

    def status(self, what: str, check: Check | None = None) -> dict[str, Any]:
        """``status --json``: prints this limiter's and pipeline's entries; ``check`` them."""
        done = self.run("status", "--json")
        try:
            report: dict[str, Any] = json.loads(done.stdout)
        except json.JSONDecodeError:
            self.failures.append(f"status: not JSON: {done.stdout[:200]!r}")
            return {}
        limiter: dict[str, Any] = next(
            (x for x in report.get("limiters", []) if x["id"] == self.limiter), {})
        pipeline: dict[str, Any] = next(
            (p for p in report.get("pipelines", []) if p["name"] == self.pipeline), {})
        shown = {"limiter": {k: limiter.get(k) for k in (
                     "id", "rate", "configured_rate", "decided_rate", "severity", "reason",
                     "override", "downstream_lag")},
                 "pipeline": {k: pipeline.get(k) for k in (
                     "name", "source", "source_lag", "paused", "paused_by")}}
        for line in json.dumps(shown, indent=2).splitlines():
            print(f"    {line}")
        entries = {"limiter": limiter, "pipeline": pipeline}
        if check is not None:
            ok = check(entries)
            print(f"    {'ok' if ok else 'NOT SEEN'}: {what}", flush=True)
            if not ok:
                self.failures.append(f"status did not show: {what}")
        return entries

    def walk(self) -> int:
        lid, name = self.limiter, self.pipeline
        timeout = ("--timeout", f"{self.timeout:g}")
        print("1. where things stand")
        self.status(f"limiter {lid} and pipeline {name} are known",
                    lambda s: bool(s["limiter"]) and bool(s["pipeline"]))
        print("\n2. a new shared rate (the control loop may move it at its next decision)")
        self.run("set-rate", lid, "150", *timeout)
        print("\n3. an operator hold: wins over the control loop until restore")
        self.run("emergency-stop", lid, "--rate", "5", "--reason", "operator walk-through",
                 *timeout)
        self.status(f"{lid} held at 5/s (severity OVERRIDE)",
                    lambda s: s["limiter"].get("severity") == "OVERRIDE"
                    and (s["limiter"].get("override") or {}).get("rate") == 5.0)
        print("\n4. release the hold: the loop decides again")
        self.run("restore", lid, "--reason", "walk-through done", *timeout)
        self.status(f"{lid} no longer held",
                    lambda s: s["limiter"].get("override") is None
                    and s["limiter"].get("severity") != "OVERRIDE")
        print(f"\n5. pause {name} on every worker (nothing is lost)")
        self.run("pause", name, "--reason", "operator walk-through", *timeout)
        self.status(f"{name} paused", lambda s: s["pipeline"].get("paused") is True)
        print(f"\n6. resume {name}")
        self.run("resume", name, *timeout)
        self.status(f"{name} running again", lambda s: not s["pipeline"].get("paused"))
        if self.failures:
            print("\nFAILED:\n  " + "\n  ".join(self.failures))
            return 1
        print("\nall commands acknowledged and their effects seen in status")
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--app", default="examples.control_app", help="the app module (-A)")
    parser.add_argument("--limiter", default="orders-api",
                        help="a distributed limiter with a control loop")
    parser.add_argument("--pipeline", default="price", help="a pipeline of the app")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds each command waits for its acknowledgement")
    args = parser.parse_args(argv)
    return Walkthrough(args.app, args.limiter, args.pipeline, args.timeout).walk()


if __name__ == "__main__":
    sys.exit(main())
