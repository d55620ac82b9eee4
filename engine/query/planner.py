"""The planner: pick the cheapest table that answers a query exactly, and write its SQL.

Metrics come in two families. Event metrics (visitors, pageviews, events, percentage) read the
events table or a rollup; session metrics (visits, bounce_rate, visit_duration,
views_per_visit) read the sessions table (see engine/query/sessions.py for its rules).

A rollup table holds, per (site, time bucket, dim, value), the counts of the hits whose
dimension `dim` had `value` (dim '' is the per-site total). It answers a query exactly when
at most one non-time dimension appears across dimensions and filters (then every counted hit
lies in exactly one of that dimension's rows) and the range and time buckets fit its level:

- rollup_day: start and end are local day boundaries; time buckets day, week or month. This is
  the day resolution: whole local quarters, months and weeks inside the range are read from
  rollup_quarter, rollup_month and rollup_week (when the time buckets allow), the rest from
  rollup_day; without time buckets or by month, the ends of a range across months are month
  spans (rollup_span, engine/store/spans.py) when the writer has built them.
- rollup_hour: start and end are whole UTC hours; no minute buckets; with time buckets, the
  site's UTC offset is a whole number of hours over the range (or local buckets would split
  a UTC hour).
- rollup_minute: start and end are whole UTC minutes.
- events: everything else (event:props:*, two or more dimensions, ranges to the second).

Preference: day > hour > minute > events.

Ranking a rollup's event dimension by visitors merges the sketches of the likely top groups
only and proves the page, or falls back to the full ranking (Narrowed, QueryPlan.recheck).

Which tables a query reads (`QueryPlan.table`, echoed as `meta.table`):
- event metrics only: the cheapest event table, e.g. "rollup_day".
- session metrics only: "sessions".
- visit:entry_page or visit:exit_page anywhere (dimensions or filters): only the sessions table
  knows them, so every metric is read from it, "sessions": visitors are the distinct visitors
  of the counted sessions, pageviews and events the sums of the sessions' counts (a session
  counts under each row it falls in), percentage the share of those visitors.
- both families otherwise: one statement per family, joined on the dimension values in render
  (a row missing from one family gets 0 for its metrics; order, pagination and total_rows are
  applied to the joined rows in Python). The table reads "<event table>+sessions", e.g.
  "rollup_day+sessions"; `table=` forces one of these names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

from engine.dimensions import (
    FIELD_OF,
    SESSION_ONLY_EVENTS,
    TIME_DIMENSIONS,
    TOTAL,
    empty_label,
)
from engine.errors import QueryError
from engine.query import day_levels, sessions, sql
from engine.query.dates import (
    DateRange,
    Granularity,
    granularity,
    is_aligned,
    is_day_boundary,
    offsets_are_multiples,
    resolve_date_range,
    time_labels,
    zone,
)
from engine.query.filters import ColumnOf, compile_filters
from engine.query.model import (
    EVENT_METRICS,
    SESSION_DIMENSIONS,
    SESSION_METRICS,
    VITAL_METRICS,
    Direction,
    Query,
    filter_dimensions,
    is_event_dimension,
    is_props,
    parse_query,
    prop_key,
)
from engine.query.render import render
from engine.query.sql import Params, Statement
from engine.store.day_totals import closed_before
from engine.store.schema import (
    SESSION_ROLLUP,
    SESSION_ROLLUP_COLUMNS,
    VITALS_SKETCH_PARAMS,
)

TABLES: Final[tuple[str, ...]] = (
    "rollup_day",
    "rollup_hour",
    "rollup_minute",
    "events",
    sessions.TABLE,
)
MIXED_SUFFIX: Final[str] = "+" + sessions.TABLE
# Internal metric columns of an event-table statement, in SELECT order when needed.
BASE_METRICS: Final[tuple[str, ...]] = ("visitors", "pageviews", "events")
_EVENT_AGGREGATES: Final[dict[str, str]] = {
    "visitors": "uniqCombined64(vid)",
    "pageviews": "countIf(name = 'pageview')",
    "events": "count()",
}
_ROLLUP_AGGREGATES: Final[dict[str, str]] = {
    "visitors": "uniqCombined64Merge(visitors)",
    "pageviews": "sum(pageviews)",
    "events": "sum(events)",
}
_EVENT_ORDER: Final[dict[str, str]] = {
    "visitors": "m_visitors",
    "percentage": "m_visitors",
    "pageviews": "m_pageviews",
    "events": "m_events",
    **{m: f"m_{m}" for m in VITAL_METRICS},
}
# p75 of each vital: a sketch over the raw samples, or the merge of the rollups' sketch states
# (same parameters as the states' type). A group without samples gives NaN or NULL: null.
_EVENT_VITALS: Final[dict[str, str]] = {
    m: f"quantileDD{VITALS_SKETCH_PARAMS}({col})" for m, col in VITAL_METRICS.items()
}
_ROLLUP_VITALS: Final[dict[str, str]] = {
    m: f"quantileDDMerge{VITALS_SKETCH_PARAMS}({col})" for m, col in VITAL_METRICS.items()
}
_TIME_COLUMN: Final[dict[str, str]] = {
    "rollup_minute": "minute",
    "rollup_hour": "hour",
    "events": "ts",
    sessions.TABLE: "start",
    SESSION_ROLLUP: "hour",
}
# Session metrics from session_hour: sums of per-hour sums.
_SESSION_ROLLUP_AGGREGATES: Final[dict[str, str]] = {
    c: f"sum({c})" for c in ("pageviews", "events", "visits", "bounces", "duration")
}
# Metrics whose columns cost little to aggregate (sums), unlike sketch merges.
CHEAP_COLUMNS: Final[tuple[str, ...]] = ("pageviews", "events")
# Ranking by visitors: the groups with the most counted events past the page's end whose
# sketches are merged too, and how far a sketch's estimate may exceed the true count
# (num/den; see Narrowed).
CANDIDATES: Final[int] = 5
SKETCH_SLACK: Final[tuple[int, int]] = (9, 8)
_SQL_FORMAT: Final[dict[str, str]] = {"minute": "%Y-%m-%d %H:%i:00", "hour": "%Y-%m-%d %H:00:00"}


@dataclass(frozen=True)
class Part:
    """The statements of one table: the rows, and optionally a visitors total and a row count."""

    table: str
    metrics: tuple[str, ...]  # the query's metrics this part answers
    columns: tuple[str, ...]  # internal metric columns after the dimension columns
    main_index: int  # statement giving the rows
    total_index: int | None = None  # statement giving the visitors total (percentage)
    count_index: int | None = None  # statement giving total_rows


@dataclass(frozen=True)
class Narrowed:
    """A statement ranking by visitors that merged the sketches of some groups only: those
    with the largest bound (counted events, an exact upper bound of a group's visitors), as
    many as the page's end plus CANDIDATES. Its rows end with `bound_outside`, the largest
    bound of the groups left out (0: none). Every group left out has at most that many
    visitors, and an estimate of at most SKETCH_SLACK times that (the sketch is exact below
    4,096 values; above, SKETCH_SLACK is over 40 standard errors of uniqCombined64). So when
    the page is full and its last row's visitors exceed that, no group left out could be on
    the page, and the page is exactly the one of all groups; otherwise `full` (the statement
    merging every group) is run instead (QueryPlan.recheck)."""

    index: int  # in QueryPlan.statements
    full: Statement
    limit: int
    visitors_at: int  # the visitors column in a row


@dataclass(frozen=True)
class QueryPlan:
    site_id: str
    table: str  # the table(s) read, as `meta.table` shows them
    statements: list[Statement]  # text written by the code, request values bound
    query: Query
    date_range: DateRange
    granularity: Granularity | None  # of the time dimension, if any
    order_by: list[tuple[str, Direction]]  # resolved, as echoed
    candidates: tuple[str, ...]  # every table (name) that could answer, cheapest first
    parts: tuple[Part, ...]  # one per table read
    merged: bool = False  # two parts: join, order and paginate their rows in render
    labels: list[str] | None = None  # include.time_labels
    narrowed: tuple[Narrowed, ...] = ()

    def recheck(self, rows_per_statement: list[list[tuple[Any, ...]]]) -> dict[int, Statement]:
        """After running `statements`: the statements to run again (index -> statement) and
        put their rows in place of the first ones before `render`. Takes the proof column
        off the rows of narrowed statements (in place)."""
        again: dict[int, Statement] = {}
        num, den = SKETCH_SLACK
        for n in self.narrowed:
            rows = rows_per_statement[n.index]
            outside = int(rows[0][-1]) if rows else 0
            rows_per_statement[n.index] = [tuple(r[:-1]) for r in rows]
            full_page = len(rows) == n.limit
            if outside and not (full_page and num * outside < den * rows[-1][n.visitors_at]):
                again[n.index] = n.full
        return again

    @property
    def columns(self) -> tuple[str, ...]:
        """The metric columns of the first part's rows (after the dimension columns)."""
        return self.parts[0].columns

    @property
    def total_index(self) -> int | None:
        return next((p.total_index for p in self.parts if p.total_index is not None), None)

    @property
    def count_index(self) -> int | None:
        return next((p.count_index for p in self.parts if p.count_index is not None), None)

    def render(self, rows_per_statement: list[list[tuple[Any, ...]]]) -> dict[str, Any]:
        """The response, from the rows of each statement (in `statements` order)."""
        return render(self, rows_per_statement)


def plan_query(
    body: Mapping[str, Any],
    *,
    timezone: str,
    now: datetime,
    first_day: date | None,
    table: str | None = None,
    session_table: str | None = None,
) -> QueryPlan:
    """Validate `body` and plan it. `table` forces a table (tests); it must be able to answer.
    `session_table` forces where session metrics are read: "sessions" or "session_hour"."""
    query = parse_query(body)
    tz = zone(timezone)
    dr = resolve_date_range(query.date_range, tz, now, first_day)
    time_dim = query.time_dimension
    gran = granularity(time_dim, dr) if time_dim else None

    event_metrics = tuple(m for m in query.metrics if m in EVENT_METRICS)
    session_metrics = tuple(m for m in query.metrics if m in SESSION_METRICS)
    needs_sessions = any(
        d in SESSION_DIMENSIONS for d in (*query.dimensions, *filter_dimensions(query.filters))
    )
    if needs_sessions or not event_metrics:
        candidates = [sessions.TABLE]
    elif not session_metrics:
        candidates = candidate_tables(query, dr, gran)
    else:
        candidates = [t + MIXED_SUFFIX for t in candidate_tables(query, dr, gran)]
    if table is None:
        table = candidates[0]
    elif table not in candidates:
        raise ValueError(f"table {table!r} cannot answer this query (candidates: {candidates})")

    order = _resolve_order(query)
    merged = table.endswith(MIXED_SUFFIX)
    paginate = not merged
    statements: list[Statement] = []
    parts: list[Part] = []
    narrowed: list[Narrowed] = []
    if table == sessions.TABLE:
        parts.append(
            _session_part(
                query, dr, gran, query.metrics, order, statements, paginate, session_table
            )
        )
    else:
        event_table = table.removesuffix(MIXED_SUFFIX)
        select = _event_select(query, dr, gran, event_table, now)
        wanted = set(event_metrics) | ({"visitors"} if "percentage" in event_metrics else set())
        columns = tuple(m for m in (*BASE_METRICS, *VITAL_METRICS) if m in wanted)
        main_index = len(statements)
        statements.append(select.main(columns, order, paginate=paginate))
        by_visitors = select.by_visitors_narrowed(columns, order) if paginate else None
        if by_visitors is not None:
            visitors_at = len(query.dimensions) + columns.index("visitors")
            narrowed.append(
                Narrowed(main_index, statements[main_index], int(query.limit), visitors_at)
            )
            statements[main_index] = by_visitors
        total_index = count_index = None
        if "percentage" in event_metrics:
            total_index = len(statements)
            statements.append(select.aggregate_only("visitors"))
        if paginate and query.total_rows and query.dimensions:
            count_index = len(statements)
            statements.append(select.count())
        parts.append(
            Part(event_table, event_metrics, columns, main_index, total_index, count_index)
        )
        if merged:
            parts.append(
                _session_part(
                    query, dr, gran, session_metrics, order, statements, paginate, session_table
                )
            )
    return QueryPlan(
        site_id=query.site_id,
        table=table,
        statements=statements,
        query=query,
        date_range=dr,
        granularity=gran,
        order_by=order,
        candidates=tuple(candidates),
        parts=tuple(parts),
        merged=merged,
        labels=time_labels(dr, gran) if query.time_labels and gran else None,
        narrowed=tuple(narrowed),
    )


def _session_part(
    query: Query,
    dr: DateRange,
    gran: Granularity | None,
    metrics: tuple[str, ...],
    order: list[tuple[str, Direction]],
    statements: list[Statement],
    paginate: bool,
    session_table: str | None = None,
) -> Part:
    """Append the sessions statements for `metrics` to `statements`."""
    wanted = {c for m in metrics for c in sessions.NEEDS[m]}  # order_by names only these
    columns = tuple(c for c in sessions.COLUMN_ORDER if c in wanted)
    rollup_ok = session_rollup_answers(query, dr, gran, columns)
    if session_table == SESSION_ROLLUP and not rollup_ok:
        raise ValueError(f"{SESSION_ROLLUP} cannot answer this query")
    if session_table not in (None, SESSION_ROLLUP, sessions.TABLE):
        raise ValueError(f"unknown session table {session_table!r}")
    if rollup_ok and session_table != sessions.TABLE:
        select = _session_rollup_select(query, dr, gran)
    else:
        select = _session_select(query, dr, gran)
    main_index = len(statements)
    statements.append(select.main(columns, order, paginate=paginate))
    total_index = count_index = None
    if "percentage" in metrics:
        total_index = len(statements)
        statements.append(select.aggregate_only("visitors"))
    if paginate and query.total_rows and query.dimensions:
        count_index = len(statements)
        statements.append(select.count())
    return Part(sessions.TABLE, metrics, columns, main_index, total_index, count_index)


def session_rollup_answers(
    query: Query, dr: DateRange, gran: Granularity | None, columns: tuple[str, ...]
) -> bool:
    """session_hour answers exactly when every session counts in one of its rows: at most one
    (single-valued) visit dimension across dimensions and filters, whole UTC hours, and local
    time buckets that do not split an hour; it holds no visitors."""
    plain = set(query.plain_dimensions) | filter_dimensions(query.filters)
    return (
        "visitors" not in columns
        and len(plain) <= 1
        and all(d in SESSION_ROLLUP_COLUMNS for d in plain)
        and gran != "minute"
        and is_aligned(dr.start, 3600)
        and is_aligned(dr.end, 3600)
        and (gran is None or offsets_are_multiples(dr.tz, dr.start, dr.end, 3600))
    )


def candidate_tables(query: Query, dr: DateRange, gran: Granularity | None) -> list[str]:
    plain = set(query.plain_dimensions) | filter_dimensions(query.filters)
    out: list[str] = []
    if len(plain) <= 1 and not any(is_props(d) for d in plain):
        tz = dr.tz
        if (
            gran in (None, "day", "week", "month")
            and is_day_boundary(dr.start, tz)
            and is_day_boundary(dr.end, tz)
        ):
            out.append("rollup_day")
        if (
            gran != "minute"
            and is_aligned(dr.start, 3600)
            and is_aligned(dr.end, 3600)
            and (gran is None or offsets_are_multiples(tz, dr.start, dr.end, 3600))
        ):
            out.append("rollup_hour")
        if (
            is_aligned(dr.start, 60)
            and is_aligned(dr.end, 60)
            and (gran is None or offsets_are_multiples(tz, dr.start, dr.end, 60))
        ):
            out.append("rollup_minute")
    out.append("events")
    return out


def _resolve_order(query: Query) -> list[tuple[str, Direction]]:
    if query.order_by is not None:
        return list(query.order_by)
    order: list[tuple[str, Direction]] = []
    time_dim = query.time_dimension
    if time_dim:
        order.append((time_dim, "asc"))
    if query.plain_dimensions or not time_dim:
        order.append((query.metrics[0], "desc"))
    return order


class _Select:
    """The pieces of one table's SELECT for a query, and the values they bind."""

    def __init__(
        self,
        query: Query,
        params: Params,
        source: str,
        where: str,
        labels: list[str],
        aggregates: Mapping[str, str],
        order_expression: Mapping[str, str],
        having: str | None = None,
        bound: str | None = None,
        tight: bool = False,
        keyed: str | None = None,
        scalars: tuple[str, ...] = (),
    ) -> None:
        self.query = query
        self.params = params  # of every placeholder in the pieces below
        self.source = source  # FROM ...
        self.where = where
        self.labels = labels  # one SQL expression per dimension
        self.aggregates = aggregates  # internal column -> aggregate
        self.order_expression = order_expression  # metric -> ORDER BY expression of m_* aliases
        self.having = having  # which groups to keep, when grouped
        # An exact upper bound of a group's visitors from cheap columns (a rollup's counted
        # events: every visitor counted had one), which lets `main` skip groups that cannot
        # reach the page asked for without merging their unique-count sketches.
        self.bound = bound
        # The bound is close to the visitors (an event dimension: a visitor's events under one
        # value are few), worth ranking by before merging sketches (by_visitors_narrowed).
        self.tight = tight
        # The sort-key column the single label is made of ("value" of a rollup): a condition
        # on it lets ClickHouse read only the granules of the groups kept (the label, which maps
        # '' to a name, hides the column from the index).
        self.keyed = keyed
        # `<scalar subquery> AS <name>` that the source refers to by name: in the statement's
        # WITH, evaluated once (ClickHouse passes WITH names down to subqueries and unions).
        self.scalars = scalars

    def _statement(self, sql: str, *scalars: str) -> Statement:
        names = (*self.scalars, *scalars)
        return self.params.statement(f"WITH {', '.join(names)} {sql}" if names else sql)

    def _group_by(self) -> str:
        if not self.labels:
            return ""
        having = f" HAVING {self.having}" if self.having else ""
        return " GROUP BY " + ", ".join(f"d{i}" for i in range(len(self.labels))) + having

    def _dims_select(self) -> list[str]:
        return [f"{expr} AS d{i}" for i, expr in enumerate(self.labels)]

    def main(
        self, columns: tuple[str, ...], order: list[tuple[str, Direction]], *, paginate: bool
    ) -> Statement:
        """The rows; ordered and paginated in SQL unless `paginate` is False."""
        parts = self._dims_select() + [f"{self.aggregates[m]} AS m_{m}" for m in columns]
        where = self.where
        if paginate:
            narrowed = self._narrowed(columns, order)
            if narrowed is not None:
                where = f"{where} AND {narrowed}"
        stmt = f"SELECT {', '.join(parts)} FROM {self.source} WHERE {where}{self._group_by()}"
        if not self.labels or not paginate:
            return self._statement(stmt)
        order_by = self._order_by(order, self.order_expression)
        return self._statement(
            f"{stmt} {order_by} LIMIT {int(self.query.limit)} OFFSET {int(self.query.offset)}"
        )

    def _order_by(self, order: list[tuple[str, Direction]], metric: Mapping[str, str]) -> str:
        """ORDER BY the order keys, then the remaining dimensions ascending (aliases d0...)."""
        dims = self.query.dimensions
        keys: list[str] = []
        for name, direction in order:
            expr = f"d{dims.index(name)}" if name in dims else metric[name]
            keys.append(f"{expr} {direction.upper()}")
        named = {n for n, _ in order}
        keys += [f"d{i} ASC" for i, d in enumerate(dims) if d not in named]
        return f"ORDER BY {', '.join(keys)}"

    def _narrowed(self, columns: tuple[str, ...], order: list[tuple[str, Direction]]) -> str | None:
        """Ordered by exact columns only (the dimension, pageviews, events): a condition keeping
        the groups of the page asked for, found before any sketch is merged; else None."""
        if self.bound is None or len(self.labels) != 1 or self.query.time_dimension:
            return None
        if all(c in CHEAP_COLUMNS for c in columns) or not order:
            return None
        if not all(name in self.query.dimensions or name in CHEAP_COLUMNS for name, _ in order):
            return None
        (label,) = self.labels
        having = f" HAVING {self.having}" if self.having else ""
        cheap = ", ".join(f"{self.aggregates[c]} AS m_{c}" for c in CHEAP_COLUMNS)
        ranked = (
            f"SELECT {label} AS d0, {cheap} FROM {self.source} WHERE {self.where}"
            f" GROUP BY d0{having} {self._order_by(order, _EVENT_ORDER)}"
            f" LIMIT {int(self.query.offset) + int(self.query.limit)}"
        )
        return f"{label} IN (SELECT d0 FROM ({ranked}))"

    def by_visitors_narrowed(
        self, columns: tuple[str, ...], order: list[tuple[str, Direction]]
    ) -> Statement | None:
        """Most visitors first, one dimension whose bound is tight: the page from the groups
        with the largest bounds only, each row ending with the largest bound of the groups
        left out (see Narrowed for what that proves). None when this does not apply."""
        if not self.tight or self.bound is None or len(self.labels) != 1:
            return None
        if self.query.time_dimension or "visitors" not in columns or not order:
            return None
        first, direction = order[0]
        if first not in ("visitors", "percentage") or direction != "desc":
            return None
        (label,) = self.labels
        taken = int(self.query.offset) + int(self.query.limit) + CANDIDATES
        having = f" HAVING {self.having}" if self.having else ""
        # One scalar subquery, evaluated once: the `taken` groups with the largest bounds and,
        # last, the next one (its bound is the largest of the groups left out; none: 0).
        ranked = (
            f"(SELECT groupArray((d0, u)) FROM (SELECT {label} AS d0, {self.bound} AS u"
            f" FROM {self.source} WHERE {self.where} GROUP BY d0{having}"
            f" ORDER BY u DESC, d0 ASC LIMIT {taken + 1}))"
        )
        parts = self._dims_select() + [f"{self.aggregates[m]} AS m_{m}" for m in columns]
        kept = f"arrayMap(r -> r.1, arraySlice(ranked, 1, {taken}))"
        keyed = f" AND (has({kept}, {self.keyed}) OR {self.keyed} = '')" if self.keyed else ""
        return self._statement(
            f"SELECT {', '.join(parts)}, ranked[{taken + 1}].2 AS bound_outside"
            f" FROM {self.source} WHERE {self.where}"
            f" AND has({kept}, {label}){keyed}"
            f"{self._group_by()} {self._order_by(order, self.order_expression)}"
            f" LIMIT {int(self.query.limit)} OFFSET {int(self.query.offset)}",
            f"{ranked} AS ranked",
        )

    def aggregate_only(self, metric: str) -> Statement:
        return self._statement(
            f"SELECT {self.aggregates[metric]} FROM {self.source} WHERE {self.where}"
        )

    def count(self) -> Statement:
        inner = (
            f"SELECT {', '.join(self._dims_select())} FROM {self.source} "
            f"WHERE {self.where}{self._group_by()}"
        )
        return self._statement(f"SELECT count() FROM ({inner})")


def _event_select(
    query: Query, dr: DateRange, gran: Granularity | None, table: str, now: datetime
) -> _Select:
    today = now.astimezone(dr.tz).date()
    params = Params()
    conds = [f"site = {params.string(query.site_id)}"]
    column_of: ColumnOf
    having: str | None = None
    bound: str | None = None
    scalars: tuple[str, ...] = ()  # see _Select.scalars
    dim = TOTAL
    source = table
    aggregates: dict[str, str]
    if table == "events":
        aggregates = {**_EVENT_AGGREGATES, **_EVENT_VITALS}
        counted = f"name NOT IN ({sql.string_list(sorted(SESSION_ONLY_EVENTS))})"
        vitals = [VITAL_METRICS[m] for m in query.metrics if m in VITAL_METRICS]
        if vitals:
            # Vitals ride on engagement events, which count nothing: read the rows carrying
            # the vitals asked for too, count only the others, keep groups with counted ones.
            carrying = " OR ".join(f"{col} IS NOT NULL" for col in vitals)
            conds.append(f"({counted} OR {carrying})")
            aggregates["visitors"] = f"uniqCombined64If(vid, {counted})"
            aggregates["events"] = f"countIf({counted})"
            having = f"countIf({counted}) > 0"
        else:
            conds.append(counted)
        conds.append(f"ts >= {params.datetime(dr.start, precision=3)}")
        conds.append(f"ts < {params.datetime(dr.end, precision=3)}")

        def column_of(dimension: str) -> str:
            return _event_column(dimension, params)

    else:
        aggregates = {**_ROLLUP_AGGREGATES, **_ROLLUP_VITALS}
        # Cells of vitals only (engagement events) count nothing: a group of only those (e.g.
        # a minute in which a page's vitals arrived but none of its hits) is no row.
        having = "sum(events) > 0"
        plain = set(query.plain_dimensions) | filter_dimensions(query.filters)
        dim = next(iter(plain)) if plain else TOTAL
        conds.append(f"dim = {params.string(dim)}")
        bound = "sum(events)"
        if table == "rollup_day" and _by_day_totals(query, gran, dim):
            source = _day_totals_source(query.site_id, dr, params)
            aggregates = dict(_DAY_TOTALS_AGGREGATES)
            conds = ["1"]
            bound = "sum(t_events)"
            having = f"{bound} > 0"
        elif table == "rollup_day":
            first, end = dr.local_start_date, dr.local_end_date
            read = day_levels.source(
                query.site_id, first, end, today, closed_before(now), gran, conds, params
            )
            if read is not None:
                source, scalars = read
            else:
                conds.append(f"day >= {params.date(first)}")
                conds.append(f"day < {params.date(end)}")
        else:
            col = _TIME_COLUMN[table]
            conds.append(f"{col} >= {params.datetime(dr.start)}")
            conds.append(f"{col} < {params.datetime(dr.end)}")

        def column_of(dimension: str) -> str:
            return "value"

    where = compile_filters(query.filters, column_of, params)
    if where is not None:
        conds.append(where)
    labels = _labels(query, dr, gran, table, column_of, params)
    tight = bound is not None and dim != TOTAL and is_event_dimension(dim)
    return _Select(
        query,
        params,
        source,
        " AND ".join(conds),
        labels,
        aggregates,
        _EVENT_ORDER,
        having,
        bound,
        tight,
        keyed=None if table == "events" else "value",
        scalars=scalars,
    )


def _by_day_totals(query: Query, gran: Granularity | None, dim: str) -> bool:
    """A site's totals by day, no filters, only metrics that are per-day numbers (not a
    share of the range's visitors, not a vital's quantile): day_totals can answer its closed
    days."""
    return (
        gran == "day"
        and dim == TOTAL
        and not query.filters
        and all(m in BASE_METRICS for m in query.metrics if m in EVENT_METRICS)
    )


_DAY_TOTALS_AGGREGATES: Final[dict[str, str]] = {m: f"sum(t_{m})" for m in BASE_METRICS}


def _day_totals_source(site: str, dr: DateRange, params: Params) -> str:
    """Each local day of the range once: its finalized numbers from day_totals, or for the
    days not finalized there (today, a day given late data) rollup_day's merged totals row."""
    site_is = f"site = {params.string(site)}"
    days = f"day >= {params.date(dr.local_start_date)} AND day < {params.date(dr.local_end_date)}"
    finalized = f"day_totals FINAL WHERE {site_is} AND {days} AND is_deleted = 0"
    columns = ", ".join(f"{m} AS t_{m}" for m in BASE_METRICS)
    merged = ", ".join(f"{_ROLLUP_AGGREGATES[m]} AS t_{m}" for m in BASE_METRICS)
    return (
        f"(SELECT day, {columns} FROM {finalized}"
        f" UNION ALL SELECT day, {merged} FROM rollup_day"
        f" WHERE {site_is} AND dim = {params.string(TOTAL)} AND {days}"
        f" AND day NOT IN (SELECT day FROM {finalized}) GROUP BY day)"
    )


def _labels(
    query: Query,
    dr: DateRange,
    gran: Granularity | None,
    table: str,
    column_of: ColumnOf,
    params: Params,
) -> list[str]:
    """One SQL label per dimension: the time bucket, or the column with empty as its label."""
    labels: list[str] = []
    for d in query.dimensions:
        if d in TIME_DIMENSIONS:
            assert gran is not None
            labels.append(_time_label(table, gran, params.string(dr.tz.key)))
        else:
            col = column_of(d)
            labels.append(f"if({col} = '', {params.string(empty_label(d))}, {col})")
    return labels


def _session_select(query: Query, dr: DateRange, gran: Granularity | None) -> _Select:
    params = Params()
    time_label = (
        _time_label(sessions.TABLE, gran, params.string(dr.tz.key)) if gran is not None else None
    )
    src = sessions.SessionSource(
        query,
        params,
        params.datetime(dr.start, precision=3),
        params.datetime(dr.end, precision=3),
        time_label,
    )
    return _Select(
        query,
        params,
        src.source,
        src.where,
        src.labels,
        sessions.AGGREGATES,
        sessions.ORDER_EXPRESSION,
    )


def _session_rollup_select(query: Query, dr: DateRange, gran: Granularity | None) -> _Select:
    params = Params()
    plain = set(query.plain_dimensions) | filter_dimensions(query.filters)
    dim = next(iter(plain)) if plain else TOTAL
    conds = [
        f"site = {params.string(query.site_id)}",
        f"dim = {params.string(dim)}",
        f"hour >= {params.datetime(dr.start)}",
        f"hour < {params.datetime(dr.end)}",
    ]
    where = compile_filters(query.filters, lambda _: "value", params)
    if where is not None:
        conds.append(where)
    labels = _labels(query, dr, gran, SESSION_ROLLUP, lambda _: "value", params)
    return _Select(
        query,
        params,
        SESSION_ROLLUP,
        " AND ".join(conds),
        labels,
        _SESSION_ROLLUP_AGGREGATES,
        sessions.ORDER_EXPRESSION,
        # Deltas leave rows of retracted values behind; no sessions there, no row.
        having="sum(visits) != 0",
    )


def _event_column(dimension: str, params: Params) -> str:
    if is_props(dimension):
        return f"props[{params.string(prop_key(dimension))}]"
    try:
        return FIELD_OF[dimension]
    except KeyError:
        raise QueryError(f"unknown dimension {dimension!r}") from None


def _time_label(table: str, gran: Granularity, tz: str) -> str:
    """`tz`: the placeholder of the site's timezone."""
    if table == "rollup_day":
        return {
            "day": "toString(day)",
            "week": "toString(toMonday(day))",
            "month": "toString(toStartOfMonth(day))",
        }[gran]
    col = _TIME_COLUMN[table]
    if gran in _SQL_FORMAT:
        return f"formatDateTime({col}, {sql.string(_SQL_FORMAT[gran])}, {tz})"
    local_day = f"toDate({col}, {tz})"
    return {
        "day": f"toString({local_day})",
        "week": f"toString(toMonday({local_day}))",
        "month": f"toString(toStartOfMonth({local_day}))",
    }[gran]
