"""Code lines each commit added to or removed from the package (issue 24's size target).

One row per first-parent commit since ``BASE`` (merges count once, as the branch they bring),
tab-separated: commit, code lines added (+) or removed (-), the running total from ``BASE``,
date and subject. Code lines as ``tools/line_count.py`` counts them.
Run: ``python tools/size_history.py BASE [HEAD]``, e.g. ``41ed3b4~1`` (the issue's filing).
"""

from __future__ import annotations

import subprocess
import sys

from line_count import code_lines

PACKAGE = "faust_backpressure"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def _code_at(rev: str, path: str) -> int:
    shown = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    return code_lines(shown.stdout) if shown.returncode == 0 else 0  # absent: 0


def main(base: str, head: str = "HEAD") -> None:
    total = 0
    for rev in _git("rev-list", "--reverse", "--first-parent", f"{base}..{head}",
                    "--", PACKAGE).split():
        changed = _git("diff", "--name-only", "--no-renames", f"{rev}~1", rev, "--", PACKAGE)
        delta = sum(_code_at(rev, path) - _code_at(f"{rev}~1", path)
                    for path in changed.split() if path.endswith(".py"))
        total += delta
        when, subject = _git("log", "-1", "--format=%ad%x09%s", "--date=short", rev
                             ).strip().split("\t", 1)
        print(f"{rev[:7]}\t{delta:+d}\t{total:+d}\t{when}\t{subject}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
