"""session_hour deltas: what a batch of absolute session rows changes in the session rollup.

The worker sends absolute session versions (idempotent, see engine/sessions.py). For each
session a batch touches, the store writer subtracts the version `sessions` held before the batch
and adds the batch's newest version, per (site, UTC hour of start, dimension, value). The old
versions are read from `sessions` BEFORE the batch's own rows are inserted there, and every row
already in `sessions` is already counted in session_hour (the writer inserts session_hour
first, and each table has its own replay guard): so a ReplacingMergeTree merge can never hide
an old version that was not yet subtracted.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from typing import Any, Final

from engine.query.sql import Params, Statement
from engine.store.client import Store
from engine.store.schema import SESSION_ROLLUP, SESSION_ROLLUP_COLUMNS
from sinks.base import Sink

METRICS: Final[tuple[str, ...]] = ("visits", "bounces", "duration", "pageviews", "events")
# What a delta needs of a session row (besides the dimension columns).
_ROW_FIELDS: Final[tuple[str, ...]] = (
    "site",
    "start",
    "version",
    "is_deleted",
    "is_bounce",
    "duration",
    "pageviews",
    "events",
)
_DIM_COLUMNS: Final[tuple[str, ...]] = tuple(c for c in SESSION_ROLLUP_COLUMNS.values() if c)


def _hour(start: float) -> int:
    return int(start // 3600) * 3600


_DIMS: Final[tuple[str, ...]] = tuple(SESSION_ROLLUP_COLUMNS)
# The row columns of every dimension but the first, the total (its value is always '').
_dimension_values = operator.itemgetter(*_DIM_COLUMNS)

Cell = tuple[str, int, tuple[str, ...], tuple[int, ...]]
# Per (partition, site, hour): one {value: metrics} per dimension, in _DIMS order. Keyed by the
# value alone, a cell is found by hashing one (cached) string instead of a 5-tuple.
Cells = dict[tuple[int, str, int], list[dict[str, list[int]]]]


def _cell(row: Mapping[str, Any]) -> Cell | None:
    """(site, hour, value per dimension, metrics) of a live session row; None if deleted."""
    if row["is_deleted"]:
        return None
    bounce = 1 if row["is_bounce"] else 0
    metrics = (1, bounce, 0 if bounce else int(row["duration"]), row["pageviews"], row["events"])
    return row["site"], _hour(float(row["start"])), ("", *_dimension_values(row)), metrics


def deltas(
    old: Mapping[int, Mapping[str, Any]],
    new: Mapping[int, Mapping[str, Any]],
    watermarks: Mapping[int, int],
) -> list[dict[str, Any]]:
    """session_hour rows for replacing `old[id]` (absent: nothing stored) by `new[id]`.
    `new` rows carry src_partition; `watermarks`: highest source offset per partition of the
    batch, recorded in every row and in one marker row (site '') per partition. Cells that sum
    to nothing are left out."""
    groups: Cells = {}
    for sid, row in new.items():
        partition = int(row["src_partition"])
        stored = old.get(sid)
        if stored is not None and int(stored["version"]) > int(row["version"]):
            continue  # an older version arriving late: the stored one stays (as in FINAL)
        before = _cell(stored) if stored is not None else None
        after = _cell(row)
        if before is not None and after is not None and before[:2] == after[:2]:
            # An update in place (the common case): where a dimension keeps its value, one
            # cell takes the difference of the metrics.
            change = tuple(a - b for a, b in zip(after[3], before[3], strict=True))
            retract = tuple(-m for m in before[3])
            cells = _group(groups, partition, after[0], after[1])
            for by_value, was, now in zip(cells, before[2], after[2], strict=True):
                if was == now:
                    _add(by_value, now, change)
                else:
                    _add(by_value, was, retract)
                    _add(by_value, now, after[3])
            continue
        if before is not None:
            site, hour, values, metrics = before
            _add_all(_group(groups, partition, site, hour), values, tuple(-m for m in metrics))
        if after is not None:
            site, hour, values, metrics = after
            _add_all(_group(groups, partition, site, hour), values, metrics)
    out: list[dict[str, Any]] = []
    for (partition, site, hour), cells in groups.items():
        for dim, by_value in zip(_DIMS, cells, strict=True):
            for value, cell in by_value.items():
                if not any(cell):
                    continue
                out.append(
                    {
                        "site": site,
                        "hour": hour,
                        "dim": dim,
                        "value": value,
                        **dict(zip(METRICS, cell, strict=True)),
                        "src_partition": partition,
                        "src_offset": watermarks[partition],
                    }
                )
    for partition, offset in watermarks.items():
        out.append(
            {
                # One key per partition: merged rows keep any() of src_partition.
                "site": "",
                "hour": 0,
                "dim": "",
                "value": str(partition),
                **dict.fromkeys(METRICS, 0),
                "src_partition": partition,
                "src_offset": offset,
            }
        )
    return out


def _group(groups: Cells, partition: int, site: str, hour: int) -> list[dict[str, list[int]]]:
    key = (partition, site, hour)
    cells = groups.get(key)
    if cells is None:
        cells = groups[key] = [{} for _ in _DIMS]
    return cells


def _add(by_value: dict[str, list[int]], value: str, metrics: tuple[int, ...]) -> None:
    cell = by_value.get(value)
    if cell is None:
        by_value[value] = list(metrics)
    else:
        for i, m in enumerate(metrics):
            cell[i] += m


def _add_all(
    cells: list[dict[str, list[int]]], values: tuple[str, ...], metrics: tuple[int, ...]
) -> None:
    """Adds `metrics` to each dimension's cell of its value. Unrolled: for a new session the
    writer does this for every dimension, the largest part of its Python time."""
    m0, m1, m2, m3, m4 = metrics
    for by_value, value in zip(cells, values, strict=True):
        cell = by_value.get(value)
        if cell is None:
            by_value[value] = [m0, m1, m2, m3, m4]
        else:
            cell[0] += m0
            cell[1] += m1
            cell[2] += m2
            cell[3] += m3
            cell[4] += m4


def stored_versions_statement(rows: Iterable[Mapping[str, Any]]) -> Statement:
    """The newest stored version of each session in `rows` (looked up by site, start day and
    id: the sorting key of `sessions`)."""
    ids: set[int] = set()
    sites: set[str] = set()
    days: set[int] = set()
    for row in rows:
        ids.add(int(row["session_id"]))
        sites.add(str(row["site"]))
        days.add(int(float(row["start"]) // 86400))
    fields = ", ".join(
        ["site", "toUnixTimestamp64Milli(start) / 1000", *_ROW_FIELDS[2:], *_DIM_COLUMNS]
    )
    params = Params()
    return params.statement(
        f"SELECT session_id, argMax(tuple({fields}), (version, src_offset)) FROM sessions "
        f"WHERE site IN {params.strings(sorted(sites))} "
        f"AND toUInt32(toDate(start)) IN ({', '.join(str(d) for d in sorted(days))}) "
        f"AND session_id IN ({', '.join(str(i) for i in sorted(ids))}) "
        "GROUP BY session_id"
    )


# Ids per lookup: their text must stay well inside ClickHouse's max_query_size (256 KiB), at
# up to 21 bytes an id.
STORED_LOOKUP_IDS = 5000


def stored_versions_statements(
    rows: Iterable[Mapping[str, Any]], max_ids: int = STORED_LOOKUP_IDS
) -> list[Statement]:
    """`stored_versions_statement` for any number of rows: one statement per `max_ids`
    sessions, as a large batch holds more ids than one query's text may."""
    by_id = sorted(rows, key=lambda row: int(row["session_id"]))
    return [
        stored_versions_statement(by_id[start : start + max_ids])
        for start in range(0, len(by_id), max_ids)
    ]


