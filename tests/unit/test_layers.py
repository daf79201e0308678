"""Dependencies point downward: app -> control -> agents -> tables -> wire | limiters (side by
side: neither imports the other); config is read by all; ``faust_seam`` (the one package
touching Faust internals) by every layer but limiters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "faust_backpressure"
# What each layer may import from the package (besides itself).
# ``errors`` (the root exception, no imports) is below every layer.
# ``wire`` (Kafka clients, signing, record codecs, topic names) and ``limiters`` (the pure
# buckets) are both below ``tables`` and independent of each other.
ALLOWED = {
    "limiters": {"config", "errors"},
    "config": {"errors"},
    "wire": {"config", "errors", "faust_seam"},
    "tables": {"wire", "limiters", "config", "errors", "faust_seam"},
    "agents": {"tables", "wire", "limiters", "config", "errors", "faust_seam"},
    "control": {"agents", "tables", "wire", "limiters", "config", "errors", "faust_seam"},
    "app": {"control", "agents", "tables", "wire", "limiters", "config", "errors", "faust_seam"},
}
FAUST = {"faust", "mode", "aiokafka", "psutil"}
# Third-party imports a layer must not make (the pure core stays pure).
FORBIDDEN_EXTERNAL = {"limiters": FAUST}
# Pure modules inside Faust-facing layers: the control loop's policy and credit window.
PURE_MODULES = ["control/policy.py", "control/pressure.py", "control/rate_estimate.py",
                "control/credits.py"]


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


# Private attributes of our own objects that the Faust-facing layers may use across classes.
OWN_PRIVATES = {"_bp_gate"}


def _foreign_private_attributes(path: Path) -> set[str]:
    """``x._name`` where ``x`` is not ``self``/``cls`` (the seam's business for Faust objects)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            found.add(node.attr)
    return found - OWN_PRIVATES


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_import_no_faust(module: str) -> None:
    path = PACKAGE / module
    for name in _imports(path):
        parts = name.split(".")
        assert parts[0] not in FAUST, f"{module} imports {name}"
        if parts[0] == "faust_backpressure":
            assert parts[1] in {"limiters", "config", "control"}, f"{module} imports {name}"
            if parts[1] == "control":
                assert f"control/{parts[2]}.py" in PURE_MODULES, f"{module} imports {name}"


@pytest.mark.parametrize("layer", ["wire", "tables", "agents", "control", "app"])
def test_only_the_seam_touches_private_attributes(layer: str) -> None:
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        assert not _foreign_private_attributes(path), \
            f"{path.name} reaches into {sorted(_foreign_private_attributes(path))}: " \
            "move it to faust_backpressure/faust_seam/"


# In limiters/, one limiter uses another's insides only through LimiterBase's protected
# interface for a limiter made of others (see its docstring: a MultiTierRateLimiter's tiers),
# and a concurrency permit hands itself back to the limiter that issued it (one module).
PART_INTERFACE = {"_delay", "_max_permits", "_join", "_catch_up", "_fast_until", "_granted"}
LIMITER_FRIENDS = {"concurrency_limiter.py": {"_release"}}


def _limiter_base_members() -> set[str]:
    tree = ast.parse((PACKAGE / "limiters" / "base.py").read_text())
    (base,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LimiterBase"]
    names = {n.name for n in base.body if isinstance(n, ast.FunctionDef)}
    for node in base.body:
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "__slots__" and isinstance(node.value, ast.Tuple)):
            names |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
    return names


def test_limiters_use_each_other_only_through_the_part_interface() -> None:
    assert not PART_INTERFACE - _limiter_base_members(), "the interface is LimiterBase's"
    for path in sorted((PACKAGE / "limiters").rglob("*.py")):
        found = _foreign_private_attributes(path) - PART_INTERFACE
        found -= LIMITER_FRIENDS.get(path.name, set())
        assert not found, f"{path.name} reaches into {sorted(found)}: add to LimiterBase's " \
            "interface for parts (documented there) or make it public"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_modules_import_each_other_without_cycles() -> None:
    """A package importing its own children (re-exports) is not a cycle; anything else is."""
    graph = {_module(path): {name for name in _imports(path)
                             if name.startswith("faust_backpressure")}
             for path in PACKAGE.rglob("*.py")}

    def related(a: str, b: str) -> bool:
        return a.startswith(b + ".") or b.startswith(a + ".")

    def visit(module: str, path: list[str]) -> None:
        for dep in graph.get(module, ()):
            if related(module, dep):
                continue
            assert dep not in path, f"import cycle: {' -> '.join([*path, dep])}"
            visit(dep, [*path, dep])

    for module in graph:
        visit(module, [module])


# Module-level state that outlives an app: a container assigned at module level and mutated, or
# a name rebound through ``global``. Per-app state lives in the app's one context object
# (faust_seam/context.py, issue 24 item 3), reached through ``context_of(app)``: none is left
# here, and a new one fails the test below.
ALLOWED_REGISTRIES: dict[str, set[str]] = {}
_CONTAINERS = (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)
_CONTAINER_CALLS = {"dict", "list", "set", "defaultdict", "OrderedDict", "Counter", "deque",
                    "WeakKeyDictionary", "WeakValueDictionary", "WeakSet"}
_MUTATORS = {"append", "add", "update", "setdefault", "pop", "popitem", "clear", "extend",
             "remove", "discard", "insert", "appendleft", "popleft"}


def _called(node: ast.AST) -> str | None:
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)


