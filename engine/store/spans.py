"""Month spans: per site, dim and value, one row covering a stretch of a calendar month.

A 30-day ranking by visitors merged the unique-count sketches of every row that covers the
range: with days, weeks and months that was about 12 sketches per value (a few days, three
weeks, a few more days), and merging full-precision sketches is most of such a query's time.
`rollup_span` holds, for each closed local day d, two unions of rollup_day rows:

- prefix (kind 0): the days from the first of d's month to d, once d is closed;
- suffix (kind 1): the days from d to the last of d's month, once that whole month is closed.

So any range crossing a month boundary is the first month's suffix, whole months, and the last
month's prefix (plus the days not closed yet): two or three sketches per value.

- year prefix (kind 2, `day` the first of a month m): the months from January of m's year to
  m, once m is closed. Without them the last 12 months read seven sketches a value (a suffix,
  a month, three quarters, a month, a prefix), and a dashboard's six queries took 3.15x their
  30-day time; with them four sketches, 1.75x (loadtest/query_bench.py, growth_days).

The rule that keeps it exact, as for day_totals (engine/store/day_totals.py), whose closing
rule, retraction and recovery this table follows: a row that is not deleted equals the merge of
rollup_day's rows of its days. Before rollup_day takes data for a closed day, the writer
retracts the spans of that site and month (a newer version with is_deleted), and builds them
again after; the planner reads a span only when its site's totals row for it is present, and
the days themselves otherwise (engine/query/planner.py).

SQL text only, no I/O: the writer runs it (engine/store/writer.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta
from typing import Final

from engine.hits import VITALS
from engine.store.schema import ONE_PART_SELECT, VITALS_SKETCH_PARAMS, quote

TABLE: Final[str] = "rollup_span"
PREFIX: Final[int] = 0
SUFFIX: Final[int] = 1
YEAR_PREFIX: Final[int] = 2

# Each rollup_day row, the (kind, span day) pairs whose span contains its day.
_TARGETS = """arrayConcat(
    arrayMap(i -> (toUInt8(0), day + i),
             range(toUInt32(dateDiff('day', day, toLastDayOfMonth(day)) + 1))),
    arrayMap(i -> (toUInt8(1), toStartOfMonth(day) + i),
             range(toUInt32(dateDiff('day', toStartOfMonth(day), day) + 1))))"""


def build_sql(
    version: int,
    *,
    before: date,
    since: date | None = None,
    site_months: set[tuple[str, date]] | None = None,
) -> str:
    """Build the spans that lie in days before `before` (the closed ones): with `since`, only
    the prefixes of days from `since` and the suffixes of months ending from `since` (what
    closed since the last call); with `site_months`, every span of those sites' months (first
    of month). Rows already there are replaced (a newer version)."""
    p = VITALS_SKETCH_PARAMS
    vitals = "".join(f", quantileDDMergeState{p}({v})" for v in VITALS)
    rows = [f"day < {quote(before.isoformat())}"]
    spans = [
        f"(t.1 = 0 AND t.2 < {quote(before.isoformat())}"
        f" OR t.1 = 1 AND toLastDayOfMonth(t.2) < {quote(before.isoformat())})"
    ]
    if since is not None:
        rows.append(f"day >= {quote(since.replace(day=1).isoformat())}")
        spans.append(
            f"(t.1 = 0 AND t.2 >= {quote(since.isoformat())}"
            f" OR t.1 = 1 AND toLastDayOfMonth(t.2) >= {quote(since.isoformat())})"
        )
    if site_months is not None:
        rows.append(f"(site, toStartOfMonth(day)) IN ({_pairs(site_months)})")
    return f"""
        INSERT INTO {TABLE}
            (site, kind, day, dim, value, pageviews, events, visitors, {", ".join(VITALS)},
             version, is_deleted)
        SELECT site, t.1 AS span_kind, t.2 AS span_day, dim, value, sum(pageviews), sum(events),
               uniqCombined64MergeState(visitors){vitals}, {int(version)}, 0
        FROM rollup_day ARRAY JOIN {_TARGETS} AS t
        WHERE {" AND ".join(rows)} AND {" AND ".join(spans)}
        GROUP BY site, span_kind, span_day, dim, value
        {ONE_PART_SELECT}
    """


def year_build_sql(
    version: int,
    *,
    before: date,
    since: date | None = None,
    site_years: set[tuple[str, date]] | None = None,
) -> str:
    """Build the year prefixes of the months that ended before `before`: with `since`, only
    those of months ending from `since`; with `site_years`, every one of those sites' years
    (January 1st). Rows already there are replaced (a newer version)."""
    p = VITALS_SKETCH_PARAMS
    vitals = "".join(f", quantileDDMergeState{p}({v})" for v in VITALS)
    rows = [f"day < {quote(before.isoformat())}"]
    spans = [f"toLastDayOfMonth(span_month) < {quote(before.isoformat())}"]
    if since is not None:
        rows.append(f"day >= {quote(since.replace(month=1, day=1).isoformat())}")
        spans.append(f"toLastDayOfMonth(span_month) >= {quote(since.isoformat())}")
    if site_years is not None:
        rows.append(f"(site, toStartOfYear(day)) IN ({_pairs(site_years)})")
    # Each rollup_day row counts in the prefixes of its month and of every later month of its year.
    targets = "arrayMap(i -> addMonths(toStartOfMonth(day), i), range(toUInt32(13 - toMonth(day))))"
    return f"""
        INSERT INTO {TABLE}
            (site, kind, day, dim, value, pageviews, events, visitors, {", ".join(VITALS)},
             version, is_deleted)
        SELECT site, toUInt8({YEAR_PREFIX}), span_month, dim, value, sum(pageviews), sum(events),
               uniqCombined64MergeState(visitors){vitals}, {int(version)}, 0
        FROM rollup_day ARRAY JOIN {targets} AS span_month
        WHERE {" AND ".join(rows)} AND {" AND ".join(spans)}
        GROUP BY site, span_month, dim, value
        {ONE_PART_SELECT}
    """


def year_build_by_month_sql(version: int, months: Iterable[date], before: date) -> list[str]:
    """The year prefixes of these months (firsts of month) that ended before `before`, one
    statement a month: one for a whole store would hold every prefix's sketches at once."""
    return [
        year_build_sql(version, since=month, before=_next_month(month))
        for month in sorted(months)
        if _next_month(month) <= before
    ]


