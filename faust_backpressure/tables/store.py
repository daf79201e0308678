"""The ``rocksdict://`` table store URL.

Faust 0.15 names its RocksDB store ``rocksdb://`` and runs it on rocksdict when python-rocksdb is
not installed (it no longer builds on current Pythons). The distribution also registers this
alias as a ``faust.stores`` entry point; registering it here too makes it work from a source tree.
"""

from __future__ import annotations

from faust.stores import STORES

ROCKSDICT_STORE = "faust.stores.rocksdb:Store"


def register_rocksdict_alias() -> None:
    STORES.aliases.setdefault("rocksdict", ROCKSDICT_STORE)
