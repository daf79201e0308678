"""A chaos run's report: a markdown table, one row per run and pipeline (the run's limiter, fault
and time columns repeated on each of its rows), then each run's faults and problems
(``make chaos`` writes it to ``bench/results/chaos.md``)."""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from faust_backpressure.testing.chaos_plan import ChaosResult, PipelineResult

__all__ = ["GUARD_OVERDRAFT", "GUARD_PAUSE", "HEADER", "format_table", "git_commit",
           "read_worker_log"]


def git_commit(repo: Path | None = None) -> str:
    """``<short sha>`` of the checkout (``-dirty`` with uncommitted changes), or ``unknown``."""
    where = repo or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rows(results: Sequence[ChaosResult]) -> Iterator[list[str]]:
    for r in results:
        kills = [f for f in r.faults if f.fault.kind == "kill"]
        outages = [f for f in r.faults if f.fault.kind == "outage"]
        shared = [f"{len(r.bound_violations)} (peak {r.bound_peak:.0%})",
                  " / ".join(_seconds(f.recovery) for f in kills) or "-",
                  " / ".join(_seconds(f.recovery) for f in outages) or "-",
                  str(len(r.worker_exits)), f"{r.seconds:.0f}"]
        for name in r.plan.pipelines:
            p = r.pipelines.get(name, PipelineResult())
            passed = not p.problems(r.plan.guarantee) and not r.run_problems()
            label = name + (f" ({r.plan.batch_size})" if name == "batch" else "")
            yield [r.plan.guarantee, label, str(r.plan.per_pipeline), str(p.records_in),
                   str(p.out_records), str(p.dlq_records), str(len(p.lost)), str(p.duplicated),
                   str(len(p.misrouted)), *shared, "pass" if passed else "FAIL"]


HEADER = ["mode", "pipeline (batch size)", "records", "in", "out", "dlq", "lost", "dup",
          "good in dlq", "bound violations", "restart -> 1st admission (s)",
          "broker back -> progress (s)", "worker exits", "run (s)", "result"]


def format_table(results: Sequence[ChaosResult]) -> str:
    """A markdown table, one row per run and pipeline, and per run its faults and problems."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(results)]
    for r in results:
        faults = ", ".join(f.describe(r.started) for f in r.faults) or "none"
        began = time.strftime("%H:%M:%S", time.localtime(r.started)) if r.started else "-"
        lines.append(f"\n{r.plan.guarantee}, {' + '.join(r.plan.pipelines)} (commit {r.commit}, "
                     f"seed {r.plan.seed}, t=0 at {began}): faults {faults}")
        windows = ", ".join(f"{span:g} s {n}/{limit:.0f}"
                            for span, (n, limit) in sorted(r.bound.items()))
        lines.append(f"- limiter {r.plan.rate:g}/s burst {r.plan.burst:g}, shared by the "
                     f"pipelines; most admitted in any window: {windows}")
        if r.samples_after_faults is not None:
            lines.append(f"- control loop on the limiter: {r.samples_after_faults} pressure "
                         "samples published after the last fault")
        if r.downstream is not None:
            d = r.downstream
            lines.append(f"- downstream guard on the event pipeline, quota "
                         f"{r.plan.downstream_quota:g}/s: {d['ok']} calls served, "
                         f"{d['rejected_429']} answered 429, {d['pauses']} slow-down pauses, "
                         f"{d['overdrafts']} calls let go without permits at a flow stop")
        if r.worker_exits:
            shown = r.worker_exits if len(r.worker_exits) <= 4 else [
                *r.worker_exits[:2], f"... {len(r.worker_exits) - 3} more ...",
                r.worker_exits[-1]]
            lines.append(f"- {len(r.worker_exits)} worker exit(s) (each restarted): "
                         + "; ".join(shown))
        if r.seam_actions:
            lines.append("- seam guards acted: " + ", ".join(
                f"{action} {n}" for action, n in sorted(r.seam_actions.items())))
        for name, errors in sorted(r.log_errors.items()):
            lines.append(f"- {name} log errors: " + "; ".join(f"{n} x `{text}`"
                                                              for text, n in errors))
        for problem in r.problems():
            lines.append(f"- {problem}")
        if r.plan.guarantee != "exactly_once":
            for name, p in r.pipelines.items():
                if p.duplicates:
                    lines.append(f"- {name}: {len(p.duplicates)} ids duplicated (at_least_once, "
                                 "allowed): " + "; ".join(p.duplicate_origins))
    return "\n".join(lines)


#: The seam's log lines when one of its guards acts (faust_seam/consumer.py, transactions.py).
_SEAM_ACTIONS = {"offset jumps re-read": re.compile(r"offset guard: .* re-reading"),
                 "stale outputs dropped": re.compile(r"dropped an output of "),
                 "commits held back (writer running)": re.compile(r"not committing the trans"),
                 "open transactions aborted at a rebalance":
                     re.compile(r"aborting the open transaction ")}

#: A downstream guard's log lines (agents/downstream.py): a pause each worker applies, and a
#: call let go without its permits when the flow stopped.
GUARD_PAUSE = re.compile(r"downstream \S+: slowed down for ")
GUARD_OVERDRAFT = "goes on without its permits"

#: The seam's account of a table recovery that gets no record (faust_seam/recovery_watch.py).
_RECOVERY_STUCK = re.compile(r"recovery of .*? no record after .*")

#: What every client logs while the broker is down: not worth a line in the report.
_OUTAGE_NOISE = re.compile(r"Unable connect to node|Unable to update metadata|NodeNotReadyError"
                           r"|Connect call failed|KafkaConnectionError")


def read_worker_log(result: ChaosResult, worker: str, text: str) -> None:
    """Add what one worker's log says to ``result``: a recovery waiting, its errors, the
    seam's guards acting."""
    stuck = Counter(m.group(0)[:600] for m in _RECOVERY_STUCK.finditer(text))
    if stuck:
        result.log_errors[worker + " (recovery waiting)"] = stuck.most_common(4)
    errors = Counter(_normalized(line) for line in text.splitlines()
                     if ("[ERROR]" in line or "[CRITICAL]" in line)
                     and not _OUTAGE_NOISE.search(line))
    if errors:
        result.log_errors[worker] = errors.most_common(4)
    for action, pattern in _SEAM_ACTIONS.items():
        result.seam_actions[action] += len(pattern.findall(text))


def _normalized(line: str) -> str:
    """A log line without its timestamp and pid, numbers as N, cut short: to count alike ones."""
    text = re.sub(r"^\[[^]]*\] \[\d+\] ", "", line)
    return re.sub(r"\d+", "N", text)[:160]
