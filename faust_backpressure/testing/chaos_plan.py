"""A chaos run's plan (records, workers, faults) and its result (every id accounted for, in
each pipeline's own sink and DLQ). See :mod:`faust_backpressure.testing.chaos` for the run."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["BOUND_SPANS", "GUARANTEES", "PIPELINES", "ChaosPlan", "ChaosResult", "Fault",
           "FaultReport", "Guarantee", "LostId", "PipelineResult", "topic_names"]

GUARANTEES = ("at_least_once", "exactly_once")
Guarantee = Literal["at_least_once", "exactly_once"]
#: The pipelines a run can drive: ``event`` (``process=``) and ``batch`` (``process_batch=``).
PIPELINES = ("event", "batch")


def topic_names(tag: str, pipeline: str) -> tuple[str, str, str]:
    """Source, sink and DLQ topics of ``pipeline`` in the run tagged ``tag``."""
    return (f"chaos-in-{pipeline}-{tag}", f"chaos-out-{pipeline}-{tag}",
            f"chaos-dlq-{pipeline}-{tag}")
#: Spans (seconds) over which the limiter's bound ``rate*span + burst`` is checked.
BOUND_SPANS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class Fault:
    """One injected fault (see :mod:`faust_backpressure.testing.chaos`)."""

    kind: Literal["kill", "outage"]
    at: float
    worker: int = 0
    wipe: bool = False
    seconds: float = 10.0

    def describe(self) -> str:
        if self.kind == "kill":
            return f"SIGKILL w{self.worker}" + (" + wipe" if self.wipe else "")
        return f"broker down {self.seconds:g} s"


@dataclass(frozen=True)
class ChaosPlan:
    guarantee: Guarantee
    records: int = 10_000
    partitions: int = 6
    workers: int = 3
    rate: float = 1500.0
    burst: float = 1500.0
    fail_every: int = 100
    not_json: int = 50
    max_retries: int = 2
    faults: tuple[Fault, ...] = ()
    broker_kill: bool = False
    lead_seconds: float = 2.0
    stall_timeout: float = 60.0
    recover_timeout: float = 60.0
    #: Allowed excess over ``rate*span + burst``, as a fraction of it: the timestamps are taken
    #: when ``process`` runs, a little after the gate admitted the event.
    bound_slack: float = 0.02
    seed: int = 0
    #: The pipelines driven at once (``records`` is split evenly between them).
    pipelines: tuple[str, ...] = PIPELINES
    #: The ``batch`` pipeline's batch size.
    batch_size: int = 100
    #: A control loop on the limiter in the same app (see :mod:`.chaos_app`): it must go on
    #: publishing samples after the last fault.
    control_loop: bool = True
    #: A quota'd HTTP service (:mod:`.quota_service`) at this many calls/s that the ``event``
    #: pipeline calls per record through a downstream guard (None: no guard). Below the
    #: pipeline's share of the limiter: the guard meets 429s and learns the quota.
    downstream_quota: float | None = None

    @property
    def per_pipeline(self) -> int:
        """Records fed to each pipeline's source."""
        return self.records // len(self.pipelines)

    @classmethod
    def ci(cls, guarantee: Guarantee) -> ChaosPlan:
        """6,000 records, 3 workers, 500/s (the limit, not the CPU, paces a CI machine);
        SIGKILL + restart at 25 %, broker down 8 s at 60 % (longer than the workers' request
        and session timeouts: every client sees the broker gone)."""
        return cls(guarantee, records=6_000, rate=500.0, burst=500.0, downstream_quota=150.0,
                   faults=(Fault("kill", 0.25, worker=1), Fault("outage", 0.60, seconds=8.0)))

    @classmethod
    def full(cls, guarantee: Guarantee, seed: int) -> ChaosPlan:
        """100,000 records; 3 SIGKILLs at random moments (one wipes the worker's RocksDB dir
        before its restart), the broker down 20 s at a random moment."""
        rng = random.Random(seed)
        kills = [Fault("kill", round(rng.uniform(0.08, 0.92), 3), worker=rng.randrange(3))
                 for _ in range(3)]
        wiped = rng.randrange(3)
        kills[wiped] = Fault("kill", kills[wiped].at, worker=kills[wiped].worker, wipe=True)
        outage = Fault("outage", round(rng.uniform(0.2, 0.8), 3), seconds=20.0)
        faults = tuple(sorted([*kills, outage], key=lambda f: f.at))
        return cls(guarantee, records=100_000, faults=faults, seed=seed, stall_timeout=90.0,
                   recover_timeout=90.0, downstream_quota=500.0)

    def record(self, n: int, pipeline: str = "event") -> tuple[bytes, bytes]:
        """Key (the id: ``pipeline``'s initial and ``n``) and value of its record ``n``."""
        rid = f"{pipeline[0]}{n:06d}"
        if self.is_not_json(n):
            return rid.encode(), f"<not json> {rid}".encode()
        return rid.encode(), json.dumps({"id": rid, "fail": self.is_failing(n)}).encode()

    def is_not_json(self, n: int) -> bool:
        return self.not_json > 0 and n % max(1, self.per_pipeline // self.not_json) == 3

    def is_failing(self, n: int) -> bool:
        return self.fail_every > 0 and n % self.fail_every == 7 and not self.is_not_json(n)


@dataclass
class FaultReport:
    fault: Fault
    progress: float  # fraction of ids out when injected
    injected_at: float  # wall clock
    restarted_at: float  # worker restarted / broker answering again
    worker: str = ""
    recovery: float | None = None  # restart -> first admission (kill); back -> progress (outage)

    def describe(self, started: float = 0.0) -> str:
        text = f"{self.fault.describe()} @{self.progress:.0%}"
        if started:
            text += (f" (t={self.injected_at - started:.1f} s, back "
                     f"t={self.restarted_at - started:.1f} s)")
        return text


@dataclass(frozen=True)
class LostId:
    id: str
    partition: int
    offset: int
    committed: int | None  # the group's committed offset of that partition at the end


@dataclass
class PipelineResult:
    """One pipeline's accounting: its source's ids in its sink or DLQ."""

    records_in: int = 0
    out_records: int = 0
    dlq_records: int = 0
    lost: list[LostId] = field(default_factory=list)
    #: id -> copies beyond the first, over OUT and the DLQ together.
    duplicates: dict[str, int] = field(default_factory=dict)
    #: ids of records that had to fail and are in the DLQ without their reason (or wrong stage).
    bad_without_reason: list[str] = field(default_factory=list)
    #: good records that went to the DLQ (not lost, but not in OUT either).
    misrouted: dict[str, str] = field(default_factory=dict)
    #: Where the duplicates come from: per input partition, offsets, writers, times.
    duplicate_origins: list[str] = field(default_factory=list)

    @property
    def duplicated(self) -> int:
        return sum(self.duplicates.values())

    def problems(self, guarantee: Guarantee) -> list[str]:
        """Why this pipeline does not pass (empty: it passes)."""
        out = []
        if self.lost:
            # Skipped: the group committed past them; never processed: the commit is stuck below.
            skipped = [x for x in self.lost if x.committed is not None and x.committed > x.offset]
            shown = ", ".join(f"{x.id}@p{x.partition}:{x.offset} (committed {x.committed})"
                              for x in (skipped or self.lost)[:20])
            out.append(f"{len(self.lost)} ids lost (in neither OUT nor the DLQ; "
                       f"{len(skipped)} behind the group's committed offset, "
                       f"{len(self.lost) - len(skipped)} at or after it): {shown}")
        if guarantee == "exactly_once" and self.duplicates:
            out.append(f"{len(self.duplicates)} ids duplicated in exactly_once (OUT read "
                       "committed): " + "; ".join(self.duplicate_origins))
        if self.misrouted:
            shown = "; ".join(f"{k}: {v}" for k, v in list(self.misrouted.items())[:5])
            out.append(f"{len(self.misrouted)} good records dead-lettered: {shown}")
        if self.bad_without_reason:
            out.append(f"{len(self.bad_without_reason)} bad records without their DLQ reason: "
                       f"{self.bad_without_reason[:20]}")
        return out


@dataclass
class ChaosResult:
    plan: ChaosPlan
    commit: str
    #: pipeline -> its accounting (see :class:`PipelineResult`).
    pipelines: dict[str, PipelineResult] = field(default_factory=dict)
    #: span -> (most admissions in any window of that span, the bound rate*span + burst), over
    #: every pipeline's outputs and dead letters (they share the limiter).
    bound: dict[float, tuple[int, float]] = field(default_factory=dict)
    faults: list[FaultReport] = field(default_factory=list)
    worker_exits: list[str] = field(default_factory=list)
    #: worker -> its most frequent ERROR/CRITICAL log lines (normalized) with their counts.
    log_errors: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    #: How often the seam's guards acted, over all workers' logs (see ``_SEAM_ACTIONS``).
    seam_actions: Counter[str] = field(default_factory=Counter)
    stalled: bool = False
    #: Pressure samples the control loop published after the last fault ended (None: no loop).
    samples_after_faults: int | None = None
    #: The downstream guard's account (None: no guard): the service's ``ok`` and
    #: ``rejected_429`` calls, and over the workers' logs its ``pauses`` (slow-downs) and
    #: ``overdrafts`` (calls let go without permits when the flow stopped).
    downstream: dict[str, int] | None = None
    started: float = 0.0  # wall clock when feeding began; times in the report count from it
    seconds: float = 0.0
    workdir: str = ""

    @property
    def bound_violations(self) -> list[str]:
        slack = 1.0 + self.plan.bound_slack
        return [f"{n} admitted in {span:g} s > {limit:.0f}" for span, (n, limit)
                in sorted(self.bound.items()) if n > limit * slack]

    @property
    def bound_peak(self) -> float:
        """The largest share of the bound used over any window (1.0 = exactly at it)."""
        return max((n / limit for n, limit in self.bound.values()), default=0.0)

    def run_problems(self) -> list[str]:
        """The run's own problems, shared by its pipelines (limiter, outage, stall)."""
        out = []
        if self.bound_violations:
            out.append("limiter bound exceeded: " + "; ".join(self.bound_violations))
        for report in self.faults:
            if report.fault.kind == "outage" and report.recovery is None:
                out.append(f"processing did not resume after {report.describe()}")
        if self.samples_after_faults == 0:
            out.append("the control loop published no pressure sample after the last fault")
        if self.stalled:
            out.append(f"stalled: nothing came out for {self.plan.stall_timeout:g} s and the "
                       "group's commits never reached the end of IN")
        return out

    def problems(self) -> list[str]:
        """Why the run does not pass (empty: it passes); a pipeline's are prefixed with it."""
        return [*(f"{name}: {p}" for name, r in self.pipelines.items()
                  for p in r.problems(self.plan.guarantee)), *self.run_problems()]
