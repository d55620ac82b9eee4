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
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast
from zoneinfo import ZoneInfo

import orjson

from engine import codec
from engine.dimensions import FIELD_OF, SESSION_ONLY_EVENTS, TOTAL
from engine.event_rows import compact_events_block, events_block
from engine.hits import VITALS, Hit

# 3: the vitals columns; 4: the hits as an encoded `events` block; 5: the rollup rows as an
# encoded `rollup_log` block; 6: the `events` block as arrays (JSONCompactEachRow). Versions 2
# (no vitals), 3 (hits as maps), 4 (rollup rows as columns) and 5 (events as objects) are
# still read.
ROLLUP_CODEC_VERSION = 6
_READABLE_VERSIONS = (2, 3, 4, 5, ROLLUP_CODEC_VERSION)
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
LOG_COLUMNS = (*ROLLUP_COLUMNS, "src_partition", "src_offset")
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


@dataclass
class RollupBatch:
    """Column-oriented rollup rows, ready for msgpack and for a ClickHouse columnar insert."""

    columns: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(self.columns["site"])


def build_rollup_rows(hits: list[Hit]) -> RollupBatch:
    """Per (site, minute): a totals row and one row per value of every dimension.

    Column at a time rather than hit at a time: a message's hits share one site and a few
    minutes, so each dimension is one pass that groups hit positions by value."""
    groups: dict[tuple[str, int], list[Hit]] = {}
    for hit in hits:
        if hit["name"] in SESSION_ONLY_EVENTS and not hit.get("vitals"):
            continue  # counts nothing and carries no samples
        key = (hit["site"], minute_of(hit["ts"]))
        group = groups.get(key)
        if group is None:
            groups[key] = [hit]
        else:
            group.append(hit)
    columns: dict[str, list[Any]] = {name: [] for name in ROLLUP_COLUMNS}
    for (site, minute), group in groups.items():
        _fold_group(columns, site, minute, utc_offset_seconds(group[0]["tz"], minute), group)
    return RollupBatch(columns)


_NO_SAMPLES: list[float] = []  # shared by every cell without samples: never mutated


def _fold_group(
    columns: dict[str, list[Any]], site: str, minute: int, tz_offset: int, group: list[Hit]
) -> None:
    counted = [hit for hit in group if hit["name"] not in SESSION_ONLY_EVENTS]
    vids = [hit["vid"] for hit in counted]
    is_pageview = [hit["name"] == "pageview" for hit in counted]
    # (vital, sample) pairs per hit position in `group`; vitals are rare, so most groups skip.
    sampled = [(hit, _samples(hit)) for hit in group if hit.get("vitals")]
    sampled = [(hit, samples) for hit, samples in sampled if samples]
    fields = cast(list[dict[str, Any]], counted)
    # Within a site's minute most dimensions have one value for every hit (one hostname, one
    # country...): such a cell's counts and hashes are the total's.
    everyone = (len(vids), sum(is_pageview), sorted(set(vids)))
    site_column, minute_column, offset_column = (
        columns["site"],
        columns["minute"],
        columns["tz_offset"],
    )
    dim_column, value_column = columns["dim"], columns["value"]
    pageviews_column, events_column = columns["pageviews"], columns["events"]
    hashes_column = columns["hashes"]
    vital_columns = [columns[vital] for vital in VITALS]

    def emit(
        dim: str, value: str, positions: list[int] | None, vitals: dict[str, list[float]]
    ) -> None:
        if positions is None or len(positions) == len(vids):
            events, pageviews, hashes = everyone
        else:
            events = len(positions)
            pageviews = sum([is_pageview[i] for i in positions])
            hashes = sorted({vids[i] for i in positions})
        site_column.append(site)
        minute_column.append(minute)
        offset_column.append(tz_offset)
        dim_column.append(dim)
        value_column.append(value)
        pageviews_column.append(pageviews)
        events_column.append(events)
        hashes_column.append(hashes)
        if vitals:
            for vital, column in zip(VITALS, vital_columns, strict=True):
                column.append(vitals.get(vital, _NO_SAMPLES))
        else:
            for column in vital_columns:
                column.append(_NO_SAMPLES)

    total_vitals: dict[str, list[float]] = {}
    for _, samples in sampled:
        for vital, sample in samples:
            total_vitals.setdefault(vital, []).append(sample)
    emit(TOTAL, "", None, total_vitals)
    for dim, field_name in _DIMENSION_FIELDS:
        positions_of: dict[str, list[int]] = {}
        for position, hit_fields in enumerate(fields):
            value = str(hit_fields.get(field_name) or "")
            positions = positions_of.get(value)
            if positions is None:
                positions_of[value] = [position]
            else:
                positions.append(position)
        vitals_of: dict[str, dict[str, list[float]]] = {}
        for hit, samples in sampled:
            value = str(cast(dict[str, Any], hit).get(field_name) or "")
            cell = vitals_of.setdefault(value, {})
            for vital, sample in samples:
                cell.setdefault(vital, []).append(sample)
        for value, positions in positions_of.items():
            emit(dim, value, positions, vitals_of.pop(value, {}))
        for value, vitals in vitals_of.items():  # cells of vitals only: nothing counted
            emit(dim, value, [], vitals)


