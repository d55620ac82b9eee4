"""Pure: fold a batch of hits into rollup deltas, one row per (site, minute, dimension, value).

Each row carries its counts and the visitor hashes behind them; ClickHouse turns the hashes
into mergeable unique-count states, so a day's visitors are not the sum of its minutes'.
Likewise each row carries the web vitals samples of its hits (one list per vital), which
ClickHouse folds into mergeable quantile sketches. Vitals ride on session-only events
(`engagement`), which count nothing: such a hit adds its vitals to its cells and nothing else,
so a cell may hold vitals only (events = 0).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, cast
from zoneinfo import ZoneInfo

import msgpack

from engine.dimensions import FIELD_OF, SESSION_ONLY_EVENTS, TOTAL
from engine.hits import VITALS, Hit

# 3: the vitals columns. Version 2 messages (no vitals) are still read.
ROLLUP_CODEC_VERSION = 3
_READABLE_VERSIONS = (2, ROLLUP_CODEC_VERSION)
ROLLUP_COLUMNS = (
    "site",
    "minute",
    "tz_offset",
    "dim",
    "value",
    "pageviews",
    "events",
    "hashes",
    *VITALS,
)
_DIMENSION_FIELDS = tuple(FIELD_OF.items())


def minute_of(ts: float) -> int:
    return int(ts // 60) * 60


@lru_cache(maxsize=4096)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):
        return ZoneInfo("UTC")


@lru_cache(maxsize=65536)
def utc_offset_seconds(tz: str, minute: int) -> int:
    offset = dt.datetime.fromtimestamp(minute, _zone(tz)).utcoffset()
    return int(offset.total_seconds()) if offset else 0


@dataclass(slots=True)
class _Cell:
    pageviews: int = 0
    events: int = 0
    hashes: set[int] = field(default_factory=set)
    vitals: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class RollupBatch:
    """Column-oriented rollup rows, ready for msgpack and for a ClickHouse columnar insert."""

    columns: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(self.columns["site"])


def build_rollup_rows(hits: list[Hit]) -> RollupBatch:
    cells: dict[tuple[str, int, str, str], _Cell] = {}
    tz_of: dict[tuple[str, int], int] = {}
    for hit in hits:
        name = hit["name"]
        vitals = hit.get("vitals") or {}
        samples = [(v, float(vitals[v])) for v in VITALS if vitals.get(v) is not None]
        counted = name not in SESSION_ONLY_EVENTS
        if not counted and not samples:
            continue
        site = hit["site"]
        minute = minute_of(hit["ts"])
        if (site, minute) not in tz_of:
            tz_of[(site, minute)] = utc_offset_seconds(hit["tz"], minute)
        is_pageview = name == "pageview"
        vid = hit["vid"]
        hit_fields = cast(dict[str, Any], hit)
        keys = [(site, minute, TOTAL, "")]
        keys.extend(
            (site, minute, dim, str(hit_fields.get(field_name) or ""))
            for dim, field_name in _DIMENSION_FIELDS
        )
        for key in keys:
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = _Cell()
            if counted:
                cell.events += 1
                cell.pageviews += is_pageview
                cell.hashes.add(vid)
            for vital, sample in samples:
                cell.vitals.setdefault(vital, []).append(sample)
    columns: dict[str, list[Any]] = {name: [] for name in ROLLUP_COLUMNS}
    for (site, minute, dim, value), cell in cells.items():
        columns["site"].append(site)
        columns["minute"].append(minute)
        columns["tz_offset"].append(tz_of[(site, minute)])
        columns["dim"].append(dim)
        columns["value"].append(value)
        columns["pageviews"].append(cell.pageviews)
        columns["events"].append(cell.events)
        columns["hashes"].append(sorted(cell.hashes))
        for vital in VITALS:
            columns[vital].append(cell.vitals.get(vital, []))
    return RollupBatch(columns)


@dataclass
class WorkerOutput:
    """Everything the worker derives from one hits message, for the store to write: rollup
    deltas, absolute session rows, and the hits themselves (with their session's visit
    attributes), all tagged with the hits message they came from."""

    src_partition: int
    src_offset: int
    rollups: RollupBatch
    sessions: list[dict[str, Any]]
    hits: list[Hit]


def encode_output(output: WorkerOutput) -> bytes:
    body = {
        "v": ROLLUP_CODEC_VERSION,
        "src": [output.src_partition, output.src_offset],
        "rows": output.rollups.columns,
        "sessions": output.sessions,
        "hits": output.hits,
    }
    return cast(bytes, msgpack.packb(body, use_bin_type=True))


def decode_output(payload: bytes) -> WorkerOutput:
    body = msgpack.unpackb(payload, raw=False)
    if not isinstance(body, dict) or body.get("v") not in _READABLE_VERSIONS:
        raise ValueError(f"not a worker output message of codec version {_READABLE_VERSIONS}")
    src_partition, src_offset = body["src"]
    rows: dict[str, list[Any]] = body["rows"]
    for vital in VITALS:
        # A version 2 message (written before an upgrade) has no vitals: empty per row.
        if vital not in rows:
            rows[vital] = [[] for _ in rows["site"]]
    return WorkerOutput(
        int(src_partition),
        int(src_offset),
        RollupBatch(rows),
        list(body.get("sessions") or []),
        list(body.get("hits") or []),
    )
