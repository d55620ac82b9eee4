"""Rows from ClickHouse to the Stats API v2 response."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.query.planner import QueryPlan


def render(plan: QueryPlan, rows_per_statement: list[list[tuple[Any, ...]]]) -> dict[str, Any]:
    """`rows_per_statement[i]` holds the rows of `plan.statements[i]`."""
    if len(rows_per_statement) != len(plan.statements):
        raise ValueError(
            f"expected rows for {len(plan.statements)} statements, got {len(rows_per_statement)}"
        )
    query = plan.query
    n_dims = len(query.dimensions)
    main = rows_per_statement[0]
    total_visitors = 0
    if plan.total_index is not None:
        total_rows_of = rows_per_statement[plan.total_index]
        total_visitors = int(total_rows_of[0][0]) if total_rows_of else 0

    if n_dims == 0 and not main:
        main = [tuple(0 for _ in plan.columns)]
    results: list[dict[str, Any]] = []
    for row in main:
        values = dict(zip(plan.columns, row[n_dims:], strict=True))
        metrics: list[Any] = []
        for m in query.metrics:
            if m == "percentage":
                visitors = int(values["visitors"])
                share = round(100.0 * visitors / total_visitors, 1) if total_visitors else 0.0
                metrics.append(share)
            else:
                metrics.append(int(values[m]))
        results.append({"metrics": metrics, "dimensions": [str(d) for d in row[:n_dims]]})

    meta: dict[str, Any] = {"table": plan.table}
    if query.total_rows:
        if plan.count_index is not None:
            counted = rows_per_statement[plan.count_index]
            meta["total_rows"] = int(counted[0][0]) if counted else 0
        else:
            meta["total_rows"] = len(results)
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
