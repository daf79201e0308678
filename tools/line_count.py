"""Lines of a tree (issue 24): the wc-style total, and code lines.

Code lines leave out blank lines, comments and docstrings, so that cutting prose does
not count as making the package smaller.
Run: ``python tools/line_count.py [DIR ...]`` (default: the package).
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

_NOT_CODE = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
             tokenize.DEDENT, tokenize.ENDMARKER}


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def code_lines(source: str) -> int:
    """Lines holding a token that is neither a comment nor part of a docstring."""
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in _NOT_CODE:
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - _docstring_lines(ast.parse(source)))


def main(roots: list[str]) -> None:
    for root in roots or ["faust_backpressure"]:
        total = code = 0
        for path in sorted(Path(root).rglob("*.py")):
            source = path.read_text()
            total += source.count("\n")
            code += code_lines(source)
        print(f"{root}: {total} lines, {code} code lines")


if __name__ == "__main__":
    main(sys.argv[1:])
