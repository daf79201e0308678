#!/usr/bin/env python3
"""Where a second py-spy profile spends more than a first (``--format raw`` profiles).

Run: ``python bench/pyspy_diff.py A B [--thread main|consumer|all] [--own] [--top N]``.
Per function (file and name, line numbers dropped): samples of stacks through it (inclusive)
or ending in it (``--own``) in A and in B, largest B - A first. ``main`` is the event loop's
thread (Faust's consumer thread, ``Thread._bootstrap``, left out); at 200 samples/s one sample
is 5 ms. Used for the keyed limit's profile (docs/benchmarks.md, keyed limits).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)")


def load(path: Path, thread: str, own: bool) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        consumer = "Thread._bootstrap" in stack
        if (thread == "main" and consumer) or (thread == "consumer" and not consumer):
            continue
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        for frame in ([frames[-1]] if own else set(frames)):
            counts[frame] += int(samples)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--thread", choices=("main", "consumer", "all"), default="main")
    parser.add_argument("--own", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    a, b = (load(p, args.thread, args.own) for p in (args.a, args.b))
    diff = Counter({k: b[k] - a[k] for k in a.keys() | b.keys()})
    print("| B - A | A | B | function |\n| ---: | ---: | ---: | --- |")
    for name, extra in diff.most_common(args.top):
        print(f"| {extra:+d} | {a[name]} | {b[name]} | `{name[:110]}` |")


if __name__ == "__main__":
    main()
