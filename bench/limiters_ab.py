"""A/B of the in-memory limiters' ``try_acquire`` between two source trees, rounds interleaved.

Run: ``python bench/limiters_ab.py OLD_TREE NEW_TREE [--rounds 7]`` (each tree a checkout or
``git archive`` of the repository). Each round times every case once in a fresh interpreter per
tree (old first in odd rounds, new first in even ones), so both see the same load; prints the
median ns per call and the new/old ratio of medians as markdown. A noisy, shared machine moves
both sides alike; bench/limiters.py is the full benchmark (peers, accuracy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CASES = {
    "TokenBucketRateLimiter": "TokenBucketRateLimiter(1e12, 1e12)",
    "LeakyBucketRateLimiter": "LeakyBucketRateLimiter(1e12, 1e12)",
    "MultiTierRateLimiter (3 token buckets)":
        "MultiTierRateLimiter([(n, 1e12, 1e12) for n in ('a', 'b', 'c')])",
}
TIMER = """
import timeit
from faust_backpressure.limiters import *
acquire = ({make}).try_acquire
print(min(timeit.repeat(acquire, number=200_000, repeat=3)) / 200_000 * 1e9)
"""


def once(tree: str, make: str) -> float:
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run([sys.executable, "-c", TIMER.format(make=make)], env=env, check=True,
                         capture_output=True, text=True, cwd=tree).stdout
    return float(out.strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        order = [("old", args.old), ("new", args.new)]
        for side, tree in order if r % 2 == 0 else order[::-1]:
            for name, make in CASES.items():
                times.setdefault((name, side), []).append(once(tree, make))
    print(f"Command: `python bench/limiters_ab.py {args.old} {args.new} "
          f"--rounds {args.rounds}`\n")
    print("| try_acquire | old ns (median, min-max) | new ns (median, min-max) | new/old |")
    print("| --- | ---: | ---: | ---: |")
    for name in CASES:
        old, new = times[name, "old"], times[name, "new"]
        print(f"| {name} | {statistics.median(old):.0f} ({min(old):.0f}-{max(old):.0f}) | "
              f"{statistics.median(new):.0f} ({min(new):.0f}-{max(new):.0f}) | "
              f"{statistics.median(new) / statistics.median(old):.2f} |")


if __name__ == "__main__":
    main()
