"""Generated SQL on the real engine (chDB): every table that can answer a query answers it
exactly as a Python oracle over the generated hits does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from engine.query import plan_query
from tests.query_helpers import (
    BIG_SITE,
    NOW,
    RANKED_SITE,
    SITES,
    Hit,
    assert_results_match,
    first_day,
    generate_big_site,
    generate_hits,
    generate_ranked_site,
    open_store,
    oracle,
    plans_for_every_table,
    run,
)

pytestmark = pytest.mark.integration

Store = tuple[Any, dict[str, list[Hit]]]  # client, hits by site


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    hits = generate_hits() + generate_big_site() + generate_ranked_site()
    started = time.perf_counter()
    client = open_store(tmp_path_factory.mktemp("query_engine") / "ch", hits)
    print(f"chDB store with {len(hits)} hits ready in {time.perf_counter() - started:.2f}s")
    by_site: dict[str, list[Hit]] = {}
    for h in hits:
        by_site.setdefault(h.site, []).append(h)
    yield client, by_site
    client.close()


def check(
    store: Store,
    body: dict[str, Any],
    *,
    expect_tables: set[str] | None = None,
    approximate: bool = False,
) -> None:
    client, by_site = store
    hits = by_site.get(body["site_id"], [])
    tables = []
    for plan in plans_for_every_table(body, hits):
        tables.append(plan.table)
        got = run(client, plan)
        want = oracle(plan, body, hits)
        assert got["meta"]["table"] == plan.table
        if approximate:
            assert_results_match(got["results"], want["results"], body["metrics"])
        else:
            assert got["results"] == want["results"], (plan.table, plan.statements)
        if body.get("include", {}).get("total_rows"):
            assert got["meta"]["total_rows"] == want["total_rows"], plan.table
        if body.get("include", {}).get("time_labels"):
            labels = got["meta"]["time_labels"]
            time_index = next(i for i, d in enumerate(body["dimensions"]) if d.startswith("time"))
            assert {r["dimensions"][time_index] for r in got["results"]} <= set(labels)
    if expect_tables is not None:
        assert set(tables) == expect_tables


ALL = {"rollup_day", "rollup_hour", "rollup_minute", "events"}
PERIODS: list[Any] = ["day", "24h", "7d", "28d", "30d", "91d", "month", "year", "6mo", "12mo"]
PERIODS += ["all", "30m", "realtime"]
CUSTOM: list[Any] = [
    ["2026-10-20", "2026-10-30"],
    ["2026-11-09T10:00:00+01:00", "2026-11-10T09:59:59+01:00"],
    ["2026-11-09T10:17:00Z", "2026-11-10T12:04:59Z"],
    ["2026-11-09T10:17:13Z", "2026-11-10T12:04:31Z"],
]


@pytest.mark.parametrize("site", list(SITES))
@pytest.mark.parametrize("date_range", PERIODS + CUSTOM, ids=str)
def test_aggregate_every_range(store: Store, site: str, date_range: Any) -> None:
    check(
        store,
        {"site_id": site, "metrics": ["visitors", "pageviews", "events"], "date_range": date_range},
    )


def test_aggregate_reads_every_level(store: Store) -> None:
    body = {"site_id": "berlin.test", "metrics": ["events", "visitors"], "date_range": "7d"}
    check(store, body, expect_tables=ALL)


@pytest.mark.parametrize("site", list(SITES))
@pytest.mark.parametrize(
    ("date_range", "dimension"),
    [
        ("day", "time"),
        ("24h", "time"),
        ("7d", "time"),
        ("7d", "time:hour"),
        ("7d", "time:week"),
        ("month", "time:day"),
        ("30d", "time:week"),
        ("12mo", "time"),
        ("all", "time:month"),
        ("30d", "time:month"),  # month spans at both ends, in their months' buckets
        (["2026-08-17", "2026-11-09"], "time:month"),
        ("30m", "time"),
        ("realtime", "time:minute"),
        (["2026-10-24", "2026-10-26"], "time:hour"),  # Berlin's autumn change
        (["2026-10-31", "2026-11-02"], "time:hour"),  # New York's autumn change
        (["2026-11-09T10:17:00Z", "2026-11-10T12:04:59Z"], "time"),
    ],
    ids=str,
)
def test_time_series(store: Store, site: str, date_range: Any, dimension: str) -> None:
    check(
        store,
        {
            "site_id": site,
            "metrics": ["visitors", "pageviews"],
            "date_range": date_range,
            "dimensions": [dimension],
            "include": {"time_labels": True, "total_rows": True},
        },
    )


def test_hour_series_reads_hours_in_berlin_not_in_kolkata(store: Store) -> None:
    body: dict[str, Any] = {
        "site_id": "berlin.test",
        "metrics": ["visitors"],
        "date_range": ["2026-10-24", "2026-10-26"],
        "dimensions": ["time:hour"],
    }
    check(store, body, expect_tables={"rollup_hour", "rollup_minute", "events"})
    body["site_id"] = "kolkata.test"
    check(store, body, expect_tables={"rollup_minute", "events"})


BREAKDOWNS = [
    "event:page",
    "event:name",
    "event:hostname",
    "visit:source",
    "visit:referrer",
    "visit:utm_campaign",
    "visit:device",
    "visit:browser_version",
    "visit:country",
    "event:props:plan",
]


@pytest.mark.parametrize("dimension", BREAKDOWNS)
def test_breakdowns(store: Store, dimension: str) -> None:
    check(
        store,
        {
            "site_id": "ny.test",
            "metrics": ["visitors", "pageviews", "events", "percentage"],
            "date_range": "30d",
            "dimensions": [dimension],
            "include": {"total_rows": True},
        },
    )


FILTERS: list[list[Any]] = [
    ["is", "visit:country", ["DE", "FR"]],
    ["is_not", "visit:country", ["DE"]],
    ["contains", "event:page", ["/blog"]],
    ["contains_not", "event:page", ["blog"]],
    ["contains", "event:page", ["/BLOG/"], {"case_sensitive": False}],
    ["is", "event:page", ["/blog/IT'S"], {"case_sensitive": False}],
    ["is", "event:page", ["/line\nbreak", "/Blog/Post\\2"]],
    ["is", "event:page", ["(not set)"]],
    ["is_not", "visit:source", ["Direct / None"]],
    ["is", "visit:source", ["direct / none"], {"case_sensitive": False}],
    ["contains", "visit:utm_campaign", ["'sale'"]],
    ["is", "event:name", ["signup"]],
    ["is", "event:name", ["engagement"]],
    ["or", [["is", "visit:device", ["Mobile"]], ["is", "visit:device", ["Tablet"]]]],
    ["not", ["or", [["is", "visit:browser", ["Chrome"]], ["contains", "visit:browser", ["af"]]]]],
    ["and", [["contains", "visit:os", ["o"]], ["not", ["is", "visit:os", ["macOS"]]]]],
    ["is", "event:props:plan", ["pro"], {"case_sensitive": False}],
    ["is", "event:props:author", ["o'neil"]],
    ["is", "event:props:plan", ["(not set)"]],
]


@pytest.mark.parametrize("flt", FILTERS, ids=str)
@pytest.mark.parametrize("with_breakdown", [False, True])
def test_filters(store: Store, flt: list[Any], with_breakdown: bool) -> None:
    body: dict[str, Any] = {
        "site_id": "berlin.test",
        "metrics": ["visitors", "pageviews", "events"],
        "date_range": "91d",
        "filters": [flt],
    }
    if with_breakdown:
        dim = flt[1] if flt[0] not in ("and", "or", "not") else "visit:country"
        body["dimensions"] = [dim]
        body["metrics"].append("percentage")
    check(store, body)


def test_rollup_answers_a_filter_on_the_breakdown_dimension(store: Store) -> None:
    body: dict[str, Any] = {
        "site_id": "kolkata.test",
        "metrics": ["visitors", "percentage"],
        "date_range": "30d",
        "dimensions": ["event:page"],
        "filters": [["contains", "event:page", ["/blog"]]],
    }
    check(store, body, expect_tables={"rollup_day", "rollup_minute", "events"})
    body["filters"].append(["is", "visit:source", ["Google"]])
    check(store, body, expect_tables={"events"})


def test_two_dimensions_and_time(store: Store) -> None:
    check(
        store,
        {
            "site_id": "utc.test",
            "metrics": ["pageviews", "visitors", "percentage"],
            "date_range": "30d",
            "dimensions": ["time:week", "visit:country", "visit:device"],
            "filters": [["is_not", "event:name", ["click"]]],
            "include": {"total_rows": True, "time_labels": True},
        },
        expect_tables={"events"},
    )


@pytest.mark.parametrize(
    "order_by",
    [
        [["visitors", "asc"]],
        [["pageviews", "desc"], ["visit:country", "desc"]],
        [["visit:country", "asc"]],
        [["percentage", "asc"], ["events", "desc"]],
        [["time:day", "desc"], ["visitors", "desc"]],
    ],
    ids=str,
)
@pytest.mark.parametrize("pagination", [None, {"limit": 3}, {"limit": 4, "offset": 5}], ids=str)
def test_order_and_pagination(
    store: Store, order_by: list[list[str]], pagination: dict[str, int] | None
) -> None:
    body: dict[str, Any] = {
        "site_id": "utc.test",
        "metrics": ["visitors", "pageviews", "events", "percentage"],
        "date_range": "month",
        "dimensions": ["time:day", "visit:country"]
        if order_by[0][0] == "time:day"
        else ["visit:country"],
        "order_by": order_by,
        "include": {"total_rows": True},
    }
    if pagination:
        body["pagination"] = pagination
    check(store, body)


def test_no_data(store: Store) -> None:
    client, _ = store
    for site, dims in [("nobody.test", []), ("utc.test", []), ("utc.test", ["event:page"])]:
        body: dict[str, Any] = {
            "site_id": site,
            "metrics": ["visitors", "pageviews", "events"],
            "date_range": ["2020-01-01", "2020-01-31"],
            "dimensions": dims,
            "include": {"total_rows": True},
        }
        for table in ("rollup_day", "events"):
            plan = plan_query(body, timezone="UTC", now=NOW, first_day=None, table=table)
            got = run(client, plan)
            if dims:
                assert got["results"] == []
                assert got["meta"]["total_rows"] == 0
            else:
                assert got["results"] == [{"metrics": [0, 0, 0], "dimensions": []}]
                assert got["meta"]["total_rows"] == 1


def test_percentage_of_nothing_is_zero(store: Store) -> None:
    check(
        store,
        {
            "site_id": "utc.test",
            "metrics": ["percentage"],
            "date_range": "7d",
            "dimensions": ["visit:country"],
            "filters": [["is", "visit:country", ["ZZ"]]],
        },
    )


def test_response_shape(store: Store) -> None:
    client, by_site = store
    hits = by_site["berlin.test"]
    body = {
        "site_id": "berlin.test",
        "metrics": ["visitors", "pageviews"],
        "date_range": "7d",
        "dimensions": ["time:day"],
        "filters": [["is", "visit:country", ["DE"], {"case_sensitive": False}]],
        "include": {"total_rows": True},
    }
    plan = plan_query(
        body, timezone="Europe/Berlin", now=NOW, first_day=first_day(hits, "berlin.test")
    )
    got = run(client, plan)
    assert got["meta"]["table"] == "rollup_day"
    assert got["query"] == {
        "site_id": "berlin.test",
        "metrics": ["visitors", "pageviews"],
        "date_range": ["2026-11-03T00:00:00+01:00", "2026-11-09T23:59:59+01:00"],
        "dimensions": ["time:day"],
        "filters": [["is", "visit:country", ["DE"], {"case_sensitive": False}]],
        "order_by": [["time:day", "asc"]],
        "include": {"total_rows": True, "time_labels": False},
        "pagination": {"limit": 10000, "offset": 0},
    }
    assert all(len(r["metrics"]) == 2 and len(r["dimensions"]) == 1 for r in got["results"])


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"dimensions": ["time:hour"]},
        {"dimensions": ["visit:country"], "order_by": [["visit:country", "asc"]]},
        {"filters": [["is", "event:page", ["/blog"]]]},
    ],
    ids=str,
)
def test_many_visitors_within_one_percent(store: Store, extra: dict[str, Any]) -> None:
    body = {"site_id": BIG_SITE, "metrics": ["visitors", "pageviews", "events"], "date_range": "7d"}
    if "dimensions" in extra and extra["dimensions"][0] != "time:hour":
        body["metrics"] = [*body["metrics"], "percentage"]
    check(store, {**body, **extra}, approximate=True)


def test_timing_of_a_typical_query(store: Store) -> None:
    client, _ = store
    body = {
        "site_id": "berlin.test",
        "metrics": ["visitors", "pageviews"],
        "date_range": "30d",
        "dimensions": ["event:page"],
    }
    for table in ("rollup_day", "rollup_hour", "rollup_minute", "events"):
        plan = plan_query(body, timezone="Europe/Berlin", now=NOW, first_day=None, table=table)
        started = time.perf_counter()
        run(client, plan)
        print(f"{table}: {1000 * (time.perf_counter() - started):.1f} ms")


@pytest.mark.parametrize(
    "pagination", [{"limit": 1}, {"limit": 2, "offset": 1}, {"limit": 3, "offset": 4}], ids=str
)
@pytest.mark.parametrize("dimension", ["event:page", "event:name", "event:hostname"])
def test_ranking_by_visitors_from_the_top_candidates(
    store: Store, dimension: str, pagination: dict[str, int]
) -> None:
    """Few visitors per value and a flat ranking: the narrowed page cannot prove itself and
    the full statement answers (run's recheck)."""
    body = {
        "site_id": "utc.test",
        "metrics": ["visitors", "pageviews", "percentage"],
        "date_range": "12mo",
        "dimensions": [dimension],
        "pagination": pagination,
        "include": {"total_rows": True},
    }
    check(store, body)


@pytest.mark.parametrize("offset", [0, 3, 30])
@pytest.mark.parametrize("date_range", ["28d", "30d", ["2026-10-19", "2026-11-08"]], ids=str)
def test_ranking_by_visitors_proves_the_page_from_the_top_candidates(
    store: Store, offset: int, date_range: Any
) -> None:
    client, _ = store
    body = {
        "site_id": RANKED_SITE,
        "metrics": ["visitors", "pageviews"],
        "date_range": date_range,
        "dimensions": ["event:page"],
        "pagination": {"limit": 3, "offset": offset},
    }
    check(store, body)
    plan = plan_query(body, timezone="UTC", now=NOW, first_day=None)
    assert plan.table == "rollup_day" and plan.narrowed
    rows = [client.query(s.sql, parameters=s.params).result_rows for s in plan.statements]
    if offset < 30:
        assert plan.recheck(rows) == {}  # proven: the candidates' sketches only
        assert [r[0] for r in rows[0]] == [f"/p{i}" for i in range(offset, offset + 3)]
    else:  # deep in the tail the counts are close: the full statement answers (check above)
        assert plan.recheck(rows) == {0: plan.narrowed[0].full}
