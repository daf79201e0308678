#!/usr/bin/env python3
"""Issue 12's 2-stage step on the real broker, for both control policies.

Run: ``PYTHONPATH=. python bench/control_step.py [--policies setpoint,step] [--rounds 1]
[--label NAME]`` (with ``--rounds R`` the policies run R times each, their order rotating, and
the report gives medians with min-max and how many runs met every target).
Starts its own Kafka broker (or uses ``$KAFKA_BOOTSTRAP_SERVERS``) and, per policy, two real
``faust worker`` processes of ``bench/control_step_app.py``:

* stage 1: ``bp.pipeline`` A -> B under the distributed limiter ``stage1`` at 300/s with
  ``bp.control_loop`` (interval 1 s, scaling threshold 1,000, max lag 2,000: set point 500,
  backlog cleared under 200, critical 4,000);
* stage 2: its own app consuming B at exactly 100/s (commits every 2.8 s, Faust's default).

A is fed at 300/s for 30 s, then no more; the run goes on until stage 1 has drained A and the
decided rate is back at 300/s (or a timeout). Recorded over time: B's lag and A's backlog
(probed every 0.5 s by this process), every control decision (reported by stage 1 as it is
taken) and stage 2's processed count per second. Writes ``bench/results/control_step-<label>.md``
(table, the 1-minute load, the series) and the plot ``docs/img/control_step.png``.

Measures (issue 12's targets in brackets): peak lag of B [< max lag 2,000]; steady window =
10 s after the feed starts to the end of the pressure (A drained: stage 1's group has
committed everything fed); B's lag band and the decided rate band in it [within +-25% of 100/s];
rate changes and steps > 5% per minute in it [<= 12]; stage 2's busy share in it (processed /
100 per s) [>= 95%]; restore: control intervals from the end of the pressure to the first
decision at the base rate [<= 10].
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.figures import median_spread, rotated
from faust_backpressure.control.probe import LagProbe
from faust_backpressure.testing.broker import kafka_bootstrap
from faust_backpressure.testing.chaos_report import git_commit
from faust_backpressure.testing.kafka_io import create_topics, wait_partitions
from faust_backpressure.testing.workers import FaustWorker, wait_until_settled

REPO = Path(__file__).resolve().parents[1]
APP = "bench.control_step_app"
BASE, CAPACITY, INTERVAL = 300.0, 100.0, 1.0
FEED_RATE, FEED_SECONDS = 300.0, 30.0
MAX_LAG, SET_POINT = 2_000, 500


@dataclass
class Result:
    policy: str
    start: float = 0.0             # feed start (wall clock)
    feed_end: float = 0.0
    pressure_end: float | None = None
    probes: list[tuple[float, int, int]] = field(default_factory=list)  # t, lag B, backlog A
    decisions: list[dict[str, Any]] = field(default_factory=list)
    stage2: dict[int, int] = field(default_factory=dict)  # second -> processed
    load: tuple[float, float] = (0.0, 0.0)
    fed: int = 0

    # -- measures ------------------------------------------------------------------------

    @property
    def steady(self) -> tuple[float, float]:
        end = self.pressure_end if self.pressure_end is not None else self.probes[-1][0]
        return self.start + 10.0, end

    def steady_decisions(self) -> list[dict[str, Any]]:
        lo, hi = self.steady
        return [d for d in self.decisions if lo < d["at"] <= hi]

    def peak_lag(self) -> int:
        return max(lag for t, lag, _ in self.probes if t >= self.start)

    def lag_band(self) -> tuple[int, int]:
        lo, hi = self.steady
        lags = [lag for t, lag, _ in self.probes if lo <= t <= hi]
        return min(lags), max(lags)

    def rate_band(self) -> tuple[float, float]:
        rates = [d["rate"] for d in self.steady_decisions()]
        return min(rates), max(rates)

    def per_minute(self, threshold: float | None) -> float:
        """Rate changes (any, or of more than ``threshold`` of the previous rate) a minute."""
        decisions = self.steady_decisions()
        before = [d for d in self.decisions if d["at"] <= self.steady[0]]
        rates = ([before[-1]["rate"]] if before else []) + [d["rate"] for d in decisions]
        changes = sum(1 for a, b in itertools.pairwise(rates)
                      if (b != a if threshold is None else abs(b - a) > threshold * a))
        minutes = (self.steady[1] - self.steady[0]) / 60.0
        return changes / minutes

    def busy_share(self) -> float:
        lo, hi = self.steady
        seconds = range(int(lo) + 1, int(hi))  # whole seconds inside the window
        return sum(self.stage2.get(s, 0) for s in seconds) / (CAPACITY * len(seconds))

    def restore_intervals(self) -> float | None:
        if self.pressure_end is None:
            return None
        back = next((d for d in self.decisions
                     if d["at"] > self.pressure_end and d["rate"] >= BASE), None)
        return None if back is None else (back["at"] - self.pressure_end) / INTERVAL

    def emergency(self) -> bool:
        return any(d["severity"] == "EMERGENCY" for d in self.decisions if d["at"] > self.start)

    def targets(self) -> dict[str, bool]:
        lo, hi = self.rate_band()
        restore = self.restore_intervals()
        return {"stage 2 >= 95% busy": self.busy_share() >= 0.95,
                f"lag < {MAX_LAG:,}": self.peak_lag() < MAX_LAG,
                "steady rate within +-25% of 100/s":
                    lo >= 0.75 * CAPACITY and hi <= 1.25 * CAPACITY,
                "<= 12 steps > 5% a minute": self.per_minute(0.05) <= 12,
                "base back within 10 intervals": restore is not None and restore <= 10}


async def feed(bootstrap: str, topic: str, rate: float, seconds: float) -> int:
    """``rate`` records/s for ``seconds``, in batches every 0.1 s on an absolute schedule."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    sent = 0
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        tick = 0
        while (elapsed := loop.time() - start) < seconds:
            due = int(rate * min(elapsed + 0.1, seconds))
            batch = [await producer.send(topic, value=b"r%d" % i) for i in range(sent, due)]
            sent = due
            await asyncio.gather(*batch)
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * 0.1 - loop.time()))
    finally:
        await producer.stop()
    return sent


