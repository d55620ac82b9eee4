"""Day resolution: the rows that answer a rollup_day read over local dates [first, end).

Whole local quarters, months and weeks of the range are read from their levels (one row per
bucket instead of one per day, the same sketches merged), month spans (engine/store/spans.py)
cover the ends of a range across months once the writer has built them, and the rest is read
from rollup_day. Pure SQL text, no I/O.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Final, Literal, TypeAlias

from engine.dimensions import TOTAL
from engine.hits import VITALS
from engine.query.dates import (
    COARSE_DAY_LEVELS,
    DayLevel,
    Granularity,
    MonthSpan,
    day_cover,
    month_span_cover,
)
from engine.query.sql import Params
from engine.store import spans
from engine.store.schema import LEVEL_COLUMNS, ROLLUP_LEVELS

SpanKind: TypeAlias = MonthSpan | Literal["year_prefix"]


def source(
    site: str,
    first: date,
    end: date,
    today: date,
    closed: date,
    gran: Granularity | None,
    conds: list[str],
    params: Params,
) -> tuple[str, tuple[str, ...]] | None:
    """The FROM of a day-resolution read of `site` over [first, end), `conds` applied inside,
    and the scalar subqueries its statement's WITH needs; None when plain rollup_day days
    answer it (no coarser level or span fits). `today` is the site's, `closed` the day before
    which local days are over everywhere (engine/store/day_totals.closed_before)."""
    levels = _COARSE_FOR.get(gran, ())
    # A month span lies in one month: it fits monthly buckets too, but not weeks or days; a
    # year prefix fits no time buckets.
    pieces: list[tuple[SpanKind | None, date, date]] = []
    if gran in (None, "month"):
        pieces += month_span_cover(first, end, closed)
    if gran is None:
        pieces = year_prefix_cover(pieces or [(None, first, end)], closed)
    if pieces:
        read, built = _guarded(pieces, today, levels, site, params)
        return _levels_source(read, conds, params), (built,)
    cover = closed_day_cover(first, end, today, levels)
    if any(level != "day" for level, _, _ in cover):
        return _levels_source([(*span, None) for span in cover], conds, params), ()
    return None


def year_prefix_cover(
    pieces: list[tuple[SpanKind | None, date, date]], closed: date
) -> list[tuple[SpanKind | None, date, date]]:
    """`pieces` with year prefixes (engine/store/spans.py) in their stretches of kind None
    where one replaces two months or more: from the 1st of January to a month that ended
    before `closed`, latest year first. Empty when no span applies."""
    out: list[tuple[SpanKind | None, date, date]] = []
    for kind, first, end in pieces:
        if kind is not None:
            out.append((kind, first, end))
            continue
        stretch: list[tuple[SpanKind | None, date, date]] = []
        cursor = end
        prefix_end = min(end, closed).replace(day=1)
        while prefix_end > first:
            year = (prefix_end - timedelta(days=1)).replace(month=1, day=1)
            if year < first:
                break
            # January alone is the month level's row; the year before may still be whole.
            if _months(year, prefix_end) >= 2:
                if prefix_end < cursor:
                    stretch.append((None, prefix_end, cursor))
                stretch.append(("year_prefix", year, prefix_end))
                cursor = year
            prefix_end = year
        if cursor > first:
            stretch.append((None, first, cursor))
        out += reversed(stretch)
    return out if any(kind is not None for kind, _, _ in out) else []


def _months(first: date, end: date) -> int:
    return (end.year - first.year) * 12 + end.month - first.month


def closed_day_cover(
    first: date, end: date, today: date, levels: tuple[DayLevel, ...]
) -> list[tuple[DayLevel, date, date]]:
    """day_cover of [first, end), its coarse levels only for spans that ended before the
    site's today: the store writer feeds those levels every few seconds rather than every
    batch, and live hits only ever land on today."""
    closed = min(max(first, today), end)
    cover = day_cover(first, closed, levels)
    if closed < end:
        if cover and cover[-1][0] == "day":
            cover[-1] = ("day", cover[-1][1], end)
        else:
            cover.append(("day", closed, end))
    return cover


# Which levels above the day may answer a day-resolution query, by its time buckets: a week,
# month or quarter row lies in one bucket of these (a week may straddle two months, a quarter
# spans three).
_COARSE_FOR: Final[dict[Granularity | None, tuple[DayLevel, ...]]] = {
    None: COARSE_DAY_LEVELS,
    "week": ("week",),
    "month": ("month",),
}
_ROLLUP_READ: Final[str] = ", ".join(
    ("site", "dim", "value", "pageviews", "events", "visitors", *VITALS)
)


# A piece of a day-resolution range: a level (or a month span, see engine/store/spans.py)
# over [first, end), read only when the condition holds (None: always).
_Piece = tuple[DayLevel | SpanKind, date, date, str | None]


def _guarded(
    pieces: list[tuple[SpanKind | None, date, date]],
    today: date,
    levels: tuple[DayLevel, ...],
    site: str,
    params: Params,
) -> tuple[list[_Piece], str]:
    """The pieces of month_span_cover as levels to read: each month span only when the writer
    has built it (its site's totals row is there), else the days it covers; and the scalar
    subquery listing the spans built, for the statement's WITH."""
    wanted = [(kind, first, end) for kind, first, end in pieces if kind is not None]
    keys = " OR ".join(f"({_span_is(kind, a, b, params)})" for kind, a, b in wanted)
    built = (
        f"(SELECT groupArray((kind, day)) FROM {spans.TABLE} FINAL"
        f" WHERE site = {params.string(site)} AND dim = {params.string(TOTAL)}"
        f" AND is_deleted = 0 AND ({keys})) AS {_SPANS_BUILT}"
    )
    out: list[_Piece] = []
    for kind, first, end in pieces:
        if kind is None:
            out += [(*span, None) for span in closed_day_cover(first, end, today, levels)]
            continue
        is_built = f"has({_SPANS_BUILT}, {_span_key(kind, first, end, params)})"
        out.append((kind, first, end, is_built))
        if kind == "year_prefix":
            # Whole months, closed: quarters and months.
            cover = closed_day_cover(first, end, today, levels)
            out += [(*span, f"NOT {is_built}") for span in cover]
            continue
        # By day, not by week: rarely read, and a branch of its own costs even when it reads
        # nothing, while the days share the branch of the range's other days.
        out.append(("day", first, end, f"NOT {is_built}"))
    return out, built


_SPANS_BUILT: Final[str] = "spans_built"


def _span_day(kind: SpanKind, first: date, end: date) -> date:
    """The day a span's row carries: a prefix's last day, a suffix's first, a year prefix's
    last month's first."""
    if kind == "year_prefix":
        return (end - timedelta(days=1)).replace(day=1)
    return end - timedelta(days=1) if kind == "prefix" else first


def _span_kind(kind: SpanKind) -> int:
    return {"prefix": spans.PREFIX, "suffix": spans.SUFFIX, "year_prefix": spans.YEAR_PREFIX}[kind]


def _span_is(kind: SpanKind, first: date, end: date, params: Params) -> str:
    day = params.date(_span_day(kind, first, end))
    return f"kind = {_span_kind(kind)} AND day = {day}"


def _span_key(kind: SpanKind, first: date, end: date, params: Params) -> str:
    return f"(toUInt8({_span_kind(kind)}), toDate({params.date(_span_day(kind, first, end))}))"


def _levels_source(pieces: list[_Piece], conds: list[str], params: Params) -> str:
    """The rows of rollup_day over local dates, reading whole quarters, months and weeks from
    their levels (each row's bucket start as `day`): one row per quarter, month or week instead
    of one per day, the same sketches merged (a union of the same visitor sets); and month
    spans, one row for a stretch of a month (its last or first day as `day`)."""
    branches: list[str] = []
    # One SELECT per table: each branch of a UNION costs about 10 ms in chDB, whatever it reads.
    keys = [
        f"({_span_is(kind, first, end, params)} AND {when})"
        for kind, first, end, when in pieces
        if kind in ("prefix", "suffix", "year_prefix")
    ]
    if keys:
        branches.append(
            f"SELECT day, {_ROLLUP_READ} FROM {spans.TABLE} FINAL"
            f" WHERE {' AND '.join(conds)} AND is_deleted = 0 AND ({' OR '.join(keys)})"
        )
    for level in (*COARSE_DAY_LEVELS, "day"):
        table = ROLLUP_LEVELS[level]
        col = LEVEL_COLUMNS[table]
        ranges = [
            f"({col} >= {params.date(a)} AND {col} < {params.date(b)}"
            + (f" AND {when})" if when else ")")
            for kind, a, b, when in pieces
            if kind == level
        ]
        if ranges:
            branches.append(
                f"SELECT {col} AS day, {_ROLLUP_READ} FROM {table}"
                f" WHERE {' AND '.join(conds)} AND ({' OR '.join(ranges)})"
            )
    return "(" + " UNION ALL ".join(branches) + ")"
