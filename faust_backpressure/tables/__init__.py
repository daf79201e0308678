"""Limiter state in changelog-backed Faust tables."""

from faust_backpressure.tables.store import register_rocksdict_alias

register_rocksdict_alias()
