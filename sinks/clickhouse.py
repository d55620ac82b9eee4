"""ClickHouse sinks: rollup deltas into `rollup_log`, enriched hits into `events`.

Every row carries the (hits partition, offset) it came from. The writer skips source messages at
or below the highest offset already stored, so a replay after a crash between the insert and the
Kafka commit is neither lost nor counted twice.
"""

from __future__ import annotations

from typing import Any

from engine.event_rows import EVENT_COLUMNS, block_rows
from engine.rollup_rows import LOG_COLUMNS
from engine.store.client import Store
from sinks.base import Sink


class _RowSink(Sink[Any]):
    """Buffers rows shaped as the table's columns; one JSONEachRow insert per flush."""

    table: str

    def __init__(self, store: Store) -> None:
        self._store = store
        self._rows: list[dict[str, Any]] = []

    def discard(self) -> None:
        self._rows = []

    @property
    def pending(self) -> int:
        return len(self._rows)

    async def flush(self) -> int:
        rows = self._rows
        if rows:
            await self._store.insert_rows(self.table, rows)
            self._rows = []
        return len(rows)


class _BlockSink(Sink[bytes]):
    """Blocks of rows the worker already encoded as JSONCompactEachRow (`columns` in order):
    inserted as they are, one insert per flush."""

    table: str
    columns: tuple[str, ...]

    def __init__(self, store: Store) -> None:
        self._store = store
        self._blocks: list[bytes] = []
        self._rows = 0

    def add(self, item: bytes, src_partition: int, src_offset: int) -> None:
        if item:
            self._blocks.append(item)
            self._rows += block_rows(item)

    def discard(self) -> None:
        self._blocks = []
        self._rows = 0

    @property
    def pending(self) -> int:
        return self._rows

    async def flush(self) -> int:
        rows = self._rows
        if rows:
            await self._store.insert_block(
                self.table,
                b"\n".join(self._blocks),
                rows,
                fmt="JSONCompactEachRow",
                columns=self.columns,
            )
            self.discard()
        return rows


class RollupLogSink(_BlockSink):
    """`rollup_log` rows (engine/rollup_rows.py `log_block`)."""

    table = "rollup_log"
    columns = LOG_COLUMNS


class EventsSink(_BlockSink):
    """`events` rows (engine/event_rows.py `events_block`)."""

    table = "events"
    columns = EVENT_COLUMNS


class SessionsSink(_RowSink):
    """Absolute session versions; the worker already shaped them as `sessions` columns."""

    table = "sessions"

    def add(self, item: list[dict[str, Any]], src_partition: int, src_offset: int) -> None:
        self._rows.extend(item)
