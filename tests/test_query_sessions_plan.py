"""Session metrics: parsing, table choice, SQL shape and the render of joined rows (pure)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from engine.query import plan_query
from engine.query.model import parse_query
from engine.query.render import half_up
from tests.query_helpers import inlined

NOW = datetime(2026, 11, 10, 12, 34, 56, tzinfo=UTC)
SESSION = ["visits", "bounce_rate", "visit_duration", "views_per_visit"]


def plan(tz: str = "UTC", table: str | None = None, **over: Any) -> Any:
    body: dict[str, Any] = {"site_id": "example.com", "metrics": ["visits"], "date_range": "7d"}
    body.update(over)
    return plan_query(body, timezone=tz, now=NOW, first_day=None, table=table)


def test_session_metrics_and_dimensions_parse() -> None:
    q = parse_query(
        {
            "site_id": "s",
            "metrics": [*SESSION, "visitors"],
            "date_range": "7d",
            "dimensions": ["visit:entry_page", "visit:exit_page"],
            "filters": [["is", "visit:exit_page", ["/"]]],
            "order_by": [["bounce_rate", "asc"]],
        }
    )
    assert q.metrics == (*SESSION, "visitors")
    assert q.dimensions == ("visit:entry_page", "visit:exit_page")


@pytest.mark.parametrize(
    ("over", "table", "candidates"),
    [
        ({}, "sessions", ("sessions",)),
        ({"metrics": SESSION, "dimensions": ["event:props:plan"]}, "sessions", ("sessions",)),
        (
            {"metrics": ["visitors", "visits"]},
            "rollup_day+sessions",
            (
                "rollup_day+sessions",
                "rollup_hour+sessions",
                "rollup_minute+sessions",
                "events+sessions",
            ),
        ),
        (
            {"metrics": ["visits", "pageviews"], "dimensions": ["event:page", "visit:country"]},
            "events+sessions",
            ("events+sessions",),
        ),
        ({"metrics": ["visitors"], "dimensions": ["visit:entry_page"]}, "sessions", ("sessions",)),
        (
            {"metrics": ["pageviews"], "filters": [["is", "visit:exit_page", ["/"]]]},
            "sessions",
            ("sessions",),
        ),
        ({"metrics": ["visitors"]}, "rollup_day", None),
    ],
)
def test_table_choice(over: dict[str, Any], table: str, candidates: tuple[str, ...] | None) -> None:
    p = plan(**over)
    assert p.table == table
    assert p.candidates[0] == table
    if candidates is not None:
        assert p.candidates == candidates


def test_forcing_a_table() -> None:
    p = plan(table="events+sessions", metrics=["visitors", "bounce_rate"])
    assert [part.table for part in p.parts] == ["events", "sessions"]
    with pytest.raises(ValueError):
        plan(table="events", metrics=["visitors", "bounce_rate"])
    with pytest.raises(ValueError):
        plan(table="rollup_day", metrics=["visits"])


def test_sessions_statement() -> None:
    p = plan(
        "Europe/Berlin",
        metrics=["bounce_rate"],
        dimensions=["time:day", "event:page"],
        include={"total_rows": True},
    )
    main, count = (inlined(s) for s in p.statements)
    assert p.count_index == 1 and not p.merged
    assert "FROM sessions FINAL ARRAY JOIN if(empty(pages), [''], pages) AS j1 WHERE" in main
    assert "is_deleted = 0" in main
    assert "toString(toDate(start, 'Europe/Berlin')) AS d0" in main
    assert "start >= '2026-11-02 23:00:00'" in main
    assert re.search(r"start >= \{p\d+:DateTime64\(3, 'UTC'\)\}", p.statements[0].sql)
    assert main.endswith(
        "ORDER BY d0 ASC, intDiv(2 * (100 * m_bounces) + (m_visits), "
        "greatest(2 * (m_visits), 1)) DESC, d1 ASC LIMIT 10000 OFFSET 0"
    )
    assert count.startswith("SELECT count() FROM (SELECT ")


def test_event_filters_on_sessions() -> None:
    statement = plan(
        filters=[
            ["contains", "event:page", ["blog"]],
            ["is", "visit:entry_page", ["(not set)"]],
            ["is_not", "event:page", ["/blog"]],
            ["is", "event:props:o'k", ["a'b"]],
        ]
    ).statements[0]
    assert "o'k" not in statement.sql and "a'b" not in statement.sql  # bound, not written
    sql = inlined(statement)
    # the two event:page conditions test one page
    assert sql.count("arrayExists") == 2
    assert (
        "arrayExists(x -> ((multiSearchAny(x, ['blog'])) AND (NOT (x IN ['/blog']))), "
        "if(empty(pages), [''], pages))"
    ) in sql
    assert "arrayFilter((v, k) -> k = 'o\\'k', prop_values, prop_keys)" in sql
    assert "x IN ['a\\'b']" in sql
    assert "(entry_page IN ['(not set)'] OR entry_page = '')" in sql


def test_a_filter_on_the_breakdown_dimension_reads_the_joined_value() -> None:
    sql = inlined(
        plan(dimensions=["event:name"], filters=[["is_not", "event:name", ["signup"]]]).statements[
            0
        ]
    )
    assert "arrayExists" not in sql
    assert "NOT (j0 IN ['signup'])" in sql
    assert "arrayFilter(n -> n NOT IN ('engagement', 'pageleave'), names)" in sql


def test_mixed_statements_are_unordered_and_uncounted() -> None:
    p = plan(
        metrics=["visits", "percentage", "visitors"],
        dimensions=["visit:country"],
        order_by=[["visits", "asc"]],
        include={"total_rows": True},
        pagination={"limit": 5},
    )
    assert p.merged and p.table == "rollup_day+sessions"
    assert len(p.statements) == 3  # event rows, visitors total, session rows
    assert p.total_index == 1 and p.count_index is None
    assert all("ORDER BY" not in s.sql and "LIMIT" not in s.sql for s in p.statements)
    assert p.order_by == [("visits", "asc")]


def test_render_joins_orders_and_paginates() -> None:
    p = plan(
        metrics=["visitors", "bounce_rate", "percentage", "views_per_visit"],
        dimensions=["visit:country"],
        order_by=[["bounce_rate", "desc"]],
        include={"total_rows": True},
        pagination={"limit": 2, "offset": 1},
    )
    event_part, session_part = p.parts
    assert event_part.columns == ("visitors",)
    assert session_part.columns == ("pageviews", "visits", "bounces")
    rows: list[list[Any]] = [[], [], []]
    rows[event_part.main_index] = [("DE", 5), ("US", 3), ("FR", 2)]
    rows[event_part.total_index] = [(10,)]
    rows[session_part.main_index] = [("DE", 7, 4, 1), ("IN", 3, 2, 1), ("US", 3, 2, 1)]
    got = p.render(rows)
    # bounce rates: IN 50, US 50, DE 25, FR 0 (no visits); ties by country ascending
    assert got["results"] == [
        {"metrics": [3, 50, 30.0, 1.5], "dimensions": ["US"]},
        {"metrics": [5, 25, 50.0, 1.75], "dimensions": ["DE"]},
    ]
    assert got["meta"] == {"table": "rollup_day+sessions", "total_rows": 4}


def test_halves_round_up() -> None:
    assert [half_up(n, 2) for n in range(6)] == [0, 1, 1, 2, 2, 3]
    assert half_up(100 * 1, 8) == 13  # 12.5
    assert half_up(5, 0) == 0
    assert half_up(100 * 2, 3) == 67
