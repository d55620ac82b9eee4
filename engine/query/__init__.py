"""Stats API v2 queries: validate a body, plan it on the cheapest exact table, render rows.

    plan = plan_query(body, timezone="Europe/Berlin", now=now_utc, first_day=None)
    rows = [store.query_sync(s.sql, s.params) for s in plan.statements]
    for i, s in plan.recheck(rows).items():  # a narrowed ranking that could not prove itself
        rows[i] = store.query_sync(s.sql, s.params)
    response = plan.render(rows)

Event metrics read the cheapest exact event table (a rollup level or `events`), session metrics
the `sessions` table; a query mixing both runs one statement per family and `plan.table`
(`meta.table`) reads "<event table>+sessions", e.g. "rollup_day+sessions" (planner.py).

Each statement is its text, written by the code, and the values from the request bound to its
placeholders (engine/query/sql.py). Pure: no I/O and no clock; every invalid query raises
engine.errors.QueryError.
"""

from __future__ import annotations

from engine.query.planner import TABLES, QueryPlan, plan_query

__all__ = ["TABLES", "QueryPlan", "plan_query"]
