"""ClickHouse sinks: rollup deltas into `rollup_log`, enriched hits into `events`.

Every row carries the (hits partition, offset) it came from. The writer skips source messages at
or below the highest offset already stored, so a replay after a crash between the insert and the
Kafka commit is neither lost nor counted twice.
"""

from __future__ import annotations

from typing import Any

from engine.event_rows import block_rows
from engine.rollup_rows import ROLLUP_COLUMNS, RollupBatch
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


_LOG_COLUMNS = (*ROLLUP_COLUMNS, "src_partition", "src_offset")


class RollupLogSink(Sink[RollupBatch]):
    """The worker's columns as they came, one columnar insert per flush: no per-row objects
    (building and encoding a dict per row took a quarter of the store writer's time)."""

    table = "rollup_log"

    def __init__(self, store: Store) -> None:
        self._store = store
        self._columns: dict[str, list[Any]] = {name: [] for name in _LOG_COLUMNS}
        self._rows = 0

    def add(self, item: RollupBatch, src_partition: int, src_offset: int) -> None:
        count = len(item.columns["site"])
        for name in ROLLUP_COLUMNS:
            values = item.columns[name]
            if len(values) != count:
                raise ValueError(f"rollup column {name!r} has {len(values)} values, not {count}")
            self._columns[name].extend(values)
        self._columns["src_partition"].extend([src_partition] * count)
        self._columns["src_offset"].extend([src_offset] * count)
        self._rows += count

    def discard(self) -> None:
        self._columns = {name: [] for name in _LOG_COLUMNS}
        self._rows = 0

    @property
    def pending(self) -> int:
        return self._rows

    async def flush(self) -> int:
        rows = self._rows
        if rows:
            await self._store.insert_columns(self.table, self._columns, rows)
            self.discard()
        return rows


class EventsSink(Sink[bytes]):
    """Blocks of `events` rows the worker already encoded (engine/event_rows.py): inserted as
    they are, one insert per flush."""

    table = "events"

    def __init__(self, store: Store) -> None:
        self._store = store
        self._blocks: list[bytes] = []

    def add(self, item: bytes, src_partition: int, src_offset: int) -> None:
        if item:
            self._blocks.append(item)

    def discard(self) -> None:
        self._blocks = []

    @property
    def pending(self) -> int:
        return len(self._blocks)

    async def flush(self) -> int:
        blocks = self._blocks
        if not blocks:
            return 0
        block = b"\n".join(blocks)
        rows = block_rows(block)
        await self._store.insert_block(self.table, block, rows)
        self._blocks = []
        return rows


class SessionsSink(_RowSink):
    """Absolute session versions; the worker already shaped them as `sessions` columns."""

    table = "sessions"

    def add(self, item: list[dict[str, Any]], src_partition: int, src_offset: int) -> None:
        self._rows.extend(item)
