"""Table choice and SQL shape (pure); the SQL itself runs in test_query_engine.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from engine.query import plan_query, sql

NOW = datetime(2026, 11, 10, 12, 34, 56, tzinfo=UTC)


def plan(tz: str = "UTC", now: datetime = NOW, **over: Any) -> Any:
    body: dict[str, Any] = {"site_id": "example.com", "metrics": ["visitors"], "date_range": "7d"}
    body.update(over)
    return plan_query(body, timezone=tz, now=now, first_day=None)


@pytest.mark.parametrize(
    ("tz", "over", "table", "candidates"),
    [
        ("UTC", {}, "rollup_day", ("rollup_day", "rollup_hour", "rollup_minute", "events")),
        ("Asia/Kolkata", {}, "rollup_day", ("rollup_day", "rollup_minute", "events")),
        ("UTC", {"dimensions": ["time"]}, "rollup_day", None),
        ("UTC", {"dimensions": ["time:week"]}, "rollup_day", None),
        ("Europe/Berlin", {"dimensions": ["time:hour"]}, "rollup_hour", None),
        ("Asia/Kolkata", {"dimensions": ["time:hour"]}, "rollup_minute", None),
        ("UTC", {"dimensions": ["time:minute"]}, "rollup_minute", None),
        ("Europe/Berlin", {"date_range": "day", "dimensions": ["time"]}, "rollup_hour", None),
        ("Asia/Kolkata", {"date_range": "day", "dimensions": ["time"]}, "rollup_minute", None),
        ("Asia/Kolkata", {"date_range": "day"}, "rollup_day", None),
        ("UTC", {"date_range": "24h"}, "rollup_minute", ("rollup_minute", "events")),
        ("UTC", {"date_range": "30m"}, "rollup_minute", None),
        ("UTC", {"date_range": "realtime", "dimensions": ["time"]}, "rollup_minute", None),
        ("UTC", {"date_range": "all", "dimensions": ["time"]}, "rollup_day", None),
        ("UTC", {"dimensions": ["event:page"]}, "rollup_day", None),
        (
            "UTC",
            {
                "dimensions": ["event:page", "time:day"],
                "filters": [["contains", "event:page", ["/blog"]]],
            },
            "rollup_day",
            None,
        ),
        ("UTC", {"filters": [["is", "visit:country", ["DE"]]]}, "rollup_day", None),
        (
            "UTC",
            {
                "filters": [
                    [
                        "or",
                        [["is", "visit:country", ["DE"]], ["not", ["is", "visit:country", ["x"]]]],
                    ]
                ]
            },
            "rollup_day",
            None,
        ),
        (
            "UTC",
            {"dimensions": ["visit:source"], "filters": [["is", "event:page", ["/"]]]},
            "events",
            ("events",),
        ),
        ("UTC", {"dimensions": ["visit:source", "visit:country"]}, "events", ("events",)),
        ("UTC", {"dimensions": ["event:props:plan"]}, "events", ("events",)),
        ("UTC", {"filters": [["is", "event:props:plan", ["pro"]]]}, "events", ("events",)),
        (
            "UTC",
            {"date_range": ["2026-01-01T10:00:00Z", "2026-01-01T11:59:59Z"]},
            "rollup_hour",
            None,
        ),
        (
            "UTC",
            {"date_range": ["2026-01-01T10:00:00Z", "2026-01-01T11:58:59Z"]},
            "rollup_minute",
            None,
        ),
        (
            "UTC",
            {"date_range": ["2026-01-01T10:00:00Z", "2026-01-01T11:58:58Z"]},
            "events",
            ("events",),
        ),
    ],
)
def test_table_choice(
    tz: str, over: dict[str, Any], table: str, candidates: tuple[str, ...] | None
) -> None:
    p = plan(tz, **over)
    assert p.table == table
    assert p.candidates[0] == table
    if candidates is not None:
        assert p.candidates == candidates


def test_24h_on_the_hour_reads_hours() -> None:
    p = plan(now=datetime(2026, 11, 10, 12, 59, 30, tzinfo=UTC), date_range="24h")
    assert p.table == "rollup_hour"


def test_forcing_a_table() -> None:
    assert plan(dimensions=["event:page"]).candidates == (
        "rollup_day",
        "rollup_hour",
        "rollup_minute",
        "events",
    )
    forced = plan_query(
        {"site_id": "s", "metrics": ["visitors"], "date_range": "7d"},
        timezone="UTC",
        now=NOW,
        first_day=None,
        table="events",
    )
    assert forced.table == "events"
    with pytest.raises(ValueError):
        plan_query(
            {"site_id": "s", "metrics": ["visitors"], "date_range": "24h"},
            timezone="UTC",
            now=NOW,
            first_day=None,
            table="rollup_day",
        )


def test_statements_and_default_order() -> None:
    p = plan(metrics=["visitors", "percentage"], dimensions=["event:page"])
    assert len(p.statements) == 2  # the rows, then the visitors total
    assert p.total_index == 1
    assert p.order_by == [("visitors", "desc")]
    p = plan(dimensions=["time:day"], include={"total_rows": True})
    assert p.order_by == [("time:day", "asc")]
    assert p.count_index == 1
    assert p.statements[1].startswith("SELECT count() FROM (")
    p = plan(metrics=["pageviews", "visitors"], dimensions=["time", "visit:source"])
    assert p.order_by == [("time", "asc"), ("pageviews", "desc")]
    assert p.statements[0].endswith(
        "ORDER BY d0 ASC, m_pageviews DESC, d1 ASC LIMIT 10000 OFFSET 0"
    )
    p = plan()
    assert p.order_by == [("visitors", "desc")]
    assert "ORDER BY" not in p.statements[0]


def test_every_events_statement_skips_session_only_events() -> None:
    p = plan(
        metrics=["visitors", "percentage"],
        dimensions=["event:props:plan"],
        include={"total_rows": True},
    )
    assert len(p.statements) == 3
    for s in p.statements:
        assert "name NOT IN ('engagement', 'pageleave')" in s


def test_literals_are_escaped_in_sql() -> None:
    p = plan_query(
        {
            "site_id": "it's.com",
            "metrics": ["visitors"],
            "date_range": "7d",
            "filters": [["is", "event:props:o'k\\", ["a'\nb\\"]]],
        },
        timezone="UTC",
        now=NOW,
        first_day=None,
    )
    sql = p.statements[0]
    assert "site = 'it\\'s.com'" in sql
    assert "props['o\\'k\\\\'] IN ('a\\'\\x0Ab\\\\')" in sql
    assert "\n" not in sql


def test_string_literal_escaping() -> None:
    assert sql.string("plain") == "'plain'"
    assert sql.string("it's") == "'it\\'s'"
    assert sql.string("a\\b") == "'a\\\\b'"
    assert sql.string("x\ny\rz\t\x00\x7f") == "'x\\x0Ay\\x0Dz\\x09\\x00\\x7F'"
    assert sql.string("€") == "'€'"
    with pytest.raises(UnicodeEncodeError):
        sql.string("\ud800")


def test_rollup_reads_the_dimension_rows() -> None:
    p = plan(filters=[["is", "visit:source", ["Direct / None", "Google"]]])
    sql = p.statements[0]
    assert "dim = 'visit:source'" in sql
    assert "(value IN ('Direct / None', 'Google') OR value = '')" in sql
    assert "dim = ''" in plan().statements[0]
