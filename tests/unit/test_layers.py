"""Dependencies point downward: app -> agents -> tables -> limiters; config is read by all."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "faust_backpressure"
# What each layer may import from the package (besides itself).
ALLOWED = {
    "limiters": {"config"},
    "config": set(),
    "tables": {"limiters", "config"},
    "agents": {"tables", "limiters", "config"},
    "app": {"agents", "tables", "limiters", "config"},
}
# Third-party imports a layer must not make (the pure core stays pure).
FORBIDDEN_EXTERNAL = {"limiters": {"faust", "mode", "aiokafka"}}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_point_downward(layer: str) -> None:
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "faust_backpressure" and len(parts) > 1 and parts[1] != layer:
                assert parts[1] in ALLOWED[layer], f"{path.name} imports {name}"
            assert parts[0] not in FORBIDDEN_EXTERNAL.get(layer, set()), \
                f"{path.name} imports {name}"
