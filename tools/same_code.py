"""Check that a change to the package touched only docstrings and comments.

    python tools/same_code.py [BASE] [PATHS...]     # BASE: a commit, default HEAD

Compares each module's AST with docstrings removed (comments are not in the AST) between
BASE and the working tree; prints the modules whose code differs, exit 1 if any.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


def code_of(source: str) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def main(argv: list[str]) -> int:
    base = argv[0] if argv else "HEAD"
    paths = argv[1:] or ["faust_backpressure"]
    files = [p for root in paths for p in sorted(Path(root).rglob("*.py"))]
    changed = 0
    for path in files:
        try:
            old = subprocess.run(["git", "show", f"{base}:{path}"], capture_output=True,
                                 text=True, check=True).stdout
        except subprocess.CalledProcessError:
            print(f"new module: {path}")
            changed += 1
            continue
        if code_of(old) != code_of(path.read_text()):
            print(f"code changed: {path}")
            changed += 1
    print(f"{len(files)} modules, {changed} with code changes")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
