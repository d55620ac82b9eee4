"""Session metrics (visits, bounce_rate, visit_duration, views_per_visit) and the entry / exit
page dimensions on the real engine (chDB): the sessions table, written with stale versions,
replays and deleted ids, answers exactly as a Python oracle over sessions built independently
from the same generated hits; mixed queries join the event and session families."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from engine.query import plan_query
from tests.query_helpers import (
    NOW,
    SITES,
    TIMEZONE_OF,
    Hit,
    Session,
    first_day,
    full_oracle,
    generate_hits,
    generate_session_hits,
    open_store,
    plans_for_every_table,
    run,
    sessionize,
)

pytestmark = pytest.mark.integration

SESSION = ["visits", "bounce_rate", "visit_duration", "views_per_visit"]


class Store:
    def __init__(self, client: Any, hits: list[Hit], sessions: list[Session]) -> None:
        self.client = client
        self.hits: dict[str, list[Hit]] = {}
        self.sessions: dict[str, list[Session]] = {}
        for h in hits:
            self.hits.setdefault(h.site, []).append(h)
        for s in sessions:
            self.sessions.setdefault(s.site, []).append(s)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    started = time.perf_counter()
    hits = generate_hits() + generate_session_hits()
    sessions = sessionize(hits)
    client = open_store(tmp_path_factory.mktemp("query_sessions") / "ch", hits, sessions)
    print(
        f"chDB store with {len(hits)} hits, {len(sessions)} sessions ready in "
        f"{time.perf_counter() - started:.2f}s"
    )
    yield Store(client, hits, sessions)
    client.close()


def check(store: Store, body: dict[str, Any], *, expect_tables: set[str] | None = None) -> None:
    site = body["site_id"]
    hits = store.hits.get(site, [])
    sessions = store.sessions.get(site, [])
    tables = []
    for plan in plans_for_every_table(body, hits):
        tables.append(plan.table)
        got = run(store.client, plan)
        want = full_oracle(plan, body, hits, sessions)
        assert got["meta"]["table"] == plan.table
        assert got["results"] == want["results"], (plan.table, plan.statements)
        if body.get("include", {}).get("total_rows"):
            assert got["meta"]["total_rows"] == want["total_rows"], plan.table
        if body.get("include", {}).get("time_labels"):
            labels = got["meta"]["time_labels"]
            time_index = next(i for i, d in enumerate(body["dimensions"]) if d.startswith("time"))
            assert {r["dimensions"][time_index] for r in got["results"]} <= set(labels)
    if expect_tables is not None:
        assert set(tables) == expect_tables


def test_the_store_holds_stale_replayed_and_deleted_rows(store: Store) -> None:
    raw = store.client.query("SELECT count(), uniqExact(session_id) FROM sessions").result_rows
    final = store.client.query(
        "SELECT count(), countIf(country = 'ZZ') FROM sessions FINAL WHERE is_deleted = 0"
    ).result_rows
    n_sessions = sum(len(v) for v in store.sessions.values())
    assert raw[0][0] > raw[0][1] > n_sessions  # versions and retired ids are there
    assert final[0] == (n_sessions, 0)


def test_sessions_are_interesting(store: Store) -> None:
    sessions = [s for v in store.sessions.values() for s in v]
    assert sum(1 for s in sessions if not s.is_bounce) > 500
    assert any(s.value("visit:country") != s.hits[-1].value("visit:country") for s in sessions)
    assert any(not s.hits[-1].counted for s in sessions)  # engagement extends a session
    assert any(len(s.values("event:page")) > 2 for s in sessions)


PERIODS: list[Any] = ["day", "24h", "7d", "30d", "month", "12mo", "all", "30m", "realtime"]
PERIODS += [["2026-10-20", "2026-10-30"], ["2026-11-09T10:17:13Z", "2026-11-10T12:04:31Z"]]


@pytest.mark.parametrize("site", list(SITES))
@pytest.mark.parametrize("date_range", PERIODS, ids=str)
def test_aggregate(store: Store, site: str, date_range: Any) -> None:
    check(store, {"site_id": site, "metrics": SESSION, "date_range": date_range})


def test_aggregate_of_nothing(store: Store) -> None:
    for site in ("utc.test", "nobody.test"):
        body = {"site_id": site, "metrics": SESSION, "date_range": ["2020-01-01", "2020-01-31"]}
        plan = plan_query(body, timezone="UTC", now=NOW, first_day=None)
        assert run(store.client, plan)["results"] == [{"metrics": [0, 0, 0, 0.0], "dimensions": []}]
        mixed = {**body, "metrics": ["visitors", "visits", "bounce_rate", "pageviews"]}
        plan = plan_query(mixed, timezone="UTC", now=NOW, first_day=None)
        assert run(store.client, plan)["results"] == [{"metrics": [0, 0, 0, 0], "dimensions": []}]


@pytest.mark.parametrize("site", list(SITES))
@pytest.mark.parametrize(
    ("date_range", "dimension"),
    [
        ("day", "time"),
        ("7d", "time:day"),
        ("7d", "time:hour"),
        ("30d", "time:week"),
        ("12mo", "time"),
        ("30m", "time:minute"),
        (["2026-10-24", "2026-10-26"], "time:hour"),  # Berlin's autumn change
        (["2026-10-31", "2026-11-02"], "time:hour"),  # New York's autumn change
    ],
    ids=str,
)
def test_time_series(store: Store, site: str, date_range: Any, dimension: str) -> None:
    check(
        store,
        {
            "site_id": site,
            "metrics": SESSION,
            "date_range": date_range,
            "dimensions": [dimension],
            "include": {"time_labels": True, "total_rows": True},
        },
    )


VISIT_DIMENSIONS = [
    "visit:entry_page",
    "visit:exit_page",
    "visit:source",
    "visit:referrer",
    "visit:utm_source",
    "visit:utm_medium",
    "visit:utm_campaign",
    "visit:utm_content",
    "visit:utm_term",
    "visit:device",
    "visit:browser",
    "visit:browser_version",
    "visit:os",
    "visit:os_version",
    "visit:country",
]
EVENT_DIMENSIONS = [
    "event:page",
    "event:name",
    "event:hostname",
    "event:props:plan",
    "event:props:author",
]


@pytest.mark.parametrize("dimension", VISIT_DIMENSIONS + EVENT_DIMENSIONS)
def test_breakdowns(store: Store, dimension: str) -> None:
    check(
        store,
        {
            "site_id": "ny.test",
            "metrics": SESSION,
            "date_range": "30d",
            "dimensions": [dimension],
            "include": {"total_rows": True},
        },
        expect_tables={"sessions"},
    )


def test_two_event_dimensions_and_time(store: Store) -> None:
    check(
        store,
        {
            "site_id": "berlin.test",
            "metrics": ["visits", "views_per_visit"],
            "date_range": "7d",
            "dimensions": ["time:day", "event:page", "event:name", "visit:device"],
            "include": {"total_rows": True, "time_labels": True},
        },
    )


FILTERS: list[list[Any]] = [
    ["is", "visit:country", ["DE", "FR"]],
    ["is_not", "visit:country", ["DE"]],
    ["contains", "visit:utm_campaign", ["'sale'"]],
    ["contains_not", "visit:browser", ["fox"]],
    ["is", "visit:source", ["direct / none"], {"case_sensitive": False}],
    ["is_not", "visit:source", ["Direct / None"]],
    ["is", "visit:entry_page", ["/blog", "(not set)"]],
    ["is_not", "visit:entry_page", ["/"]],
    ["contains", "visit:exit_page", ["BLOG"], {"case_sensitive": False}],
    ["contains_not", "visit:exit_page", ["blog"]],
    ["is", "event:page", ["/blog"]],
    ["is_not", "event:page", ["/blog"]],
    ["contains", "event:page", ["/blog"]],
    ["contains_not", "event:page", ["blog"]],
    ["is", "event:page", ["/blog/IT'S", "/line\nbreak"], {"case_sensitive": False}],
    ["is", "event:page", ["(not set)"]],
    ["is", "event:name", ["signup"]],
    ["is_not", "event:name", ["pageview"]],
    ["is", "event:name", ["engagement"]],
    ["is", "event:hostname", ["(not set)"]],
    ["is", "event:props:plan", ["pro"], {"case_sensitive": False}],
    ["is", "event:props:plan", ["(not set)"]],
    ["contains_not", "event:props:author", ["neil"]],
    ["not", ["is", "event:page", ["/"]]],
    ["or", [["is", "event:name", ["click"]], ["is", "visit:device", ["Mobile"]]]],
    ["and", [["contains", "event:page", ["blog"]], ["is_not", "event:page", ["/blog"]]]],
    ["and", [["is", "event:page", ["/pricing"]], ["is", "event:name", ["signup"]]]],
    ["not", ["and", [["contains", "event:page", ["blog"]], ["is", "visit:os", ["macOS"]]]]],
]


FILTER_CASES = [
    (flt, shape)
    for flt in FILTERS
    for shape in ("aggregate", "own", "visit:country", "event:page")
    if shape != "own" or flt[0] not in ("and", "or", "not")
]


@pytest.mark.parametrize(("flt", "shape"), FILTER_CASES, ids=str)
def test_filters(store: Store, flt: list[Any], shape: str) -> None:
    body: dict[str, Any] = {
        "site_id": "berlin.test",
        "metrics": SESSION,
        "date_range": "91d",
        "filters": [flt],
        "include": {"total_rows": True},
    }
    if shape != "aggregate":
        body["dimensions"] = [flt[1] if shape == "own" else shape]
    check(store, body)


def test_several_top_level_filters_on_one_event_dimension_test_one_value(store: Store) -> None:
    body: dict[str, Any] = {
        "site_id": "utc.test",
        "metrics": ["visits"],
        "date_range": "all",
        "filters": [
            ["contains", "event:page", ["blog"]],
            ["is", "visit:device", ["Desktop", "Mobile"]],
            ["is_not", "event:page", ["/blog"]],
        ],
    }
    check(store, body)
    plan = plan_query(body, timezone="UTC", now=NOW, first_day=None)
    assert plan.statements[0].sql.count("arrayExists") == 1


MIXED: list[dict[str, Any]] = [
    {"metrics": ["visitors", "visits", "pageviews", "bounce_rate"]},
    {"metrics": ["visit_duration", "visitors"], "date_range": "24h"},
    {"metrics": ["visits", "visitors"], "dimensions": ["time:day"]},
    {"metrics": ["visitors", "views_per_visit"], "dimensions": ["time:hour"], "date_range": "day"},
    {"metrics": ["visits", "percentage", "events"], "dimensions": ["event:page"]},
    {"metrics": ["bounce_rate", "visitors", "percentage"], "dimensions": ["visit:country"]},
    {"metrics": ["pageviews", "visits"], "dimensions": ["event:name"]},
    {"metrics": ["visitors", "visits"], "dimensions": ["visit:source", "visit:device"]},
    {"metrics": ["visits", "visitors"], "dimensions": ["event:props:plan"]},
    {
        "metrics": ["visitors", "visits", "visit_duration"],
        "dimensions": ["visit:browser"],
        "filters": [["contains", "event:page", ["blog"]]],
    },
    {
        "metrics": ["visits", "pageviews"],
        "dimensions": ["event:page"],
        "filters": [["is_not", "event:page", ["/"]]],
    },
]


@pytest.mark.parametrize("extra", MIXED, ids=str)
@pytest.mark.parametrize("site", ["kolkata.test", "ny.test"])
def test_mixed_families(store: Store, extra: dict[str, Any], site: str) -> None:
    body: dict[str, Any] = {
        "site_id": site,
        "date_range": "30d",
        "include": {"total_rows": True},
        **extra,
    }
    check(store, body)
    plan = plan_query(
        body,
        timezone=TIMEZONE_OF[site],
        now=NOW,
        first_day=first_day(store.hits[site], site),
    )
    assert plan.table.endswith("+sessions")
    assert plan.candidates == tuple(t for t in plan.candidates if t.endswith("+sessions"))


def test_mixed_reads_every_event_level(store: Store) -> None:
    body = {"site_id": "berlin.test", "metrics": ["visitors", "visits"], "date_range": "7d"}
    check(
        store,
        body,
        expect_tables={
            "rollup_day+sessions",
            "rollup_hour+sessions",
            "rollup_minute+sessions",
            "events+sessions",
        },
    )


ENTRY_EXIT: list[dict[str, Any]] = [
    {"metrics": ["visitors", "visits", "pageviews", "events", "percentage"]},
    {"metrics": ["percentage", "bounce_rate"], "filters": [["contains", "event:page", ["blog"]]]},
    {"metrics": ["visitors"], "filters": [["is", "visit:country", ["US"]]]},
]


@pytest.mark.parametrize("extra", ENTRY_EXIT, ids=str)
@pytest.mark.parametrize("dimension", ["visit:entry_page", "visit:exit_page"])
def test_entry_and_exit_pages_read_every_metric_from_sessions(
    store: Store, extra: dict[str, Any], dimension: str
) -> None:
    body: dict[str, Any] = {
        "site_id": "utc.test",
        "date_range": "30d",
        "dimensions": [dimension],
        "include": {"total_rows": True},
        **extra,
    }
    check(store, body, expect_tables={"sessions"})


def test_event_metrics_filtered_by_exit_page(store: Store) -> None:
    body: dict[str, Any] = {
        "site_id": "berlin.test",
        "metrics": ["visitors", "pageviews", "percentage"],
        "date_range": "month",
        "dimensions": ["event:page"],
        "filters": [["is_not", "visit:exit_page", ["/"]]],
        "include": {"total_rows": True},
    }
    check(store, body, expect_tables={"sessions"})


ORDERS: list[list[list[str]]] = [
    [["bounce_rate", "asc"]],
    [["visit_duration", "desc"]],
    [["views_per_visit", "desc"], ["visit:country", "desc"]],
    [["visits", "asc"], ["visitors", "desc"]],
    [["visitors", "desc"]],
    [["percentage", "asc"]],
    [["visit:country", "desc"]],
]


ORDER_CASES = [
    (order_by, mixed)
    for order_by in ORDERS
    for mixed in (False, True)
    if mixed or not {n for n, _ in order_by} & {"visitors", "percentage"}
]


@pytest.mark.parametrize(("order_by", "mixed"), ORDER_CASES, ids=str)
@pytest.mark.parametrize("pagination", [None, {"limit": 2}, {"limit": 3, "offset": 2}], ids=str)
def test_order_and_pagination(
    store: Store, order_by: list[list[str]], pagination: dict[str, int] | None, mixed: bool
) -> None:
    metrics = [*SESSION, "visitors", "percentage"] if mixed else [*SESSION]
    body: dict[str, Any] = {
        "site_id": "utc.test",
        "metrics": metrics,
        "date_range": "month",
        "dimensions": ["visit:country"],
        "order_by": order_by,
        "include": {"total_rows": True},
    }
    if pagination:
        body["pagination"] = pagination
    check(store, body)


def test_default_order_and_time_first(store: Store) -> None:
    check(
        store,
        {
            "site_id": "ny.test",
            "metrics": ["bounce_rate", "visitors"],
            "date_range": "7d",
            "dimensions": ["time:day", "event:page"],
            "pagination": {"limit": 7, "offset": 3},
            "include": {"total_rows": True},
        },
    )


def test_timing_of_typical_queries(store: Store) -> None:
    for body in [
        {"site_id": "berlin.test", "metrics": SESSION, "date_range": "30d"},
        {
            "site_id": "berlin.test",
            "metrics": ["visitors", "visits", "bounce_rate"],
            "date_range": "30d",
            "dimensions": ["event:page"],
        },
        {
            "site_id": "berlin.test",
            "metrics": ["visits", "visit_duration"],
            "date_range": "30d",
            "dimensions": ["visit:entry_page"],
            "filters": [["contains", "event:page", ["blog"]]],
        },
    ]:
        plan = plan_query(body, timezone="Europe/Berlin", now=NOW, first_day=None)
        started = time.perf_counter()
        run(store.client, plan)
        elapsed = 1000 * (time.perf_counter() - started)
        print(f"{plan.table} {body.get('dimensions')}: {elapsed:.1f} ms")


def test_rows_missing_from_one_family_get_zeros(store: Store) -> None:
    seen = set()
    for site in SITES:
        for body in [
            {"metrics": ["visitors", "visits"], "date_range": "30m", "dimensions": ["time:minute"]},
            {
                "metrics": ["visitors", "visits"],
                "date_range": "all",
                "dimensions": ["visit:source"],
                "filters": [["is", "event:name", ["signup"]]],
            },
        ]:
            full = {"site_id": site, **body}
            check(store, full)
            plan = plan_query(full, timezone=TIMEZONE_OF[site], now=NOW, first_day=None)
            for row in run(store.client, plan)["results"]:
                visitors, visits = row["metrics"]
                if not visitors or not visits:
                    seen.add("no visitors" if visits else "no visits")
    assert seen == {"no visitors", "no visits"}
