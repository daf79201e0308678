"""The library's own tables open RocksDB sized for what they hold, not Faust's big defaults."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import faust
import pytest
from faust.stores.rocksdb import RocksDBOptions

from faust_backpressure.tables.service import limiter_channel
from faust_backpressure.tables.store import (
    TABLE_OPTIONS,
    register_rocksdict_alias,
    table_options,
)


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


def _open_table_files() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed since the listing
            count += os.readlink(f"/proc/self/fd/{fd}").endswith(".sst")
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts fds through /proc")
def test_open_table_files_rise_with_flushes_and_fall_with_compaction(tmp_path: Path) -> None:
    # The soak's only growing fds were RocksDB table files (bench/results/soak-45min.md): each
    # flush of a small memtable opens one. Compaction of level 0 (4 files by default) closes
    # them, so a database holds a few at most: a sawtooth, not a leak.
    db = RocksDBOptions(**table_options()).open(tmp_path / "sawtooth.db")
    before = _open_table_files()
    counts = []
    for flush in range(24):
        for i in range(500):
            db[b"key-%d" % ((flush * 500 + i) % 1500)] = bytes(64)
        db.flush()
        counts.append(_open_table_files() - before)
    # compaction runs in the background: give it time to catch up with the last flushes
    deadline = time.monotonic() + 10.0
    while _open_table_files() - before > 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    settled = _open_table_files() - before
    db.close()
    print("open table files after each flush:", counts, "then", settled)
    assert min(counts[4:]) < max(counts[:12]), counts  # they fell while flushing went on
    assert settled <= 8, (counts, settled)  # below 4 in level 0, plus a few in level 1
