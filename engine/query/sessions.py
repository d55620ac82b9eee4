"""The sessions table: what a session metric reads, and how dimensions and filters apply to it.

`sessions` holds one row per session version; the query reads `FROM sessions FINAL WHERE
is_deleted = 0`. A session belongs to the date range (and to a time bucket, in the site's
timezone) by its `start`, the time of its first event.

Dimensions and filters:
- `visit:*` (and `visit:entry_page` / `visit:exit_page`) read the session's own columns, i.e. the
  values of its first event (entry page: the first event's page, exit page: the last pageview's).
- An event dimension (`event:page`, `event:name`, `event:hostname`, `event:props:<key>`) holds a
  SET of values per session: the distinct values of its counted events (`pages`, `names` less
  engagement / pageleave, `hostnames`, the values of `<key>` among the prop pairs). A session
  with no value for the dimension (e.g. no event had the property) has the single empty value.
- Breaking down by an event dimension ARRAY JOINs its set: a session counts once under each of
  its values (two event dimensions: under each pair of values).
- A filter tree is evaluated on the session. Each maximal subtree that mentions exactly one event
  dimension, and nothing else, holds when SOME value of the session's set satisfies it, the
  subtree being evaluated on that one value exactly as the events table evaluates it on one event
  (so `is_not`, `contains_not` and `not` keep sessions having at least one non-matching value,
  just as they keep visitors having at least one non-matching event). Children of an `and` (the
  top-level list included) that mention only the same event dimension are evaluated together,
  on the same value. Conditions on visit dimensions read the session's columns; conditions on an
  event dimension that is also a breakdown dimension read the joined value of the row. Subtrees
  on different event dimensions may be satisfied by different events of one session: the table
  keeps the sets of values, not which values occurred together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from engine.dimensions import FIELD_OF, SESSION_ONLY_EVENTS, TIME_DIMENSIONS, empty_label
from engine.query import sql
from engine.query.filters import compile_filter, join_sql
from engine.query.model import (
    SESSION_DIMENSIONS,
    And,
    Filter,
    Not,
    Or,
    Query,
    filter_dimensions,
    is_event_dimension,
    is_props,
    prop_key,
)
from engine.query.sql import Params

TABLE: Final[str] = "sessions"
# Internal aggregate columns of a sessions statement.
AGGREGATES: Final[dict[str, str]] = {
    "visitors": "uniqCombined64(vid)",
    "pageviews": "sum(pageviews)",
    "events": "sum(events)",
    "visits": "count()",
    "bounces": "countIf(is_bounce != 0)",
    "duration": "sum(if(is_bounce != 0, 0, duration))",
}
COLUMN_ORDER: Final[tuple[str, ...]] = tuple(AGGREGATES)
# The columns each metric needs (on the sessions table).
NEEDS: Final[dict[str, tuple[str, ...]]] = {
    "visitors": ("visitors",),
    "percentage": ("visitors",),
    "pageviews": ("pageviews",),
    "events": ("events",),
    "visits": ("visits",),
    "bounce_rate": ("visits", "bounces"),
    "visit_duration": ("visits", "duration"),
    "views_per_visit": ("visits", "pageviews"),
}
_SET_COLUMN: Final[dict[str, str]] = {"event:page": "pages", "event:hostname": "hostnames"}


def half_up_sql(numerator: str, denominator: str) -> str:
    """round(numerator / denominator), halves up, in integers; 0 when the denominator is 0.
    render.half_up is its twin: ORDER BY and the rendered value agree exactly."""
    return f"intDiv(2 * ({numerator}) + ({denominator}), greatest(2 * ({denominator}), 1))"


# A metric's ORDER BY expression over the m_* aliases: its rendered value (views_per_visit in
# hundredths); percentage sorts by visitors, as on the event tables.
ORDER_EXPRESSION: Final[dict[str, str]] = {
    "visitors": "m_visitors",
    "percentage": "m_visitors",
    "pageviews": "m_pageviews",
    "events": "m_events",
    "visits": "m_visits",
    "bounce_rate": half_up_sql("100 * m_bounces", "m_visits"),
    "visit_duration": half_up_sql("m_duration", "m_visits"),
    "views_per_visit": half_up_sql("100 * m_pageviews", "m_visits"),
}


def value_set(dimension: str, params: Params) -> str:
    """The Array(String) of an event dimension's values in a session (never empty)."""
    if dimension in _SET_COLUMN:
        values = _SET_COLUMN[dimension]
    elif dimension == "event:name":
        skipped = sql.string_list(sorted(SESSION_ONLY_EVENTS))
        values = f"arrayFilter(n -> n NOT IN ({skipped}), names)"
    elif is_props(dimension):
        key = params.string(prop_key(dimension))
        values = f"arrayFilter((v, k) -> k = {key}, prop_values, prop_keys)"
    else:
        raise ValueError(f"{dimension!r} is not an event dimension")
    return f"if(empty({values}), [''], {values})"


