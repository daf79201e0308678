"""The API reference (``make docs``) covers the public API: a page per public subpackage, and
every name ``faust_backpressure`` exports linked from its index. ``mkdocs build --strict`` checks
that the links resolve; this checks that none is missing (a new export, a new subpackage)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import faust_backpressure

REPO = Path(__file__).resolve().parents[2]
API = REPO / "docs" / "api"
SUBPACKAGES = ("limiters", "tables", "wire", "agents", "control", "app", "config", "errors")


def test_each_public_subpackage_has_an_api_page_in_the_nav() -> None:
    nav = (REPO / "mkdocs.yml").read_text()
    for sub in SUBPACKAGES:
        page = API / f"{sub}.md"
        assert f"::: faust_backpressure.{sub}\n" in page.read_text(), page
        assert f"api/{sub}.md" in nav, sub


def test_every_top_level_export_is_linked_from_the_api_index() -> None:
    index = (API / "index.md").read_text()
    linked = set(re.findall(r"\]\[faust_backpressure\.(\w+)\.(\w+)\]", index))
    for name in faust_backpressure.__all__:
        if name == "__version__":
            continue
        homes = [sub for sub in SUBPACKAGES
                 if name in importlib.import_module(f"faust_backpressure.{sub}").__all__]
        assert homes, f"{name} is in no subpackage's __all__"
        assert (homes[0], name) in linked, f"docs/api/index.md does not link {name}"