def _samples(hit: Hit) -> list[tuple[str, float]]:
    vitals = hit.get("vitals") or {}
    return [(v, float(vitals[v])) for v in VITALS if vitals.get(v) is not None]


def log_block(rollups: RollupBatch, src_partition: int, src_offset: int) -> bytes:
    """The rows of `rollup_log` as a JSONCompactEachRow block (one array per line, LOG_COLUMNS
    in order, tagged with their source message). Encoded once by the worker: with many small
    sites a hit brings a row per dimension, and unpacking them into Python lists (a list per
    row for the hashes and one per vital) was 40% of the store writer's time."""
    count = len(rollups)
    columns = [rollups.columns[name] for name in ROLLUP_COLUMNS]
    tag = ([src_partition] * count, [src_offset] * count)
    return b"\n".join(orjson.dumps(row) for row in zip(*columns, *tag, strict=True))


@dataclass
class WorkerOutput:
    """Everything the worker derives from one hits message, for the store to write: rollup
    deltas as a ready `rollup_log` block, absolute session rows, and the hits themselves (with
    their session's visit attributes) as a ready `events` block, all tagged with the hits
    message they came from."""

    src_partition: int
    src_offset: int
    rollups: bytes  # JSONCompactEachRow rows of `rollup_log` (log_block)
    sessions: list[dict[str, Any]]
    events: bytes  # JSONCompactEachRow rows of `events` (engine/event_rows.py EVENT_COLUMNS)
    sites: list[str]  # every site the message's hits belong to

    @classmethod
    def of(
        cls,
        src_partition: int,
        src_offset: int,
        rollups: RollupBatch,
        sessions: list[dict[str, Any]],
        hits: list[Hit],
    ) -> WorkerOutput:
        return cls(
            src_partition,
            src_offset,
            log_block(rollups, src_partition, src_offset),
            sessions,
            events_block(hits, src_partition, src_offset),
            sorted({hit["site"] for hit in hits}),
        )


def encode_output(output: WorkerOutput) -> bytes:
    body = {
        "v": ROLLUP_CODEC_VERSION,
        "src": [output.src_partition, output.src_offset],
        "log": output.rollups,
        "sessions": output.sessions,
        "events": output.events,
        "sites": output.sites,
    }
    return codec.pack(body)


def decode_output(payload: bytes) -> WorkerOutput:
    body = codec.unpack(payload)
    if not isinstance(body, dict) or body.get("v") not in _READABLE_VERSIONS:
        raise ValueError(f"not a worker output message of codec version {_READABLE_VERSIONS}")
    src_partition, src_offset = (int(x) for x in body["src"])
    sessions = list(body.get("sessions") or [])
    if "log" in body:
        log = bytes(body["log"])
    else:  # versions 2 to 4 carried the rollup rows as columns
        rows: dict[str, list[Any]] = body["rows"]
        for vital in VITALS:
            # A version 2 message (written before an upgrade) has no vitals: empty per row.
            if vital not in rows:
                rows[vital] = [[] for _ in rows["site"]]
        if "events" not in body:  # versions 2 and 3 carried the hits themselves
            hits = list(body.get("hits") or [])
            return WorkerOutput.of(src_partition, src_offset, RollupBatch(rows), sessions, hits)
        log = log_block(RollupBatch(rows), src_partition, src_offset)
    events = bytes(body["events"])
    if body["v"] < 6:  # the events block as JSON objects
        events = compact_events_block(events)
    return WorkerOutput(
        src_partition, src_offset, log, sessions, events, list(body.get("sites") or [])
    )
