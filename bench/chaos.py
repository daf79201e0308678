#!/usr/bin/env python3
"""The full chaos run (``make chaos``; not in CI): nothing lost through crashes and an outage.

Run: ``PYTHONPATH=. python bench/chaos.py [--seed N] [--records N] [--mode at_least_once]
[--pipeline event|batch] [--batch SIZE]``.
For each processing mode, on a broker of its own: 100,000 records, split between two pipelines
driven at once on 3 real ``faust worker`` processes under one distributed limiter (1500/s,
burst 1500): ``event`` (``process=``) IN A -> OUT A + DLQ A and ``batch`` (``process_batch=``,
batches of 100) IN B -> OUT B + DLQ B (``--pipeline`` picks one); 3 SIGKILLs at random moments
(one worker's RocksDB dir deleted before its restart) and the broker down 20 s. The scenario is
:mod:`faust_backpressure.testing.chaos`, shared with the CI test
``tests/integration/chaos/test_chaos.py``.

Prints a markdown table (a row per mode and pipeline) and writes it to
``bench/results/chaos.md``; exits 1 if a run fails
(lost ids, exactly_once duplicates, bad records without their reason, the limiter's bound
exceeded, no progress after the outage). Worker logs of a failed run are kept (path printed).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from faust_backpressure.testing.broker import LocalKafkaBroker
from faust_backpressure.testing.chaos import (
    GUARANTEES,
    PIPELINES,
    ChaosPlan,
    ChaosResult,
    Guarantee,
    format_table,
    git_commit,
    run_chaos,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "chaos.md"


async def one(plan: ChaosPlan) -> ChaosResult:
    workdir = Path(tempfile.mkdtemp(prefix=f"fbp-chaos-{plan.guarantee}-"))
    broker = LocalKafkaBroker(data_dir=workdir / "broker")
    await asyncio.to_thread(broker.start)
    try:
        result = await run_chaos(plan, broker, workdir, cwd=REPO,
                                 log=lambda line: print(line, flush=True))
    finally:
        await asyncio.to_thread(broker.stop)
    if not result.problems():
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main() -> int:
    # The scenario's own reader logs every failed reconnect while the broker is down.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=None,
                        help="picks the fault moments and workers (default: random, printed)")
    parser.add_argument("--records", type=int, default=None, help="default 100,000")
    parser.add_argument("--rate", type=float, default=None, help="limiter rate/s and burst "
                        "(default 1500)")
    parser.add_argument("--mode", choices=GUARANTEES, action="append",
                        help="one processing mode (default: both)")
    parser.add_argument("--pipeline", choices=PIPELINES, action="append",
                        help="one pipeline: event (process=) or batch (process_batch=) "
                        "(default: both at once, the records split between them)")
    parser.add_argument("--batch", type=int, default=0, metavar="SIZE",
                        help="the batch pipeline's batch size (default 100)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    modes: list[Guarantee] = args.mode or list(GUARANTEES)
    results = []
    for mode in modes:
        plan = ChaosPlan.full(mode, seed)
        if args.records is not None:
            plan = dataclasses.replace(plan, records=args.records)
        if args.rate is not None:
            plan = dataclasses.replace(plan, rate=args.rate, burst=args.rate)
        if args.pipeline:
            plan = dataclasses.replace(plan, pipelines=tuple(dict.fromkeys(args.pipeline)))
        if args.batch:
            plan = dataclasses.replace(plan, batch_size=args.batch)
        faults = ", ".join(f.describe() + f" @{f.at:.0%}" for f in plan.faults)
        print(f"== {mode}: {plan.per_pipeline} records to each of "
              f"{' + '.join(plan.pipelines)}, seed {seed}: {faults}", flush=True)
        results.append(asyncio.run(one(plan)))
        print(format_table(results[-1:]), flush=True)
        if results[-1].problems():
            print(f"(worker and broker logs kept in {results[-1].workdir})", flush=True)
    table = format_table(results)
    report = (f"# Chaos run\n\n{time.strftime('%Y-%m-%d %H:%M %Z')}, commit {git_commit(REPO)}, "
              f"seed {seed}, {platform.node()} ({platform.machine()}, "
              f"{platform.python_version()})\n\n"
              f"Command: `PYTHONPATH=. python bench/chaos.py --seed {seed}"
              + "".join(f" --mode {m}" for m in args.mode or [])
              + "".join(f" --pipeline {p}" for p in args.pipeline or [])
              + (f" --records {args.records}" if args.records is not None else "")
              + (f" --rate {args.rate:g}" if args.rate is not None else "")
              + (f" --batch {args.batch}" if args.batch else "")
              + f"`\n\n{table}\n")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)
    print(f"\n{table}\n\nwritten to {RESULTS.relative_to(REPO)}")
    return 1 if any(r.problems() for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
