"""ClickHouse sinks: rollup deltas into `rollup_log`, enriched hits into `events`.

Every row carries the (hits partition, offset) it came from. The writer skips source messages at
or below the highest offset already stored, so a replay after a crash between the insert and the
Kafka commit is neither lost nor counted twice.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from engine.hits import Hit
from engine.rollup_rows import ROLLUP_COLUMNS, RollupBatch
from engine.store.client import Store, to_datetime
from sinks.base import Sink

EVENT_TEXT_COLUMNS = (
    "name", "hostname", "page", "referrer", "source", "utm_source", "utm_medium",
    "utm_campaign", "utm_content", "utm_term", "device", "browser", "browser_version",
    "os", "os_version", "country",
)  # fmt: skip
VITALS = ("ttfb", "fcp", "lcp", "inp", "cls")
EVENT_COLUMNS = (
    "site", "ts", "vid", *EVENT_TEXT_COLUMNS, "props", "interactive",
    "revenue_amount", "revenue_currency", *VITALS, "src_partition", "src_offset",
)  # fmt: skip


class RollupLogSink(Sink[RollupBatch]):
    def __init__(self, store: Store) -> None:
        self._store = store
        self._columns: dict[str, list[Any]] = self._empty()

    @staticmethod
    def _empty() -> dict[str, list[Any]]:
        return {name: [] for name in (*ROLLUP_COLUMNS, "src_partition", "src_offset")}

    def add(self, item: RollupBatch, src_partition: int, src_offset: int) -> None:
        size = len(item)
        for name in ROLLUP_COLUMNS:
            values = item.columns[name]
            if name == "minute":
                values = [to_datetime(m) for m in values]
            self._columns[name].extend(values)
        self._columns["src_partition"].extend([src_partition] * size)
        self._columns["src_offset"].extend([src_offset] * size)

    def discard(self) -> None:
        self._columns = self._empty()

    @property
    def pending(self) -> int:
        return len(self._columns["site"])

    async def flush(self) -> int:
        rows = self.pending
        if rows:
            await self._store.insert("rollup_log", self._columns)
            self._columns = self._empty()
        return rows


def _revenue(hit: Hit) -> tuple[Decimal | None, str]:
    revenue = hit.get("revenue")
    if not revenue:
        return None, ""
    try:
        return Decimal(str(revenue["amount"])).quantize(Decimal("0.001")), str(revenue["currency"])
    except (KeyError, InvalidOperation, TypeError):
        return None, ""


class EventsSink(Sink[list[Hit]]):
    def __init__(self, store: Store) -> None:
        self._store = store
        self._columns: dict[str, list[Any]] = {name: [] for name in EVENT_COLUMNS}

    def add(self, item: list[Hit], src_partition: int, src_offset: int) -> None:
        cols = self._columns
        for hit in item:
            cols["site"].append(hit["site"])
            cols["ts"].append(to_datetime(hit["ts"]))
            cols["vid"].append(hit["vid"])
            for name in EVENT_TEXT_COLUMNS:
                cols[name].append(hit.get(name) or "")  # type: ignore[misc]
            cols["props"].append(hit.get("props") or {})
            cols["interactive"].append(1 if hit.get("interactive", True) else 0)
            amount, currency = _revenue(hit)
            cols["revenue_amount"].append(amount)
            cols["revenue_currency"].append(currency)
            vitals = hit.get("vitals") or {}
            for name in VITALS:
                value = vitals.get(name)
                cols[name].append(float(value) if value is not None else None)
            cols["src_partition"].append(src_partition)
            cols["src_offset"].append(src_offset)

    def discard(self) -> None:
        self._columns = {name: [] for name in EVENT_COLUMNS}

    @property
    def pending(self) -> int:
        return len(self._columns["site"])

    async def flush(self) -> int:
        rows = self.pending
        if rows:
            await self._store.insert("events", self._columns)
            self._columns = {name: [] for name in EVENT_COLUMNS}
        return rows