async def read_reports(bootstrap: str, topic: str, out: list[tuple[bytes, dict[str, Any]]],
                       stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await wait_partitions(consumer, topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend((r.key or b"", json.loads(r.value or b"{}")) for r in records)
    finally:
        await consumer.stop()


async def run_once(bootstrap: str, policy: str, timeout: float) -> Result:
    tag = f"{os.getpid()}-{time.time_ns()}"
    a, b, reports_topic = f"step-a-{tag}", f"step-b-{tag}", f"step-report-{tag}"
    stage1_id, stage2_id = f"step-s1-{tag}", f"step-s2-{tag}"
    await create_topics(bootstrap, {a: 1, b: 1, reports_topic: 1})
    common = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "FBP_SOURCE": a, "FBP_SINK": b,
              "FBP_REPORT": reports_topic}
    result = Result(policy)
    reports: list[tuple[bytes, dict[str, Any]]] = []
    stop = asyncio.Event()
    if True:
        stage2 = FaustWorker(APP, name="stage2", cwd=REPO, env={
            **common, "FBP_STAGE": "2", "FBP_APP_ID": stage2_id,
            "FBP_CAPACITY": f"{CAPACITY:g}"}).start()
        stage1 = FaustWorker(APP, name="stage1", cwd=REPO, env={
            **common, "FBP_STAGE": "1", "FBP_APP_ID": stage1_id, "FBP_POLICY": policy,
            "FBP_DOWNSTREAM_GROUP": stage2_id, "FBP_RATE": f"{BASE:g}",
            "FBP_INTERVAL": f"{INTERVAL:g}"}).start()
        reader = asyncio.ensure_future(read_reports(bootstrap, reports_topic, reports, stop))
        lag_b = LagProbe(bootstrap, stage2_id, [b])
        backlog_a = LagProbe(bootstrap, stage1_id, [a])
        try:
            for worker in (stage2, stage1):
                worker.wait_ready(120)
                wait_until_settled([worker], 120)
            deadline = time.monotonic() + 60
            while sum(1 for k, _ in reports if k == b"decision") < 3:  # the loop is deciding
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no control decisions:\n{stage1.logs()[-3000:]}")
                await asyncio.sleep(0.2)
            result.load = (os.getloadavg()[0], 0.0)
            result.start = time.time()
            feeder = asyncio.ensure_future(feed(bootstrap, a, FEED_RATE, FEED_SECONDS))
            end_by = time.monotonic() + timeout
            while time.monotonic() < end_by:
                now = time.time()
                result.probes.append((now, (await lag_b.measure())[0],
                                      (await backlog_a.measure())[0]))
                if feeder.done() and not result.feed_end:
                    result.fed, result.feed_end = feeder.result(), now
                if (result.feed_end and result.pressure_end is None
                        and result.probes[-1][2] == 0):
                    result.pressure_end = now
                if result.pressure_end is not None:
                    back = [d for k, d in reports if k == b"decision"
                            and d["at"] > result.pressure_end and d["rate"] >= BASE]
                    if (back and now > back[0]["at"] + 5) or now > result.pressure_end + 60:
                        break
                for worker in (stage1, stage2):
                    if not worker.alive:
                        raise RuntimeError(f"{worker.name} died:\n{worker.logs()[-3000:]}")
                await asyncio.sleep(max(0.0, 0.5 - (time.time() - now)))
            result.load = (result.load[0], os.getloadavg()[0])
            await asyncio.sleep(1.5)  # the last reports
        finally:
            stop.set()
            await reader
            await lag_b.close()
            await backlog_a.close()
            for worker in (stage1, stage2):
                worker.cleanup()
    for key, body in reports:
        if key == b"decision":
            result.decisions.append(body)
        elif key == b"stage2":
            for second, n in body["counts"].items():
                result.stage2[int(second)] = result.stage2.get(int(second), 0) + n
    return result


# -- output ---------------------------------------------------------------------------------

def summary(results: list[Result]) -> list[str]:
    """Per policy over its rounds: medians (min-max) of the main measures, targets met."""

    lines = ["| policy | rounds | peak lag | steady rate, low / high /s | steps > 5% /min "
             "| stage-2 busy % | restore (intervals) | every target met |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for policy in dict.fromkeys(r.policy for r in results):
        mine = [r for r in results if r.policy == policy]
        restores = [x for x in (r.restore_intervals() for r in mine) if x is not None]
        lines.append(
            f"| {policy} | {len(mine)} | {median_spread([r.peak_lag() for r in mine], ',.0f')} "
            f"| {median_spread([r.rate_band()[0] for r in mine], '.0f')} / "
            f"{median_spread([r.rate_band()[1] for r in mine], '.0f')} "
            f"| {median_spread([r.per_minute(0.05) for r in mine], '.0f')} "
            f"| {median_spread([r.busy_share() * 100 for r in mine], '.1f')} "
            f"| {median_spread(restores, '.1f') if restores else 'never'}"
            f"{'' if len(restores) == len(mine) else f' ({len(mine) - len(restores)} never)'} "
            f"| {sum(all(r.targets().values()) for r in mine)} of {len(mine)} |")
    return lines


def table(results: list[Result]) -> list[str]:
    lines = ["| policy | peak lag | steady lag band | steady rate /s | rate changes /min | "
             "steps > 5% /min | stage-2 busy | emergency | restore (intervals) | "
             "steady window | load 1 min before / after |",
             "| --- |" + " ---: |" * 7 + " --- | --- | --- |"]
    for r in results:
        lo, hi = r.lag_band()
        rlo, rhi = r.rate_band()
        restore = r.restore_intervals()
        s0, s1 = r.steady
        lines.append(
            f"| {r.policy} | {r.peak_lag():,} | {lo:,}-{hi:,} | {rlo:.0f}-{rhi:.0f} | "
            f"{r.per_minute(None):.0f} | {r.per_minute(0.05):.0f} | {r.busy_share():.1%} | "
            f"{'yes' if r.emergency() else 'no'} | "
            f"{'never' if restore is None else f'{restore:.1f}'} | "
            f"{s0 - r.start:.0f}-{s1 - r.start:.0f} s | {r.load[0]:.2f} / {r.load[1]:.2f} |")
    return lines


def series(r: Result) -> list[str]:
    lines = [f"### {r.policy}: per second from the feed's start", "",
             "| t s | lag B | backlog A | decided rate /s | stage 2 /s |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    end = int(r.probes[-1][0] - r.start)
    for s in range(-2, end + 1):
        t = r.start + s
        probe = min(r.probes, key=lambda p: abs(p[0] - t))
        before = [d for d in r.decisions if d["at"] <= t]
        rate = before[-1]["rate"] if before else BASE
        lines.append(f"| {s} | {probe[1]:,} | {probe[2]:,} | {rate:.1f} | "
                     f"{r.stage2.get(int(t), 0)} |")
    return lines


def plot(results: list[Result], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, len(results), figsize=(5.2 * len(results), 6.4),
                             sharex="col", squeeze=False)
    for col, r in enumerate(results):
        t0 = r.start
        lag_ax, rate_ax, s2_ax = axes[0][col], axes[1][col], axes[2][col]
        lag_ax.plot([t - t0 for t, _, _ in r.probes], [lag for _, lag, _ in r.probes],
                    lw=1, label="lag of B")
        lag_ax.axhline(SET_POINT, color="g", ls=":", lw=1, label="set point 500")
        lag_ax.axhline(MAX_LAG, color="r", ls="--", lw=1, label="max lag 2,000")
        lag_ax.set_ylim(0, MAX_LAG * 1.1)
        lag_ax.set_title(f"policy: {r.policy}", fontsize=10)
        rate_ax.step([d["at"] - t0 for d in r.decisions], [d["rate"] for d in r.decisions],
                     where="post", lw=1, label="decided rate")
        rate_ax.axhspan(0.75 * CAPACITY, 1.25 * CAPACITY, color="g", alpha=0.12,
                        label="100/s +-25%")
        rate_ax.set_ylim(0, BASE * 1.1)
        seconds = sorted(s for s in r.stage2 if s >= t0 - 5)
        s2_ax.plot([s - t0 for s in seconds], [r.stage2[s] for s in seconds], lw=1,
                   label="stage 2 /s")
        s2_ax.axhline(CAPACITY, color="g", ls=":", lw=1)
        s2_ax.set_ylim(0, CAPACITY * 1.3)
        s2_ax.set_xlabel("s from the start of the feed")
        for ax in (lag_ax, rate_ax, s2_ax):
            ax.axvspan(0, r.feed_end - t0, color="0.85", alpha=0.5, lw=0)
            if r.pressure_end is not None:
                ax.axvline(r.pressure_end - t0, color="k", ls="--", lw=0.8)
            ax.tick_params(labelsize=8)
            ax.legend(fontsize=7, loc="upper right")
    axes[0][0].set_ylabel("records")
    axes[1][0].set_ylabel("records/s")
    axes[2][0].set_ylabel("records/s")
    fig.suptitle("Issue 12 step on the real broker: A fed at 300/s for 30 s (grey); "
                 "dashed: A drained", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policies", default="setpoint,step")
    parser.add_argument("--label", default="latest")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=240.0)
    parser.add_argument("--plot", default=str(REPO / "docs" / "img" / "control_step.png"))
    args = parser.parse_args()
    results = []
    policies = args.policies.split(",")
    with kafka_bootstrap() as bootstrap:
        for k in range(args.rounds):
            for policy in rotated(policies, k):
                result = asyncio.run(run_once(bootstrap, policy, args.timeout))
                results.append(result)
                sys.stderr.write(f"{policy}: {table([result])[-1]}\n")
    lines = [f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; commit {git_commit(REPO)}; Python "
             f"{platform.python_version()}, {os.cpu_count()} cores; `PYTHONPATH=. python "
             f"bench/control_step.py --policies {args.policies} --rounds {args.rounds}` "
             f"({args.label}). Stage 1: distributed limiter {BASE:g}/s, "
             f"interval {INTERVAL:g} s, scaling 1,000, max lag 2,000; stage 2: {CAPACITY:g}/s, "
             f"commits every 2.8 s; A fed at {FEED_RATE:g}/s for {FEED_SECONDS:g} s.", "",
             f"Over {args.rounds} round(s), the policies' order rotating; medians (min-max):",
             "", *summary(results), "", "Every run, in the order run:", "",
             *table(results), ""]
    first = [next(r for r in results if r.policy == p) for p in policies]
    for r in results:
        recommended = sorted({d["recommended_workers"] for d in r.steady_decisions()
                              if d.get("recommended_workers") is not None})
        lines += [f"{r.policy}: scale-out recommendations in the steady window (stage 2 runs "
                  f"1 worker at {CAPACITY:g}/s, base {BASE:g}/s): {recommended or 'none'}", ""]
        lines += [f"{r.policy}: fed {r.fed:,}; targets: " + ", ".join(
            f"{name} {'met' if ok else 'MISSED'}" for name, ok in r.targets().items()), ""]
    lines += ["Per-second series and decisions of each policy's first run:", ""]
    for r in first:
        lines += [*series(r), ""]
        lines += [f"### {r.policy}: decisions (s from the feed's start)", "",
                  "| t s | rate /s | severity | downstream /s | utilization | workers rec. | "
                  "reason |", "| ---: | ---: | --- | ---: | ---: | ---: | --- |"]
        for d in r.decisions:
            down = d.get("downstream_rate")
            lines.append(f"| {d['at'] - r.start:.1f} | {d['rate']:.1f} | {d['severity']} | "
                         f"{'' if down is None else f'{down:.1f}'} | "
                         f"{d['utilization']:.2f} | {d.get('recommended_workers') or ''} | "
                         f"{d['reason']} |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    out = REPO / "bench" / "results" / f"control_step-{args.label}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Control step on the real broker (issue 12)\n\n" + text)
    plot(first, Path(args.plot))
    sys.stdout.write("\n".join(table(results)) + "\n")
    for r in results:
        sys.stdout.write(f"{r.policy}: {r.targets()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
