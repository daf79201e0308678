#!/usr/bin/env python3
"""Report modules and functions of the package that are over the size limits (issue 24).

Run: ``python tools/size_check.py [ROOT] [--module-lines N] [--function-lines N]``.
Module size is its line count; function size spans its ``def`` (decorators included)
to its last line, nested functions counted on their own too. Prints one line per
offender, largest first; exit code 1 if there is any, 0 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import NamedTuple

MODULE_LINES = 450
FUNCTION_LINES = 60


class Offender(NamedTuple):
    lines: int
    where: str


def _function_sizes(tree: ast.AST, path: Path) -> list[Offender]:
    out: list[Offender] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                end = child.end_lineno or child.lineno
                name = f"{prefix}{child.name}"
                out.append(Offender(end - first + 1, f"{path}:{child.lineno} {name}()"))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def check(root: Path, module_lines: int, function_lines: int
          ) -> tuple[list[Offender], list[Offender]]:
    """The modules over ``module_lines`` and the functions over ``function_lines``."""
    modules: list[Offender] = []
    functions: list[Offender] = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        count = len(source.splitlines())
        if count > module_lines:
            modules.append(Offender(count, str(path)))
        tree = ast.parse(source, filename=str(path))
        functions.extend(f for f in _function_sizes(tree, path) if f.lines > function_lines)
    return sorted(modules, reverse=True), sorted(functions, reverse=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("root", nargs="?", default="faust_backpressure", type=Path)
    parser.add_argument("--module-lines", type=int, default=MODULE_LINES)
    parser.add_argument("--function-lines", type=int, default=FUNCTION_LINES)
    args = parser.parse_args(argv)
    modules, functions = check(args.root, args.module_lines, args.function_lines)
    print(f"modules over {args.module_lines} lines: {len(modules)}")
    for m in modules:
        print(f"  {m.lines:5d}  {m.where}")
    print(f"functions over {args.function_lines} lines: {len(functions)}")
    for f in functions:
        print(f"  {f.lines:5d}  {f.where}")
    return 1 if modules or functions else 0


if __name__ == "__main__":
    sys.exit(main())
