"""Table choice and SQL shape (pure); the SQL itself runs in test_query_engine.py."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.query import plan_query, sql
from engine.query.dates import COARSE_DAY_LEVELS, month_span_cover
from engine.query.day_levels import closed_day_cover, year_prefix_cover
from engine.query.planner import CANDIDATES, SKETCH_SLACK
from tests.query_helpers import inlined

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
    assert p.statements[1].sql.startswith("SELECT count() FROM (")
    p = plan(metrics=["pageviews", "visitors"], dimensions=["time", "visit:source"])
    assert p.order_by == [("time", "asc"), ("pageviews", "desc")]
    assert p.statements[0].sql.endswith(
        "ORDER BY d0 ASC, m_pageviews DESC, d1 ASC LIMIT 10000 OFFSET 0"
    )
    p = plan()
    assert p.order_by == [("visitors", "desc")]
    assert "ORDER BY" not in p.statements[0].sql


def test_every_events_statement_skips_session_only_events() -> None:
    p = plan(
        metrics=["visitors", "percentage"],
        dimensions=["event:props:plan"],
        include={"total_rows": True},
    )
    assert len(p.statements) == 3
    for s in p.statements:
        assert "name NOT IN ('engagement', 'pageleave')" in s.sql


def test_request_values_are_bound_parameters() -> None:
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
    (statement,) = p.statements
    assert p.table == "events"
    assert "site = {p0:String}" in statement.sql
    assert "props[{p3:String}] IN {p4:Array(String)}" in statement.sql
    assert "ts >= {p1:DateTime64(3, 'UTC')} AND ts < {p2:DateTime64(3, 'UTC')}" in statement.sql
    assert statement.params == {
        "p0": "it's.com",
        "p1": "2026-11-03 00:00:00",
        "p2": "2026-11-10 00:00:00",
        "p3": "o'k\\",
        "p4": ["a'\nb\\"],
    }


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
    sql = inlined(p.statements[0])
    assert "dim = 'visit:source'" in sql
    assert "day >= '2026-11-03' AND day < '2026-11-10'" in sql
    assert "(value IN ['Direct / None', 'Google'] OR value = '')" in sql
    assert "dim = ''" in inlined(plan().statements[0])


# --- web vitals -----------------------------------------------------------------------------

VITALS = ["lcp_p75", "inp_p75", "ttfb_p75", "fcp_p75", "cls_p75"]


def test_vitals_read_the_rollup_sketches_and_skip_vitals_only_groups() -> None:
    p = plan(metrics=["visitors", *VITALS], dimensions=["event:page"], include={"total_rows": True})
    assert p.table == "rollup_day" and p.columns == ("visitors", *VITALS)
    main, count = (s.sql for s in p.statements)
    for col in ("lcp", "inp", "ttfb", "fcp", "cls"):
        assert f"quantileDDMerge(0.005, 0.75)({col}) AS m_{col}_p75" in main
    assert "GROUP BY d0 HAVING sum(events) > 0 ORDER BY m_visitors DESC" in main
    assert "HAVING sum(events) > 0" in count
    # An aggregate has no groups to drop.
    assert "HAVING" not in plan(metrics=["lcp_p75"]).statements[0].sql
    # Ordering by a vital.
    ordered = plan(metrics=["lcp_p75"], dimensions=["visit:device"], order_by=[["lcp_p75", "asc"]])
    assert "ORDER BY m_lcp_p75 ASC, d0 ASC" in ordered.statements[0].sql


def test_vitals_on_the_events_table_count_only_counted_events() -> None:
    p = plan_query(
        {
            "site_id": "v.test",
            "metrics": ["visitors", "events", "lcp_p75", "cls_p75", "percentage"],
            "date_range": "7d",
            "dimensions": ["event:page", "visit:device"],
        },
        timezone="UTC",
        now=NOW,
        first_day=None,
        table="events",
    )
    main, total = (s.sql for s in p.statements)
    counted = "name NOT IN ('engagement', 'pageleave')"
    # Rows carrying the vitals asked for are read, whatever their name ...
    assert f"({counted} OR lcp IS NOT NULL OR cls IS NOT NULL)" in main
    # ... but count nothing, and make no row on their own.
    assert f"uniqCombined64If(vid, {counted}) AS m_visitors" in main
    assert f"countIf({counted}) AS m_events" in main
    assert "quantileDD(0.005, 0.75)(lcp) AS m_lcp_p75" in main
    assert f"HAVING countIf({counted}) > 0" in main
    assert f"uniqCombined64If(vid, {counted})" in total  # the percentage base
    # Without vitals the events SQL is as before.
    plain = plan(metrics=["visitors"], dimensions=["event:page", "visit:device"]).statements[0].sql
    assert f"AND {counted} AND" in plain and "If(" not in plain and "HAVING" not in plain


def test_vitals_with_session_metrics_join_as_event_metrics() -> None:
    p = plan(metrics=["visits", "lcp_p75"], dimensions=["event:page"])
    assert p.table == "rollup_day+sessions"
    assert p.parts[0].metrics == ("lcp_p75",) and p.parts[1].metrics == ("visits",)


def test_vitals_render_rounded_and_null_without_samples() -> None:
    p = plan(metrics=["visitors", "lcp_p75", "cls_p75", "ttfb_p75"], dimensions=["event:page"])
    assert p.columns == ("visitors", "lcp_p75", "ttfb_p75", "cls_p75")
    out = p.render([[("/a", 3, 2499.5, 80.4, 0.12345), ("/b", 1, float("nan"), 0.0, None)]])
    assert [r["metrics"] for r in out["results"]] == [[3, 2500, 0.123, 80], [1, None, None, 0]]
    assert all(isinstance(r["metrics"][1], int | None) for r in out["results"])


# --- long ranges and rankings ---------------------------------------------------------------


def test_long_ranges_read_whole_quarters_months_and_weeks_from_their_levels() -> None:
    after = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)  # every span closed (see below)
    p = plan(now=after, date_range=["2025-11-27", "2026-11-26"], dimensions=["visit:source"])
    sql = inlined(p.statements[0])
    assert p.table == "rollup_day"  # the resolution: local days
    # Its ends are month spans, so no week is read whole (see the spans below; weeks: below).
    assert "FROM rollup_month WHERE" in sql and "FROM rollup_week" not in sql
    # January to October 2026 is one year prefix, December 2025 a month.
    assert "(month >= '2025-12-01' AND month < '2026-01-01')" in sql
    # The ends are month spans (the days closed at `after`: before 2026-11-26), each span read
    # only when the writer has built it, else its quarters, months, or days.
    # Which spans are built: one scalar subquery in the statement's WITH, evaluated once.
    assert sql.startswith(
        "WITH (SELECT groupArray((kind, day)) FROM rollup_span FINAL WHERE site = 'example.com'"
        " AND dim = '' AND is_deleted = 0 AND ((kind = 1 AND day = '2025-11-27')"
        " OR (kind = 2 AND day = '2026-10-01')"
        " OR (kind = 0 AND day = '2026-11-25'))) AS spans_built SELECT "
    )
    built = "has(spans_built, "
    suffix, prefix = "(toUInt8(1), toDate('2025-11-27')))", "(toUInt8(0), toDate('2026-11-25')))"
    year = "(toUInt8(2), toDate('2026-10-01')))"
    # The spans in one SELECT (each branch of a UNION costs about 10 ms).
    assert sql.count("FROM rollup_span FINAL WHERE site = 'example.com' AND dim = 'visit") == 1
    assert (
        f"AND is_deleted = 0 AND ((kind = 1 AND day = '2025-11-27' AND {built}{suffix})"
        f" OR (kind = 2 AND day = '2026-10-01' AND {built}{year})"
        f" OR (kind = 0 AND day = '2026-11-25' AND {built}{prefix}))"
    ) in sql
    # A year prefix not built yet is read by quarters and months; a month span by day.
    assert f"(quarter >= '2026-01-01' AND quarter < '2026-10-01' AND NOT {built}{year})" in sql
    assert f"(month >= '2026-10-01' AND month < '2026-11-01' AND NOT {built}{year})" in sql
    assert f"(day >= '2026-11-01' AND day < '2026-11-26' AND NOT {built}{prefix})" in sql
    assert f"(day >= '2025-11-27' AND day < '2025-12-01' AND NOT {built}{suffix})" in sql
    assert "(day >= '2026-11-26' AND day < '2026-11-27'))" in sql  # not closed: days
    # Buckets of days read days; weeks may straddle months; a short range reads days.
    assert "rollup_week" not in plan(date_range="30d", dimensions=["time:day"]).statements[0].sql
    by_month = plan(date_range="12mo", dimensions=["time:month"]).statements[0].sql
    assert "rollup_month" in by_month and "rollup_week" not in by_month
    assert "rollup_quarter" not in by_month  # a quarter spans three month buckets
    assert "rollup_month" not in plan(date_range="12mo", dimensions=["time:week"]).statements[0].sql
    assert "UNION ALL" not in plan(date_range=["2026-11-03", "2026-11-08"]).statements[0].sql


def test_coarse_levels_serve_only_spans_that_ended_before_today() -> None:
    """The writer feeds week, month and quarter levels every few seconds: live hits land on
    today, so a span holding today reads days, even when its week or month is whole."""
    first, end = date(2026, 10, 1), date(2026, 11, 30)
    sunday = date(2026, 11, 29)
    assert closed_day_cover(first, end, sunday, COARSE_DAY_LEVELS) == [
        ("month", date(2026, 10, 1), date(2026, 11, 1)),
        ("day", date(2026, 11, 1), date(2026, 11, 2)),
        ("week", date(2026, 11, 2), date(2026, 11, 23)),
        ("day", date(2026, 11, 23), date(2026, 11, 30)),
    ]
    # A day later, that week is closed and its level serves it.
    monday = sunday + timedelta(days=1)
    assert ("week", date(2026, 11, 2), date(2026, 11, 30)) in closed_day_cover(
        first, end, monday, COARSE_DAY_LEVELS
    )
    # Today is the site's: 23:30 UTC on Sunday is Monday in Berlin, so Sunday has ended there.
    late = datetime(2026, 11, 29, 23, 30, tzinfo=UTC)
    weeks = {"date_range": ["2026-11-02", "2026-11-29"], "dimensions": ["time:week"]}
    berlin = inlined(plan(tz="Europe/Berlin", now=late, **weeks).statements[0])
    assert "(week >= '2026-11-02' AND week < '2026-11-30')" in berlin
    assert "(week >= '2026-11-02' AND week < '2026-11-23')" in inlined(
        plan(now=late, **weeks).statements[0]
    )


@given(
    first=st.dates(date(2024, 1, 1), date(2027, 12, 31)),
    days=st.integers(1, 800),
    today_offset=st.integers(-50, 850),
)
def test_closed_day_cover_partitions_the_range(first: date, days: int, today_offset: int) -> None:
    today = first + timedelta(days=today_offset)
    spans = closed_day_cover(first, first + timedelta(days=days), today, COARSE_DAY_LEVELS)
    covered = [a + timedelta(days=i) for _, a, b in spans for i in range((b - a).days)]
    assert covered == [first + timedelta(days=i) for i in range(days)]  # each date once, in order
    assert all(b <= today for level, _, b in spans if level != "day")
    assert all(a[0] != "day" or b[0] != "day" for a, b in pairwise(spans))


@given(
    first=st.dates(date(2024, 1, 1), date(2027, 12, 31)),
    days=st.integers(1, 800),
    closed_offset=st.integers(-50, 850),
)
def test_month_span_cover_partitions_the_range_into_closed_month_spans(
    first: date, days: int, closed_offset: int
) -> None:
    end = first + timedelta(days=days)
    closed = first + timedelta(days=closed_offset)
    pieces = month_span_cover(first, end, closed)
    covered = [a + timedelta(days=i) for _, a, b in pieces for i in range((b - a).days)]
    assert covered in ([], [first + timedelta(days=i) for i in range(days)])
    for kind, a, b in pieces:
        last = b - timedelta(days=1)
        if kind is None:
            continue
        # A span is a stretch of one month, of closed days, worth it (two days or more), not
        # the whole month (the month level's row), and starts or ends at its month's edge.
        assert a.replace(day=1) == last.replace(day=1) and b <= closed and b - a >= timedelta(2)
        assert not (a.day == 1 and b.day == 1)
        if kind == "prefix":
            assert a.day == 1
        else:
            assert b.day == 1
    # Used whenever the range reaches over a month's edge into closed days of two months.
    starts = [first + timedelta(days=i) for i in range(1, days) if (first + timedelta(i)).day == 1]
    if starts and (starts[0] - first).days >= 2 and first.day != 1 and starts[0] <= closed:
        assert pieces


@given(
    first=st.dates(date(2023, 1, 1), date(2027, 12, 31)),
    days=st.integers(1, 1200),
    closed_offset=st.integers(-50, 1250),
)
def test_year_prefixes_partition_the_range_into_closed_whole_months_from_january(
    first: date, days: int, closed_offset: int
) -> None:
    end = first + timedelta(days=days)
    closed = first + timedelta(days=closed_offset)
    spans = month_span_cover(first, end, closed)
    pieces = year_prefix_cover(spans or [(None, first, end)], closed)
    covered = [a + timedelta(days=i) for _, a, b in pieces for i in range((b - a).days)]
    assert covered in ([], [first + timedelta(days=i) for i in range(days)])
    assert [p for p in pieces if p[0] in ("prefix", "suffix")] == [
        p for p in spans if p[0] is not None
    ]
    for kind, a, b in pieces:
        if kind == "year_prefix":
            # January to a closed month of the same year, two months or more.
            assert (a.month, a.day, b.day) == (1, 1, 1) and b <= closed
            assert (b - timedelta(days=1)).year == a.year and b >= date(a.year, 3, 1)
    # Used whenever January 1st to the end of February lies in the range's closed days.
    years = [date(y, 1, 1) for y in range(first.year, end.year + 1)]
    if any(first <= y and date(y.year, 3, 1) <= min(end, closed) for y in years):
        assert any(kind == "year_prefix" for kind, _, _ in pieces)


def test_ranking_by_visitors_merges_the_sketches_of_the_top_candidates_only() -> None:
    p = plan(dimensions=["event:page"], pagination={"limit": 10, "offset": 20})
    (narrowed,) = p.narrowed
    assert narrowed.index == 0 and narrowed.limit == 10 and narrowed.visitors_at == 1
    sql = inlined(p.statements[0])
    assert "ORDER BY u DESC, d0 ASC LIMIT 36)" in sql  # offset + limit + 5, and the next one
    assert "ranked[36].2 AS bound_outside" in sql
    assert "arraySlice(ranked, 1, 35)" in sql
    assert narrowed.full.sql.endswith("ORDER BY m_visitors DESC, d0 ASC LIMIT 10 OFFSET 20")
    assert "ranked" not in narrowed.full.sql
    # Not for visit dimensions (every event of a visit repeats the value: a loose bound),
    # an ascending or time order, the events table, or sessions.
    assert not plan(dimensions=["visit:source"]).narrowed
    assert not plan(dimensions=["event:page"], order_by=[["visitors", "asc"]]).narrowed
    assert not plan(dimensions=["event:page", "time:day"]).narrowed
    assert not plan(dimensions=["event:props:plan"]).narrowed
    assert not plan(dimensions=["visit:entry_page"]).narrowed
    assert not plan(metrics=["visitors", "visits"], dimensions=["event:page"]).narrowed


def test_a_cheap_order_finds_its_page_before_merging_sketches() -> None:
    sql = inlined(
        plan(metrics=["pageviews", "visitors"], dimensions=["visit:country"]).statements[0]
    )
    assert " IN (SELECT d0 FROM (SELECT if(value = '', '(not set)', value) AS d0, " in sql
    assert "ORDER BY m_pageviews DESC, d0 ASC LIMIT 10000)" in sql


def test_recheck_keeps_a_proven_page_and_reruns_the_others() -> None:
    p = plan(dimensions=["event:page"], pagination={"limit": 2})
    full = p.narrowed[0].full
    # Outside the candidates at most 80 events: 9/8 * 80 = 90 < 100 visitors on the page.
    rows = [[("/", 300, 80), ("/a", 100, 80)]]
    assert p.recheck(rows) == {}
    assert rows == [[("/", 300), ("/a", 100)]]
    # 9/8 * 89 >= 100: a group left out might outrank the last row.
    rows = [[("/", 300, 89), ("/a", 100, 89)]]
    assert p.recheck(rows) == {0: full}
    # A page not full with groups left out; none left out; no rows at all.
    assert p.recheck([[("/", 300, 1)]]) == {0: full}
    assert p.recheck([[("/", 300, 0)]]) == {}
    assert p.recheck([[]]) == {}


@settings(max_examples=400)
@given(
    groups=st.lists(st.tuples(st.integers(0, 60), st.floats(0.0, 1.0)), max_size=40),
    limit=st.integers(1, 6),
    offset=st.integers(0, 8),
)
def test_a_proven_narrowed_page_is_the_page_of_every_group(
    groups: list[tuple[int, float]], limit: int, offset: int
) -> None:
    """Groups with counted events (the bound, falling off with the rank as on real sites, so
    that pages are often proven) and a visitors estimate anywhere up to SKETCH_SLACK times it:
    whenever recheck keeps the narrowed rows, they are the rows the full ranking gives (most
    visitors first, then the label), ties included."""
    p = plan(dimensions=["event:page"], pagination={"limit": limit, "offset": offset})
    num, den = SKETCH_SLACK
    # (label, bound, estimate); estimates collide often, so ties are exercised.
    rows = []
    for i, (extra, f) in enumerate(groups):
        bound = 400 // (i + 1) + extra
        rows.append((f"/{i}", bound, int(bound * num / den * f)))
    by_bound = sorted(rows, key=lambda r: (-r[1], r[0]))
    taken = offset + limit + CANDIDATES
    outside = by_bound[taken][1] if len(by_bound) > taken else 0

    def page(of: list[tuple[str, int, int]]) -> list[tuple[str, int]]:
        ranked = sorted(of, key=lambda r: (-r[2], r[0]))
        return [(label, est) for label, _, est in ranked[offset : offset + limit]]

    narrowed = [[(*row, outside) for row in page(by_bound[:taken])]]
    if not p.recheck(narrowed):
        assert narrowed == [page(rows)]
