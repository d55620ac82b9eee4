"""The store client's Stats API reads on a real chDB store: their ClickHouse settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import load_settings
from engine.store.client import Store


def test_stats_queries_run_on_one_thread_on_chdb_unless_told(tmp_path: Path) -> None:
    store = Store(load_settings(data_dir=tmp_path / "one"))
    store.open()
    try:
        asked = "SELECT toUInt64(getSetting('max_threads'))"
        assert store.stats_query_sync(asked) == [(1,)]
        # Only the Stats API's statements: the writer's keep ClickHouse's own choice.
        setting = "SELECT value FROM system.settings WHERE name = 'max_threads'"
        assert "auto" in str(store.query_sync(setting)[0][0])
        # Bound values still reach the statement.
        assert store.stats_query_sync("SELECT {n:UInt8} + 1", {"n": 2}) == [(3,)]
    finally:
        store.close()
    store = Store(load_settings(data_dir=tmp_path / "three", query_max_threads=3))
    store.open()
    try:
        assert store.stats_query_sync(asked) == [(3,)]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, {"max_threads": 1}),
        ({"query_max_threads": 0}, {"max_threads": 0}),  # ClickHouse's default, asked for
        ({"clickhouse_url": "http://ch.example:8123"}, {}),  # a server: its own default
        ({"clickhouse_url": "http://ch.example:8123", "query_max_threads": 4}, {"max_threads": 4}),
    ],
)
def test_query_settings(overrides: dict[str, object], expected: dict[str, int]) -> None:
    assert load_settings(**overrides).query_settings == expected