def _next_month(month: date) -> date:
    return (month.replace(day=1) + timedelta(days=31)).replace(day=1)


def retract_sql(site_months: set[tuple[str, date]], version: int) -> str:
    """Retract every span of these sites' months (first of month), and every year prefix of
    their years: a newer version, deleted."""
    years = years_of(site_months)
    return f"""
        INSERT INTO {TABLE} (site, kind, day, dim, value, version, is_deleted)
        SELECT DISTINCT site, kind, day, dim, value, {int(version)}, 1
        FROM {TABLE}
        WHERE kind != {YEAR_PREFIX} AND (site, toStartOfMonth(day)) IN ({_pairs(site_months)})
           OR kind = {YEAR_PREFIX} AND (site, toStartOfYear(day)) IN ({_pairs(years)})
        {ONE_PART_SELECT}
    """


def months_of(pairs: list[tuple[str, date]]) -> set[tuple[str, date]]:
    """The (site, first of month) of (site, day) pairs."""
    return {(site, day.replace(day=1)) for site, day in pairs}


def years_of(site_months: set[tuple[str, date]]) -> set[tuple[str, date]]:
    """The (site, January 1st) of (site, first of month) pairs."""
    return {(site, month.replace(month=1, day=1)) for site, month in site_months}


# The months that hold data, to build a store's year prefixes a month at a time.
MONTHS_SQL: Final[str] = "SELECT DISTINCT toStartOfMonth(day) AS m FROM rollup_day ORDER BY m"
# Year prefixes held: none in a store from before them.
YEAR_STATE_SQL: Final[str] = f"SELECT count() FROM {TABLE} WHERE kind = {YEAR_PREFIX}"
# Rows and the newest version (versions continue day_totals' sequence).
STATE_SQL: Final[str] = f"SELECT count(), max(version) FROM {TABLE}"


def _pairs(site_days: set[tuple[str, date]]) -> str:
    return ", ".join(
        f"({quote(site)}, toDate({quote(day.isoformat())}))" for site, day in sorted(site_days)
    )
