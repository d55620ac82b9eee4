"""Rows from ClickHouse to the Stats API v2 response.

Session metrics are computed here from integer aggregates, rounding halves up:
bounce_rate = round(100 * bounces / visits), visit_duration = round(duration / visits) (the
duration sum counts bounces as 0), views_per_visit = round(pageviews / visits, 2); each is 0
without visits. sessions.ORDER_EXPRESSION computes the same numbers in SQL.

Vitals p75: milliseconds as integers (halves up), CLS to 3 decimals; null without samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.query.model import VITAL_METRICS

if TYPE_CHECKING:
    from engine.query.model import Direction
    from engine.query.planner import Part, QueryPlan

Key = tuple[str, ...]
# internal column -> value, of one part's row: an int, or for a vital a float (None: no samples)
Values = dict[str, Any]


def half_up(numerator: int, denominator: int) -> int:
    """round(numerator / denominator) with halves up, for numerator >= 0; 0 for denominator 0."""
    if denominator <= 0:
        return 0
    return (2 * numerator + denominator) // (2 * denominator)


def _column(name: str, value: Any) -> int | float | None:
    if name in VITAL_METRICS:
        # NaN is what a sketch without samples gives, NULL what quantileDD over no value does.
        return None if value is None or math.isnan(value) else float(value)
    return int(value)


def vital_value(metric: str, value: float | None) -> int | float | None:
    if value is None:
        return None
    if metric == "cls_p75":
        return round(value, 3)
    return math.floor(value + 0.5)


def metric_value(metric: str, values: Values, total_visitors: int) -> int | float | None:
    """The rendered value of `metric` from its part's columns."""
    if metric in VITAL_METRICS:
        return vital_value(metric, values.get(metric))
    if metric == "percentage":
        visitors = values.get("visitors", 0)
        return round(100.0 * visitors / total_visitors, 1) if total_visitors else 0.0
    visits = values.get("visits", 0)
    if metric == "bounce_rate":
        return half_up(100 * values.get("bounces", 0), visits)
    if metric == "visit_duration":
        return half_up(values.get("duration", 0), visits)
    if metric == "views_per_visit":
        return half_up(100 * values.get("pageviews", 0), visits) / 100
    return int(values.get(metric, 0))


def _sort_value(metric: str, values: Values) -> int | float:
    """What a metric sorts by: its value (views_per_visit in hundredths), visitors for
    percentage; as the ORDER BY of a single table (but a vital without samples sorts lowest)."""
    if metric in VITAL_METRICS:
        value = values.get(metric)
        return -math.inf if value is None else float(value)
    if metric == "percentage":
        return int(values.get("visitors", 0))
    if metric == "views_per_visit":
        return half_up(100 * values.get("pageviews", 0), values.get("visits", 0))
    value = metric_value(metric, values, 0)
    assert value is not None
    return value


def render(plan: QueryPlan, rows_per_statement: list[list[tuple[Any, ...]]]) -> dict[str, Any]:
    """`rows_per_statement[i]` holds the rows of `plan.statements[i]`."""
    if len(rows_per_statement) != len(plan.statements):
        raise ValueError(
            f"expected rows for {len(plan.statements)} statements, got {len(rows_per_statement)}"
        )
    query = plan.query
    n_dims = len(query.dimensions)
    part_of = {m: i for i, part in enumerate(plan.parts) for m in part.metrics}
    totals = [_total_visitors(part, rows_per_statement) for part in plan.parts]

    per_part: list[dict[Key, Values]] = []
    order: list[Key] = []  # keys in the order rows arrived (the SQL order of a single part)
    for part in plan.parts:
        rows: dict[Key, Values] = {}
        for row in rows_per_statement[part.main_index]:
            key = tuple(str(d) for d in row[:n_dims])
            rows[key] = {c: _column(c, v) for c, v in zip(part.columns, row[n_dims:], strict=True)}
            if all(key not in other for other in per_part):
                order.append(key)
        per_part.append(rows)
    if n_dims == 0 and not order:
        order = [()]

    keys = order
    total_rows: int | None = None
    if plan.merged:
        keys = _sorted(order, per_part, part_of, plan.order_by, query.dimensions)
        total_rows = len(keys)
        if n_dims:
            keys = keys[query.offset : query.offset + query.limit]

    results: list[dict[str, Any]] = []
    for key in keys:
        metrics: list[Any] = []
        for m in query.metrics:
            i = part_of[m]
            metrics.append(metric_value(m, per_part[i].get(key, {}), totals[i]))
        results.append({"metrics": metrics, "dimensions": list(key)})

    meta: dict[str, Any] = {"table": plan.table}
    if query.total_rows:
        if total_rows is None:
            count_index = plan.count_index
            if count_index is not None:
                counted = rows_per_statement[count_index]
                total_rows = int(counted[0][0]) if counted else 0
            else:
                total_rows = len(results)
        meta["total_rows"] = total_rows
    if plan.labels is not None:
        meta["time_labels"] = list(plan.labels)

    return {
        "results": results,
        "meta": meta,
        "query": {
            "site_id": query.site_id,
            "metrics": list(query.metrics),
            "date_range": plan.date_range.echo(),
            "dimensions": list(query.dimensions),
            "filters": query.filters_echo,
            "order_by": [[name, direction] for name, direction in plan.order_by],
            "include": {"total_rows": query.total_rows, "time_labels": query.time_labels},
            "pagination": {"limit": query.limit, "offset": query.offset},
        },
    }


def _total_visitors(part: Part, rows_per_statement: list[list[tuple[Any, ...]]]) -> int:
    if part.total_index is None:
        return 0
    rows = rows_per_statement[part.total_index]
    return int(rows[0][0]) if rows else 0


def _sorted(
    keys: list[Key],
    per_part: list[dict[Key, Values]],
    part_of: dict[str, int],
    order_by: list[tuple[str, Direction]],
    dimensions: tuple[str, ...],
) -> list[Key]:
    """The joined rows in the order a single table's SQL would give: the order_by keys, then
    the remaining dimensions ascending (labels compare as ClickHouse compares UTF-8 bytes)."""
    out = list(keys)
    named = {n for n, _ in order_by}
    full = list(order_by) + [(d, "asc") for d in dimensions if d not in named]
    for name, direction in reversed(full):  # stable sorts, least significant key first
        if name in dimensions:
            out.sort(key=_by_label(dimensions.index(name)), reverse=direction == "desc")
        else:
            out.sort(key=_by_metric(name, per_part[part_of[name]]), reverse=direction == "desc")
    return out


def _by_label(i: int) -> Callable[[Key], str]:
    def key(k: Key) -> str:
        return k[i]

    return key


def _by_metric(metric: str, rows: dict[Key, Values]) -> Callable[[Key], int | float]:
    def key(k: Key) -> int | float:
        return _sort_value(metric, rows.get(k, {}))

    return key
