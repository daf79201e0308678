"""The Python in the README and ``docs/``: every ``python`` code block compiles (top-level
``await`` allowed: blocks are fragments), every name it imports from the package exists, and
every ``bp.<method>(...)`` it calls is a method of :class:`~faust_backpressure.app.Backpressure`
that takes the keywords given.
A renamed function or option then fails here, not in a reader's hands."""

from __future__ import annotations

import ast
import importlib
import inspect
import re

import pytest

from faust_backpressure.app import Backpressure
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
_BLOCK = re.compile(r"```(?:python|py)\n(.*?)```", re.S)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in _BLOCK.finditer(text):
            line = text[:match.start()].count("\n") + 2
            found.append((f"{page.relative_to(REPO)}:{line}", match.group(1)))
    return found


BLOCKS = _blocks()


def _tree(where: str, source: str) -> ast.Module:
    tree: ast.Module = compile(source, where, "exec", flags=ast.PyCF_ONLY_AST
                               | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    return tree


def test_the_docs_have_python_blocks() -> None:
    assert len(BLOCKS) >= 10  # README, agents, keyed, downstream, batching, ...


@pytest.mark.parametrize(("where", "source"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_a_python_block_compiles_and_names_what_exists(where: str, source: str) -> None:
    tree = _tree(where, source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "faust_backpressure"):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name) or _is_submodule(module, alias.name), (
                    f"{where}: {node.module} has no {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("faust_backpressure"):
                    importlib.import_module(alias.name)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "bp"):
            method = getattr(Backpressure, node.func.attr, None)
            assert method is not None, f"{where}: Backpressure has no {node.func.attr}()"
            _takes(where, method, [k.arg for k in node.keywords if k.arg is not None])


def _takes(where: str, method: object, keywords: list[str]) -> None:
    parameters = inspect.signature(method).parameters  # type: ignore[arg-type]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    for keyword in keywords:
        assert keyword in parameters, (
            f"{where}: {getattr(method, '__name__', method)}() takes no {keyword}=")


def _is_submodule(module: object, name: str) -> bool:
    try:
        importlib.import_module(f"{getattr(module, '__name__', '')}.{name}")
    except ImportError:
        return False
    return True
