"""Finalized day totals: each site's visitors, pageviews and events per closed local day.

A day's unique count in rollup_day is a sketch: a year of visitors by day decodes 365 of them
(each a set of thousands of hashes for a busy site). Once a day is over it hardly changes, so
the writer merges its sketches once into a number in `day_totals`, and the planner reads the
numbers there and merges sketches only for the days not in it (engine/query/planner.py).

The rule that keeps it exact: a `day_totals` row (not deleted) equals the merge of rollup_day's
totals rows of its site and day. A day closes for every timezone 13 hours after it ends in UTC
(UTC-12 ends last; an hour of grace), and only closed days are finalized. Data can still reach
a closed day (an import, a worker catching up on a backlog): before rollup_day takes a stretch
of the log, the writer retracts the finalized rows it touches (a newer version with
is_deleted), then finalizes them again after. A crash in between leaves them retracted, which
is correct (queries merge the sketches); the writer finalizes retracted rows again at start.

SQL text only, no I/O: the writer runs it (engine/store/writer.py).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Final

from engine.dimensions import TOTAL
from engine.store.schema import log_ranges_sql, quote

TABLE: Final[str] = "day_totals"
# A local day is over everywhere once it has ended at UTC-12, 12 hours after it ends in UTC.
CLOSE_AFTER: Final[timedelta] = timedelta(hours=12 + 1)


def closed_before(now: datetime) -> date:
    """Local days before this one are over in every timezone at `now` (UTC)."""
    return (now.astimezone(UTC) - CLOSE_AFTER).date()


def finalize_sql(
    version: int,
    *,
    since: date | None = None,
    before: date | None = None,
    sites: set[str] | None = None,
    days: set[date] | None = None,
) -> str:
    """Finalize rollup_day's totals of the days in [since, before) and/or of `sites` x `days`
    (a superset of what needs it is harmless: the same numbers again, at a newer version)."""
    conds = [f"dim = {quote(TOTAL)}"]
    if since is not None:
        conds.append(f"day >= {quote(since.isoformat())}")
    if before is not None:
        conds.append(f"day < {quote(before.isoformat())}")
    if sites is not None:
        conds.append(f"site IN ({_list(sorted(sites))})")
    if days is not None:
        conds.append(f"day IN ({_list(sorted(d.isoformat() for d in days))})")
    return f"""
        INSERT INTO {TABLE} (site, day, visitors, pageviews, events, version, is_deleted)
        SELECT site, day, uniqCombined64Merge(visitors), sum(pageviews), sum(events),
               {int(version)}, 0
        FROM rollup_day
        WHERE {" AND ".join(conds)}
        GROUP BY site, day
    """


def touched_sql(ranges: dict[int, tuple[int, int]], before: date) -> str:
    """The (site, local day) pairs before `before` that a stretch of the log adds to."""
    return f"""
        SELECT DISTINCT site, toDate(minute + tz_offset) AS local_day
        FROM rollup_log
        WHERE ({log_ranges_sql(ranges)}) AND dim = {quote(TOTAL)} AND local_day < {
        quote(before.isoformat())
    }
    """


def retract_sql(pairs: list[tuple[str, date]], version: int) -> str:
    """Retract the finalized rows of `pairs`: a newer version, deleted."""
    rows = ", ".join(f"({quote(site)}, {quote(day.isoformat())})" for site, day in pairs)
    return f"""
        INSERT INTO {TABLE} (site, day, visitors, pageviews, events, version, is_deleted)
        SELECT p.1, toDate(p.2), 0, 0, 0, {int(version)}, 1
        FROM (SELECT arrayJoin([{rows}]) AS p)
    """


RETRACTED_SQL: Final[str] = f"""
    SELECT site, day FROM {TABLE}
    GROUP BY site, day
    HAVING argMax(is_deleted, version) = 1
"""
# Rows, the newest day (finalizing resumes after it) and the newest version.
STATE_SQL: Final[str] = f"SELECT count(), max(day), max(version) FROM {TABLE}"


def _list(values: list[str]) -> str:
    return ", ".join(quote(v) for v in values)
