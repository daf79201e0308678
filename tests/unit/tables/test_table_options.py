"""The library's own tables open RocksDB sized for what they hold, not Faust's big defaults."""

from __future__ import annotations

from pathlib import Path

import faust

from faust_backpressure.tables.service import limiter_channel
from faust_backpressure.tables.store import TABLE_OPTIONS, register_rocksdict_alias


def test_the_limiter_table_opens_rocksdb_with_small_buffers_and_cache(tmp_path: Path) -> None:
    register_rocksdict_alias()
    app = faust.App("table-options", broker="kafka://127.0.0.1:9", store="rocksdict://",
                    datadir=str(tmp_path))
    channel = limiter_channel(app)
    store = channel.table.data  # the store is made here; no database is opened yet
    options = store.rocksdb_options
    assert options.write_buffer_size == TABLE_OPTIONS["write_buffer_size"] == 1024 * 1024
    assert options.max_write_buffer_number == 2
    assert options.block_cache_size == TABLE_OPTIONS["block_cache_size"]
    # Faust's store pops keys from the dict it gets: each table has its own copy
    assert channel.table.options is not TABLE_OPTIONS
    assert TABLE_OPTIONS["write_buffer_size"] == 1024 * 1024
    db = options.open(tmp_path / "probe.db")  # rocksdict accepts them
    db[b"k"] = b"v"
    assert db[b"k"] == b"v"
    db.close()
