"""Pure: enriched hits as rows of the `events` table, encoded once as a JSONEachRow block.

The worker encodes each hits message's block and the store writer inserts blocks as they are,
so no process decodes and re-encodes every hit on its way to ClickHouse.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from engine.hits import VITALS, Hit
from engine.sessions import VISIT_ATTRIBUTES

EVENT_TEXT_COLUMNS = ("name", "hostname", "page", *VISIT_ATTRIBUTES)


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


def events_block(hits: list[Hit], src_partition: int, src_offset: int) -> bytes:
    """One JSON object per line; JSON escapes every newline inside strings, so the block's
    rows are its lines."""
    return b"\n".join(orjson.dumps(event_row(hit, src_partition, src_offset)) for hit in hits)


def block_rows(block: bytes) -> int:
    return block.count(b"\n") + 1 if block else 0
