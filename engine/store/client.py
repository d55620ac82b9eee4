"""The ClickHouse store: chDB in-process by default, a ClickHouse server when CLICKHOUSE_URL is set.

clickhouse-connect's chDB backend is synchronous and serialises queries, so every call runs on
one worker thread, off the event loop (STACK.md).

`query` takes the values of a statement's `{name:Type}` placeholders (engine/query/sql.py):
clickhouse-connect formats them once for either backend and sends them apart from the text, as
chDB query parameters or as the `param_<name>` fields of a ClickHouse server's HTTP request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import clickhouse_connect
import orjson
from prometheus_client import Histogram

from config import Settings
from engine.errors import ComponentError
from engine.store.schema import (
    COARSE_LEVELS,
    ROLLUP_LEVELS,
    cluster_client_settings,
    ddl,
    regranulate_sql,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

INSERT_SECONDS = Histogram(
    "rollup_store_insert_seconds",
    "Duration of one ClickHouse insert, by table (failed inserts included)",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
INSERT_ROWS = Histogram(
    "rollup_store_insert_rows",
    "Rows per ClickHouse insert, by table",
    ["table"],
    buckets=(1, 10, 100, 1000, 10_000, 100_000),
)
# ClickHouse commits an insert part by part, splitting at ~1M rows by default: a crash between
# parts would leave a batch half-stored under a replay guard that says "all of it". One block,
# one part, all or nothing.
_ONE_BLOCK = 1 << 50
ONE_PART_INSERT = {
    "max_insert_block_size": _ONE_BLOCK,
    "min_insert_block_size_rows": _ONE_BLOCK,
    "min_insert_block_size_bytes": _ONE_BLOCK,
}


def connect(settings: Settings) -> Any:
    try:
        if settings.clickhouse_url:
            extra = cluster_client_settings() if settings.clickhouse_cluster else {}
            return clickhouse_connect.get_client(dsn=settings.clickhouse_url, settings=extra)
        settings.chdb_path.parent.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=f"chdb://{settings.chdb_path}")
    except Exception as exc:
        hint = ""
        if "lock" in str(exc).lower():
            hint = " (another process holds this chDB directory: only one may open it)"
        raise ComponentError("clickhouse", f"{exc}{hint}".splitlines()[0][:300]) from exc


class Store:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: Any = None
        self._query_settings = settings.query_settings
        # chDB serialises anyway; one thread keeps inserts ordered.
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="clickhouse")

    def open(self) -> None:
        self._client = connect(self._settings)

    def migrate(self) -> None:
        for statement in ddl(
            self._settings.events_retention_days, self._settings.clickhouse_cluster
        ):
            self._client.command(statement)
        if self._settings.embedded_clickhouse:
            # This process owns the store (one process per chDB directory) and its writer has
            # not started: a level made with larger granules can be rebuilt safely.
            for table in (ROLLUP_LEVELS["day"], *COARSE_LEVELS):
                engine = self.query_sync(
                    "SELECT engine_full FROM system.tables WHERE database = currentDatabase() "
                    f"AND name = '{table}'"
                )
                for statement in regranulate_sql(table, str(engine[0][0])):
                    log.info("rebuilding %s with smaller granules: %s", table, statement[:60])
                    self._client.command(statement)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._executor.shutdown(wait=True)

    # Synchronous API (CLI, tests)
    def query_sync(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> list[tuple[Any, ...]]:
        """`params`: the values of the `{name:Type}` placeholders in `sql`; `settings`:
        ClickHouse settings of this statement only."""
        # A dict: clickhouse-connect binds server-side only from a dict (it formats other
        # mappings into the text itself).
        result = self._client.query(
            sql, parameters=dict(params) if params else None, settings=settings
        )
        return [tuple(row) for row in result.result_rows]

    def stats_query_sync(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """A Stats API statement, with the settings of dashboard reads (query_settings)."""
        return self.query_sync(sql, params, self._query_settings)

    def insert_rows_sync(self, table: str, rows: list[dict[str, Any]]) -> None:
        """JSONEachRow insert: with chDB it is an order of magnitude faster than the columnar
        path for Map and Array columns."""
        if rows:
            self.insert_block_sync(table, b"\n".join(orjson.dumps(row) for row in rows), len(rows))

    def insert_block_sync(
        self,
        table: str,
        block: bytes,
        rows: int,
        fmt: str = "JSONEachRow",
        columns: Sequence[str] | None = None,
    ) -> None:
        """A block of `rows` rows in `fmt` (JSONEachRow; JSONCompactEachRow with `columns`),
        inserted as one part."""
        started = time.perf_counter()
        try:
            self._client.raw_insert(
                table,
                column_names=list(columns) if columns else None,
                insert_block=block,
                fmt=fmt,
                settings=ONE_PART_INSERT,
            )
        finally:
            INSERT_SECONDS.labels(table).observe(time.perf_counter() - started)
        INSERT_ROWS.labels(table).observe(rows)

    def command_sync(self, sql: str) -> None:
        self._client.command(sql)

    def ping_sync(self) -> bool:
        try:
            self._client.query("SELECT 1")
        except Exception:
            return False
        return True

    # Async API: the same calls, off the event loop.
    async def query(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        return await self._run(partial(self.query_sync, sql, params))

    async def stats_query(
        self, sql: str, params: Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        return await self._run(partial(self.stats_query_sync, sql, params))

    async def insert_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        await self._run(partial(self.insert_rows_sync, table, rows))

    async def insert_block(
        self,
        table: str,
        block: bytes,
        rows: int,
        fmt: str = "JSONEachRow",
        columns: Sequence[str] | None = None,
    ) -> None:
        await self._run(partial(self.insert_block_sync, table, block, rows, fmt, columns))

    async def command(self, sql: str) -> None:
        await self._run(partial(self.command_sync, sql))

    async def ping(self) -> bool:
        return await self._run(self.ping_sync)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def applied_offsets_sync(self, table: str) -> dict[int, int]:
        """Highest source offset already stored per hits partition (see writer.py)."""
        rows = self.query_sync(
            f"SELECT src_partition, max(src_offset) FROM {table} GROUP BY src_partition"
        )
        return {int(p): int(o) for p, o in rows}

    async def applied_offsets(self, table: str) -> dict[int, int]:
        return await self._run(partial(self.applied_offsets_sync, table))