def session_column(dimension: str) -> str:
    """The sessions column of a visit dimension."""
    if dimension in SESSION_DIMENSIONS:
        return SESSION_DIMENSIONS[dimension]
    if dimension in FIELD_OF and not is_event_dimension(dimension):
        return FIELD_OF[dimension]
    raise ValueError(f"{dimension!r} is not a visit dimension")


class SessionSource:
    """FROM, WHERE and the dimension labels of a sessions statement for a query."""

    def __init__(
        self, query: Query, params: Params, start: str, end: str, time_label: str | None
    ) -> None:
        """`start`/`end`: DateTime64 placeholders of the range; `time_label`: the SQL label of
        the time dimension's bucket of `start`, when the query has one."""
        bound: dict[str, str] = {}
        joins: list[str] = []
        self.labels: list[str] = []
        for i, d in enumerate(query.dimensions):
            if d in TIME_DIMENSIONS:
                assert time_label is not None
                self.labels.append(time_label)
                continue
            if is_event_dimension(d):
                column = f"j{i}"
                bound[d] = column
                joins.append(f" ARRAY JOIN {value_set(d, params)} AS {column}")
            else:
                column = session_column(d)
            self.labels.append(f"if({column} = '', {params.string(empty_label(d))}, {column})")
        self.source = f"{TABLE} FINAL" + "".join(joins)
        conds = [
            "is_deleted = 0",
            f"site = {params.string(query.site_id)}",
            f"start >= {start}",
            f"start < {end}",
        ]
        where = compile_session_filters(query.filters, bound, params)
        if where is not None:
            conds.append(where)
        self.where = " AND ".join(conds)


def compile_session_filters(
    filters: Sequence[Filter], bound: Mapping[str, str], params: Params
) -> str | None:
    """The session-level boolean of the top-level filters (an AND), or None when there are none.
    `bound`: event dimensions read from an ARRAY JOIN column (a breakdown) -> that column."""
    if not filters:
        return None
    return _compile(And(tuple(filters)) if len(filters) > 1 else filters[0], bound, params)


def _single_event_dimension(node: Filter, bound: Mapping[str, str]) -> str | None:
    """The event dimension when `node` mentions that one (unbound) dimension and nothing else."""
    dims = filter_dimensions([node])
    if len(dims) != 1:
        return None
    (dim,) = dims
    return dim if is_event_dimension(dim) and dim not in bound else None


def _compile(node: Filter, bound: Mapping[str, str], params: Params) -> str:
    dim = _single_event_dimension(node, bound)
    if dim is not None:
        test = compile_filter(node, lambda _: "x", params)
        return f"arrayExists(x -> {test}, {value_set(dim, params)})"
    dims = filter_dimensions([node])
    if not any(is_event_dimension(d) and d not in bound for d in dims):

        def scalar(dimension: str) -> str:
            return bound.get(dimension) or session_column(dimension)

        return compile_filter(node, scalar, params)
    if isinstance(node, Not):
        return f"NOT ({_compile(node.child, bound, params)})"
    if isinstance(node, Or):
        return join_sql("OR", [_compile(c, bound, params) for c in node.children])
    assert isinstance(node, And)  # a Condition mentions one dimension: handled above
    groups: dict[str, list[Filter]] = {}
    rest: list[Filter] = []
    for child in node.children:
        child_dim = _single_event_dimension(child, bound)
        if child_dim is None:
            rest.append(child)
        else:
            groups.setdefault(child_dim, []).append(child)
    parts = [
        _compile(g[0] if len(g) == 1 else And(tuple(g)), bound, params) for g in groups.values()
    ]
    parts += [_compile(c, bound, params) for c in rest]
    return join_sql("AND", parts)