def _module_registries(source: str) -> set[str]:
    """The module-level containers ``source`` mutates, and the names it declares ``global``."""
    tree = ast.parse(source)
    containers: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None and (
                isinstance(node.value, _CONTAINERS) or _called(node.value) in _CONTAINER_CALLS):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            containers |= {t.id for t in targets if isinstance(t, ast.Name)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            found |= {f"global {name}" for name in node.names}
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
            targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
            found |= {t.value.id for t in targets if isinstance(t, ast.Subscript)
                      and isinstance(t.value, ast.Name) and t.value.id in containers}
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in _MUTATORS and isinstance(node.func.value, ast.Name)
              and node.func.value.id in containers):
            found.add(node.func.value.id)
    return found


def test_the_registry_check_sees_mutated_module_containers_and_globals() -> None:
    source = ("SEEN = {}\nNAMES = []\nKINDS = {'a': 1}\nFLAG = False\n"
              "def f(app):\n    global FLAG\n    SEEN[app] = 1\n    NAMES.append(app)\n"
              "    return KINDS['a']\n")
    assert _module_registries(source) == {"SEEN", "NAMES", "global FLAG"}


def test_no_new_module_level_registries() -> None:
    found = {str(path.relative_to(PACKAGE)): names for path in sorted(PACKAGE.rglob("*.py"))
             if (names := _module_registries(path.read_text()))}
    new = {module: names - ALLOWED_REGISTRIES.get(module, set())
           for module, names in found.items() if names - ALLOWED_REGISTRIES.get(module, set())}
    assert not new, f"module-level state {new}: keep it in the app's context (context_of)"
    assert set(found) <= set(ALLOWED_REGISTRIES), "the allowance only shrinks"


def test_the_registry_check_still_sees_the_shape_registries_had() -> None:
    """What the package's registries looked like (a weak dictionary keyed by app, a module
    flag set through ``global``): the check must keep finding them, so its finding nothing
    in the package means there are none."""
    source = ("import weakref\n_CHANNELS: weakref.WeakKeyDictionary[object, int] = "
              "weakref.WeakKeyDictionary()\n_TAPS = weakref.WeakKeyDictionary()\n"
              "_DONE = False\n"
              "def channel(app):\n    global _DONE\n    _DONE = True\n"
              "    _TAPS.setdefault(app, {})\n    return _CHANNELS.setdefault(app, 1)\n")
    assert _module_registries(source) == {"_CHANNELS", "_TAPS", "global _DONE"}


# Views of the library's state read our own objects through their types, never by guessing an
# attribute's name (a renamed counter must fail mypy, not show as blank). The one exception: an
# object that is not ours and whose type does not declare the attribute (a Faust, aiohttp or
# aiokafka object), on a line that says so with a ``# faust:`` comment.
# Every module of app/ shows or commands our objects (the views, the CLI, the ops records).
VIEW_MODULES = sorted(str(p.relative_to(PACKAGE)) for p in (PACKAGE / "app").glob("*.py"))
_GUESSES = {"getattr", "hasattr"}
EXEMPT = "# faust:"


def _attribute_guesses(source: str) -> list[int]:
    """Lines of ``source`` calling ``getattr``/``hasattr`` without the ``# faust:`` mark."""
    lines = source.splitlines()
    return sorted(node.lineno for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in _GUESSES and EXEMPT not in lines[node.lineno - 1])


def test_the_getattr_check_sees_unmarked_guesses_only() -> None:
    source = ("a = getattr(bp, 'credit_flows', [])\n"
              "b = getattr(request, 'remote', None)  # faust: aiohttp's request\n"
              "c = hasattr(limiter, 'config')\nd = bp.getattr('x')\n")
    assert _attribute_guesses(source) == [1, 3]


@pytest.mark.parametrize("module", VIEW_MODULES)
def test_views_read_our_objects_through_their_types(module: str) -> None:
    found = _attribute_guesses((PACKAGE / module).read_text())
    assert not found, f"{module} lines {found} call getattr/hasattr: use a typed attribute " \
        f"(or, for a Faust object that has none, mark the line {EXEMPT!r} and say why)"
