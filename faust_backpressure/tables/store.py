"""The ``rocksdict://`` table store URL, and how the library declares its own tables.

Faust 0.15 names its RocksDB store ``rocksdb://`` and runs it on rocksdict when python-rocksdb is
not installed (it no longer builds on current Pythons). The distribution also registers this
alias as a ``faust.stores`` entry point; registering it here too makes it work from a source tree.
"""

from __future__ import annotations

from typing import Any

from faust.stores import STORES
from faust.types import AppT, TableT

from faust_backpressure.faust_seam import install, mark_control_topic

__all__ = ["ROCKSDICT_STORE", "TABLE_OPTIONS", "library_table", "register_rocksdict_alias",
           "table_options"]

ROCKSDICT_STORE = "faust.stores.rocksdb:Store"

MiB = 1024 * 1024
#: RocksDB options of the library's own tables (limiter ledgers, bucket levels by key, the
#: control loop's state). They hold little, but Faust sizes every partition's database for a
#: big table (64 MiB write buffers, a 2 GiB block cache), and memtables flushed only once full
#: grow a worker's memory for a long time (docs/lab-notes/app-and-tables.md).
TABLE_OPTIONS = {
    "write_buffer_size": 1 * MiB,
    "max_write_buffer_number": 2,
    "target_file_size_base": 8 * MiB,
    "block_cache_size": 4 * MiB,
    "block_cache_compressed_size": 1 * MiB,
}


def table_options() -> dict[str, int]:
    """:data:`TABLE_OPTIONS`, a fresh dict (Faust's store pops keys from the one it gets)."""
    return dict(TABLE_OPTIONS)


def library_table(app: AppT, name: str, *, replicas: int | None, **kwargs: Any) -> TableT[Any, Any]:
    """One of the library's own tables (``app.Table(name, **kwargs)``): :data:`TABLE_OPTIONS`,
    its changelog with ``replicas`` (``None``: the app's replication factor) and, being
    control state, written outside every transaction (the seam installed, the changelog
    marked: see docs/distributed.md, "exactly_once")."""
    table = app.Table(name, options=table_options(), **kwargs)
    table.changelog_topic.replicas = replicas
    install(app)
    mark_control_topic(app, table.changelog_topic.get_topic_name())
    return table


def register_rocksdict_alias() -> None:
    """Register ``rocksdict://`` as Faust's RocksDB store (done on importing the package)."""
    STORES.aliases.setdefault("rocksdict", ROCKSDICT_STORE)
