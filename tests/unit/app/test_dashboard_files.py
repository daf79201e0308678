"""The dashboard's files ship in the package and its history is a bounded ring buffer."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from faust_backpressure.app.dashboard import History, compact

REPO = Path(__file__).resolve().parents[3]


def test_static_files_are_package_data_and_reference_nothing_remote() -> None:
    static = resources.files("faust_backpressure.app") / "static"
    html = (static / "dashboard.html").read_text("utf-8")
    assert 'src="ui/dashboard.js"' in html and 'href="ui/dashboard.css"' in html
    for name in ("dashboard.html", "dashboard.js", "dashboard.css"):
        text = (static / name).read_text("utf-8")
        assert not re.search(r"(src|href)=\"(https?:)?//", text), name  # no CDN
    pyproject = (REPO / "pyproject.toml").read_text()
    data = re.search(r"\[tool\.setuptools\.package-data\][^\[]*?faust_backpressure = \[([^]]*)\]",
                     pyproject)  # (comment lines may stand between; tomllib is 3.11+)
    assert data and '"app/static/*"' in data.group(1)


def test_history_keeps_the_last_points_only() -> None:
    history = History(size=3)
    for i in range(5):
        history.record({"at": float(i),
                        "limiters": {"l": {"rate": 1.0, "granted": i, "denied": 0,
                                           "utilization": 0.5}},
                        "pipelines": {}, "gates": [],
                        "control": {"l": {"decided_rate": 1.0, "severity": "NORMAL",
                                          "last_sample": None}}})
    points = history.to_json()
    assert [p["at"] for p in points] == [2.0, 3.0, 4.0]
    assert points[-1]["limiters"]["l"]["granted"] == 4
    assert points[-1]["control"]["l"] == {"decided_rate": 1.0, "severity": "NORMAL",
                                          "lag": None}
    assert compact({"at": 1.0, "limiters": {}, "pipelines": {}, "gates": [],
                    "control": {}})["at"] == 1.0
