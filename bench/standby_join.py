"""How often a joining worker's standby store misses changelog records (docs/reliability.md).

Each join: a source of ``--keys`` distinct keys (4 partitions) is stored by one ``faust worker``
(``tests/integration/apps/standby.py``: one table, one standby replica); once its changelog
holds every key, a second worker joins and catches up the first one's partitions as standbys.
When it has, it is stopped gracefully (Faust then applies what its recovery still buffers) and
its RocksDB store of each standby partition is compared with the changelog. Joins alternate
between plain Faust and Faust with faust-backpressure's seam (``Backpressure(app)``); nothing
widens the window (unlike the test).

    PYTHONPATH=. python bench/standby_join.py --joins 5 --keys 20000 [--output NAME]

Uses ``$KAFKA_BOOTSTRAP_SERVERS`` or starts its own broker; writes
``bench/results/<NAME>.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from faust_backpressure.testing.broker import kafka_bootstrap
from faust_backpressure.testing.kafka_io import create_topics, produce, read_to_end
from faust_backpressure.testing.workers import FaustWorker
from tests.integration.seam.standby_check import (
    APP,
    caught_up,
    changelog_keys,
    read_report,
    stored_keys,
)

REPO = Path(__file__).resolve().parent.parent


async def one_join(bootstrap: str, keys: int, seam: bool, workdir: Path) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    app_id, source = f"standby-join-{tag}", f"standby-join-src-{tag}"
    changelog = f"{app_id}-values-changelog"
    await create_topics(bootstrap, {source: 4})
    await produce(bootstrap, source, ((f"k{i}".encode(), b"1") for i in range(keys)))
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "FBP_APP_ID": app_id, "FBP_SOURCE": source,
           "FBP_GUARANTEE": "at_least_once", "FBP_SEAM": "1" if seam else "0"}
    first = FaustWorker(APP, name="first", cwd=REPO, data_dir=workdir / f"{tag}-a",
                        env={**env, "FBP_REPORT": str(workdir / f"{tag}-a.json")}).start()
    second = FaustWorker(APP, name="second", cwd=REPO, data_dir=workdir / f"{tag}-b",
                         env={**env, "FBP_REPORT": str(workdir / f"{tag}-b.json")})
    try:
        first.wait_ready(90)
        deadline = time.monotonic() + 300
        while len(await read_to_end(bootstrap, changelog)) < keys:
            if time.monotonic() > deadline:
                raise TimeoutError("the first worker did not store every key")
            await asyncio.sleep(0.5)
        second.start().wait_ready(90)
        deadline = time.monotonic() + 180
        while not caught_up(report := read_report(workdir / f"{tag}-b.json")):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the second worker's standbys did not catch up: {report}")
            await asyncio.sleep(0.5)
        second.stop()
        written = await changelog_keys(bootstrap, changelog)
        missing = {p: len(written[p] - stored_keys(second, p)) for p in report["standbys"]}
        return {"seam": seam, "missing": missing, "records": sum(
            len(written[p]) for p in report["standbys"])}
    finally:
        for worker in (second, first):
            worker.kill()
            worker.cleanup()


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


async def all_joins(bootstrap: str, joins: int, keys: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(joins):
            for seam in ((False, True) if i % 2 == 0 else (True, False)):
                row = await one_join(bootstrap, keys, seam, Path(tmp))
                row["load"] = _load()
                print(row, flush=True)
                rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--joins", type=int, default=5, help="joins per way (alternating)")
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--output", default="standby_join")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=REPO).stdout.strip()
    started, load_before = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), _load()
    with kafka_bootstrap() as bootstrap:
        rows = asyncio.run(all_joins(bootstrap, args.joins, args.keys))
    lines = [
        f"Command: `PYTHONPATH=. python bench/standby_join.py --joins {args.joins} "
        f"--keys {args.keys} --output {args.output}`",
        "",
        f"Commit {commit}; {started}; load (1/5/15 min) before {load_before}, after {_load()}.",
        "",
        "Each join: the first worker stores every key, a second joins; once its standbys "
        "caught up it is stopped gracefully and its store of each standby partition is "
        "compared with the changelog (at_least_once, nothing widens the window).",
        "",
        "| join | way | standby records | missing per standby partition | load (1 min) |",
        "| ---: | --- | ---: | --- | --- |",
    ]
    for n, row in enumerate(rows, 1):
        way = "Faust + faust-backpressure's seam" if row["seam"] else "plain Faust"
        lines.append(f"| {n} | {way} | {row['records']:,} | {row['missing']} | "
                     f"{row['load'].split(' / ')[0]} |")
    for seam in (False, True):
        mine = [r for r in rows if r["seam"] == seam]
        lossy = [r for r in mine if any(r["missing"].values())]
        way = "with the seam" if seam else "plain Faust"
        lines += ["", f"{way}: {len(lossy)} of {len(mine)} joins missed records "
                  f"({sum(sum(r['missing'].values()) for r in mine):,} in all)."]
    out = REPO / "bench" / "results" / f"{args.output}.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