def parse_stored(result: list[tuple[Any, ...]]) -> dict[int, dict[str, Any]]:
    names = ("site", "start", *_ROW_FIELDS[2:], *_DIM_COLUMNS)
    return {int(sid): dict(zip(names, values, strict=True)) for sid, values in result}


class SessionRollupSink(Sink[Any]):
    """Collects the newest version of each session of a batch; flush inserts the deltas."""

    table = SESSION_ROLLUP

    def __init__(self, store: Store) -> None:
        self._store = store
        self._new: dict[int, dict[str, Any]] = {}
        self._watermarks: dict[int, int] = {}
        # Versions `sessions` will hold before this batch's new ones: rows of messages that
        # session_hour already counted but `sessions` missed (a crash between the two inserts),
        # inserted there in this same batch.
        self._catch_up: dict[int, dict[str, Any]] = {}

    def add(self, item: list[dict[str, Any]], src_partition: int, src_offset: int) -> None:
        for row in item:
            self._new[int(row["session_id"])] = row
        self._watermarks[src_partition] = max(self._watermarks.get(src_partition, -1), src_offset)

    def counted_elsewhere(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._catch_up[int(row["session_id"])] = row

    def discard(self) -> None:
        self._new, self._watermarks, self._catch_up = {}, {}, {}

    @property
    def pending(self) -> int:
        return len(self._new)

    async def flush(self) -> int:
        if not self._watermarks:
            return 0
        old: dict[int, dict[str, Any]] = {}
        if self._new:
            for stored in stored_versions_statements(self._new.values()):
                old.update(parse_stored(await self._store.query(stored.sql, stored.params)))
            old.update((sid, row) for sid, row in self._catch_up.items() if sid in self._new)
        rows = deltas(old, self._new, self._watermarks)
        await self._store.insert_rows(SESSION_ROLLUP, rows)
        self.discard()
        return len(rows)
