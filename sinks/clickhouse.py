"""ClickHouse sinks: rollup deltas into `rollup_log`, enriched hits into `events`.

Every row carries the (hits partition, offset) it came from. The writer skips source messages at
or below the highest offset already stored, so a replay after a crash between the insert and the
Kafka commit is neither lost nor counted twice.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any

from engine.hits import VITALS, Hit
from engine.rollup_rows import ROLLUP_COLUMNS, RollupBatch
from engine.sessions import VISIT_ATTRIBUTES
from engine.store.client import Store
from sinks.base import Sink

EVENT_TEXT_COLUMNS = ("name", "hostname", "page", *VISIT_ATTRIBUTES)


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


class RollupLogSink(_RowSink):
    table = "rollup_log"

    def add(self, item: RollupBatch, src_partition: int, src_offset: int) -> None:
        columns = [item.columns[name] for name in ROLLUP_COLUMNS]
        for values in zip(*columns, strict=True):
            row = dict(zip(ROLLUP_COLUMNS, values, strict=True))
            row["src_partition"] = src_partition
            row["src_offset"] = src_offset
            self._rows.append(row)


def _revenue(hit: Hit) -> tuple[str | None, str]:
    revenue = hit.get("revenue")
    if not revenue:
        return None, ""
    try:
        amount = Decimal(str(revenue["amount"])).quantize(Decimal("0.001"))
        return str(amount), str(revenue["currency"])
    except (KeyError, InvalidOperation, TypeError):
        return None, ""


def event_row(hit: Hit, src_partition: int, src_offset: int) -> dict[str, Any]:
    fields: dict[str, Any] = hit  # type: ignore[assignment]
    row: dict[str, Any] = {
        "site": hit["site"],
        # DateTime64(3) takes epoch seconds with a fraction in JSONEachRow.
        "ts": math.floor(hit["ts"] * 1000) / 1000,  # as minute_of() buckets it
        "vid": hit["vid"],
        "props": hit.get("props") or {},
        "interactive": 1 if hit.get("interactive", True) else 0,
        "src_partition": src_partition,
        "src_offset": src_offset,
    }
    for name in EVENT_TEXT_COLUMNS:
        row[name] = fields.get(name) or ""
    row["revenue_amount"], row["revenue_currency"] = _revenue(hit)
    vitals = hit.get("vitals") or {}
    for name in VITALS:
        value = vitals.get(name)
        row[name] = float(value) if value is not None else None
    return row


class EventsSink(_RowSink):
    table = "events"

    def add(self, item: list[Hit], src_partition: int, src_offset: int) -> None:
        self._rows.extend(event_row(hit, src_partition, src_offset) for hit in item)


class SessionsSink(_RowSink):
    """Absolute session versions; the worker already shaped them as `sessions` columns."""

    table = "sessions"

    def add(self, item: list[dict[str, Any]], src_partition: int, src_offset: int) -> None:
        self._rows.extend(item)
