"""Parsing and validation of Stats API v2 bodies (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from engine.errors import QueryError
from engine.query.model import And, Condition, Not, Or, parse_query


def body(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"site_id": "example.com", "metrics": ["visitors"], "date_range": "7d"}
    base.update(over)
    return base


def test_minimal_body_gets_defaults() -> None:
    q = parse_query(body())
    assert q.site_id == "example.com"
    assert q.metrics == ("visitors",)
    assert q.date_range == "7d"
    assert q.dimensions == ()
    assert q.filters == ()
    assert q.order_by is None
    assert (q.limit, q.offset, q.total_rows, q.time_labels) == (10_000, 0, False, False)


def test_full_body() -> None:
    q = parse_query(
        body(
            metrics=["visitors", "pageviews", "events", "percentage"],
            date_range=["2026-01-01", "2026-01-31"],
            dimensions=["time:day", "event:page", "event:props:plan"],
            filters=[
                ["is", "visit:country", ["DE", "FR"]],
                ["contains", "event:page", ["/blog"], {"case_sensitive": False}],
                [
                    "or",
                    [["is_not", "visit:source", ["Google"]], ["not", ["is", "event:name", [1]]]],
                ],
                ["and", [["contains_not", "event:props:plan", ["pro"]]]],
            ],
            order_by=[["visitors", "asc"], ["event:page", "desc"]],
            include={"total_rows": True, "time_labels": True},
            pagination={"limit": 5, "offset": 10},
        )
    )
    assert q.date_range == ("2026-01-01", "2026-01-31")
    assert q.time_dimension == "time:day"
    assert q.plain_dimensions == ("event:page", "event:props:plan")
    assert q.filters == (
        Condition("is", "visit:country", ("DE", "FR")),
        Condition("contains", "event:page", ("/blog",), case_sensitive=False),
        Or(
            (
                Condition("is_not", "visit:source", ("Google",)),
                Not(Condition("is", "event:name", ("1",))),
            )
        ),
        And((Condition("contains_not", "event:props:plan", ("pro",)),)),
    )
    assert q.order_by == (("visitors", "asc"), ("event:page", "desc"))
    assert (q.limit, q.offset, q.total_rows, q.time_labels) == (5, 10, True, True)
    assert q.filters_echo[1] == ["contains", "event:page", ["/blog"], {"case_sensitive": False}]


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"site_id": ""}, "site_id"),
        ({"site_id": 3}, "site_id"),
        ({"metrics": []}, "metrics"),
        ({"metrics": "visitors"}, "metrics"),
        ({"metrics": ["visitors", "visitors"]}, "twice"),
        ({"metrics": ["bogus"]}, "unknown metric 'bogus'"),
        (
            {"metrics": ["lcp_p75"], "dimensions": ["visit:entry_page"]},
            "metric lcp_p75: cannot be combined with visit:entry_page",
        ),
        (
            {"metrics": ["visitors", "cls_p75"], "filters": [["is", "visit:exit_page", ["/"]]]},
            "metric cls_p75: cannot be combined with visit:exit_page",
        ),
        ({"metrics": ["percentage"]}, "percentage"),
        ({"metrics": ["percentage"], "dimensions": ["time:day"]}, "non-time dimension"),
        ({"date_range": None}, "date_range"),
        ({"date_range": ["2026-01-01"]}, "date_range"),
        ({"dimensions": ["visit:city"]}, "unknown dimension 'visit:city'"),
        ({"dimensions": ["time:day", "time:hour"]}, "at most one time dimension"),
        ({"dimensions": ["event:page", "event:page"]}, "twice"),
        ({"dimensions": ["event:props:"]}, "property name"),
        ({"dimensions": "event:page"}, "dimensions"),
        ({"filters": {}}, "filters"),
        ({"filters": [["matches", "event:page", ["x"]]]}, "unknown filter operator 'matches'"),
        ({"filters": [["is", "event:nope", ["x"]]]}, "unknown dimension 'event:nope'"),
        ({"filters": [["is", "time:day", ["x"]]]}, "cannot filter on 'time:day'"),
        ({"filters": [["is", "event:page", []]]}, "non-empty list of values"),
        ({"filters": [["is", "event:page", "x"]]}, "non-empty list of values"),
        ({"filters": [["is", "event:page", [None]]]}, "filters[0][2][0]"),
        ({"filters": [["is", "event:page", [True]]]}, "filters[0][2][0]"),
        ({"filters": [["is", "event:page", ["\ud800"]]]}, "Unicode"),
        ({"filters": [["is", "event:page", ["x" * 2001]]]}, "longer than"),
        ({"filters": [["is", "event:page", ["x"], {"case": 1}]]}, "modifiers"),
        ({"filters": [["is", "event:page", ["x"], {"case_sensitive": "no"}]]}, "case_sensitive"),
        ({"filters": [["and", []]]}, "non-empty list"),
        ({"filters": [["or"]]}, "non-empty list"),
        ({"filters": [["not", ["is", "event:page", ["x"]], ["x"]]]}, "exactly one filter"),
        ({"filters": [[]]}, "operator"),
        ({"filters": [["is", "event:page"]]}, "values"),
        ({"include": {"imports": True}}, "unknown option(s) imports"),
        ({"include": {"total_rows": "yes"}}, "include.total_rows"),
        ({"include": {"time_labels": True}}, "needs a time dimension"),
        ({"include": []}, "include"),
        ({"pagination": {"limit": 0}}, "pagination.limit"),
        ({"pagination": {"limit": 10_001}}, "pagination.limit"),
        ({"pagination": {"limit": True}}, "pagination.limit"),
        ({"pagination": {"offset": -1}}, "pagination.offset"),
        ({"pagination": {"page": 2}}, "unknown option(s) page"),
        ({"order_by": [["pageviews", "desc"]]}, "'pageviews' is not one of"),
        ({"order_by": [["visitors", "up"]]}, "direction"),
        ({"order_by": [["visitors", "asc"], ["visitors", "desc"]]}, "twice"),
        ({"order_by": [["visitors"]]}, "order_by[0]"),
        ({"order_by": []}, "order_by"),
        ({"unknown": 1}, "unknown key(s) in query: unknown"),
    ],
)
def test_invalid_bodies_name_the_fault(over: dict[str, Any], message: str) -> None:
    with pytest.raises(QueryError) as err:
        parse_query(body(**over))
    assert message in str(err.value)


def test_not_an_object() -> None:
    with pytest.raises(QueryError, match="JSON object"):
        parse_query(["visitors"])  # type: ignore[arg-type]


def test_deep_and_wide_filters_are_refused() -> None:
    deep: list[Any] = ["is", "event:page", ["x"]]
    for _ in range(20):
        deep = ["not", deep]
    with pytest.raises(QueryError, match="nested deeper"):
        parse_query(body(filters=[deep]))
    wide = [["is", "event:page", [str(i)]] for i in range(201)]
    with pytest.raises(QueryError, match="more than 200 conditions"):
        parse_query(body(filters=wide))


def test_percentage_with_time_and_plain_dimension_is_fine() -> None:
    q = parse_query(body(metrics=["percentage"], dimensions=["time", "visit:country"]))
    assert q.time_dimension == "time"
    assert q.plain_dimensions == ("visit:country",)
