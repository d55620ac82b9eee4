"""Bound parameters (pure): no text from a request reaches a statement's text; every such text is
a parameter value, verbatim; the result cache tells apart statements that differ only in
their values. (ClickHouse reading the values back byte for byte: test_query_properties.py and
test_fuzz_query.py on chDB, test_e2e_hostile_values.py through the whole stack.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from clickhouse_connect.driver.binding import bind_query
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.query import QueryPlan, plan_query
from engine.query.cache import ResultCache
from engine.query.sql import Params, Statement
from engine.store.schema import SESSION_ROLLUP
from engine.store.session_rollup import stored_versions_statement
from tests.query_helpers import PLACEHOLDER
from tests.test_fuzz_query import HOSTILE
from tests.test_fuzz_query import filters as hostile_filters

NOW = datetime(2026, 11, 10, 12, 34, 56, tzinfo=UTC)
# Request text that no code constant contains: it must never be seen in a statement's text.
EVIL = [
    "'); DROP TABLE events; --",
    "a'b\\c{p0:String}d",
    "{p1:Array(String)}",
    "nul\x00byte",
    "new\nline\r\ttab",
    "' OR '1'='1",
    "back\\\\slash\\",
    '`tick` "dq" %s %(x)s $$',
]
# Every literal the code itself writes into a statement.
CONSTANTS = {
    "''",
    "'engagement'",
    "'pageview'",
    "'pageleave'",
    "'UTC'",
    "'%Y-%m-%d %H:%i:00'",
    "'%Y-%m-%d %H:00:00'",
}
LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'")
METRIC_SETS = [
    ["visitors", "pageviews", "events", "percentage"],
    ["visits", "bounce_rate", "visit_duration", "views_per_visit"],
    ["visitors", "visits", "lcp_p75"],
]


def every_plan(body: dict[str, Any], timezone: str = "Europe/Berlin") -> Iterator[QueryPlan]:
    """The plan on every table that can answer (and on sessions FINAL beside session_hour)."""
    default = plan_query(body, timezone=timezone, now=NOW, first_day=date(2026, 1, 1))
    for table in default.candidates:
        for session_table in (None, "sessions"):
            plan = plan_query(
                body,
                timezone=timezone,
                now=NOW,
                first_day=date(2026, 1, 1),
                table=table,
                session_table=session_table,
            )
            yield plan
            if not any(SESSION_ROLLUP in s.sql for s in plan.statements):
                break


def check_statement(statement: Statement) -> None:
    """Only code constants are quoted in the text; placeholders and values match one to one."""
    assert set(LITERAL.findall(statement.sql)) <= CONSTANTS, statement.sql
    assert {m.group(1) for m in PLACEHOLDER.finditer(statement.sql)} == set(statement.params)
    for text in EVIL:
        assert text not in statement.sql


def bound_values(plan: QueryPlan) -> set[str]:
    out: set[str] = set()
    for statement in plan.statements:
        for value in statement.params.values():
            out.update([value] if isinstance(value, str) else value)
    return out


def request_texts(flt: list[Any]) -> set[str]:
    """The texts of a filter tree that must reach the store as values: every value of every
    condition (but a `contains` of "" holds everywhere: its values are not needed)."""
    if flt[0] in ("and", "or"):
        return set().union(*(request_texts(f) for f in flt[1]))
    if flt[0] == "not":
        return request_texts(flt[1])
    values = {str(v) for v in flt[2]}
    if flt[0].startswith("contains") and "" in values:
        return set()
    return values


# --- Params ---------------------------------------------------------------------------------


def test_params_hand_out_typed_placeholders_and_record_the_values() -> None:
    params = Params()
    assert params.string("it's") == "{p0:String}"
    assert params.strings(["a", "b'"]) == "{p1:Array(String)}"
    assert params.date(date(2026, 11, 3)) == "{p2:Date}"
    moment = datetime(2026, 11, 3, 1, 2, 3, 4000, tzinfo=UTC) + timedelta(hours=-1)
    assert params.datetime(moment) == "{p3:DateTime('UTC')}"
    assert params.datetime(moment, precision=3) == "{p4:DateTime64(3, 'UTC')}"
    # An equal value of the same type is sent once; of another type it is another value.
    assert params.string("it's") == "{p0:String}"
    assert params.strings(["it's"]) == "{p5:Array(String)}"
    statement = params.statement(
        "SELECT {p0:String}, {p4:DateTime64(3, 'UTC')}, {p5:Array(String)}"
    )
    assert statement.params == {"p0": "it's", "p4": "2026-11-03 00:02:03.004000", "p5": ["it's"]}
    assert params.statement(
        "SELECT {p1:Array(String)}, {p2:Date}, {p3:DateTime('UTC')}"
    ).params == {
        "p1": ["a", "b'"],
        "p2": "2026-11-03",
        "p3": "2026-11-03 00:02:03",
    }


def test_params_refuse_what_cannot_be_sent() -> None:
    with pytest.raises(UnicodeEncodeError):
        Params().string("\ud800")
    with pytest.raises(UnicodeEncodeError):
        Params().strings(["ok", "\udfff"])
    with pytest.raises(ValueError):
        Params().datetime(datetime(2026, 1, 1))


# --- plans ----------------------------------------------------------------------------------


@pytest.mark.parametrize("metrics", METRIC_SETS)
@pytest.mark.parametrize(
    "dimensions",
    [[], ["event:page"], [f"event:props:{EVIL[1]}"], ["time:hour", "visit:source"]],
)
def test_hostile_request_text_is_bound_on_every_table(
    metrics: list[str], dimensions: list[str]
) -> None:
    site = EVIL[0]
    flt = [
        "or",
        [
            ["is", "event:page", EVIL],
            ["is_not", "visit:utm_source", EVIL, {"case_sensitive": False}],
            ["contains", f"event:props:{EVIL[2]}", EVIL],
            ["not", ["contains_not", "event:name", EVIL, {"case_sensitive": False}]],
        ],
    ]
    for date_range in (
        "7d",
        "day",
        "30m",
        ["2026-11-01T10:11:12.5+05:30", "2026-11-09T00:00:00+00:00"],
    ):
        body = {
            "site_id": site,
            "metrics": metrics,
            "date_range": date_range,
            "dimensions": dimensions,
            "filters": [flt],
        }
        if "percentage" in metrics and not dimensions:
            continue
        for plan in every_plan(body):
            for statement in plan.statements:
                check_statement(statement)
            values = bound_values(plan)
            assert {site, *EVIL} <= values, plan.table
            assert {d.removeprefix("event:props:") for d in dimensions if "props" in d} <= values


@settings(max_examples=150, deadline=None)
@given(
    site=st.sampled_from(HOSTILE).filter(bool) | st.text(min_size=1, max_size=20),
    flt=hostile_filters,
    dimensions=st.sampled_from(
        [["event:page"], ["visit:utm_source"], ["event:props:plan"], ["time", "event:page"]]
    ),
    metrics=st.sampled_from(METRIC_SETS),
)
def test_generated_hostile_queries_write_only_constants(
    site: str, flt: list[Any], dimensions: list[str], metrics: list[str]
) -> None:
    body = {
        "site_id": site,
        "metrics": metrics,
        "date_range": "day",
        "dimensions": dimensions,
        "filters": [flt],
    }
    for plan in every_plan(body, timezone="Asia/Kolkata"):
        for statement in plan.statements:
            check_statement(statement)
        assert {site, *request_texts(flt)} <= bound_values(plan)


def test_the_client_sends_the_text_as_written_and_the_values_apart() -> None:
    """clickhouse-connect binds server-side (for chDB and HTTP alike) only when it finds the
    placeholders; otherwise it would format the values into the text itself."""
    body = {
        "site_id": EVIL[0],
        "metrics": ["visitors", "visits"],
        "date_range": "7d",
        "dimensions": ["time:day", f"event:props:{EVIL[1]}"],
        "filters": [["contains", "event:page", EVIL, {"case_sensitive": False}]],
    }
    for plan in every_plan(body):
        for statement in plan.statements:
            text, bound = bind_query(statement.sql, statement.params)
            assert text == statement.sql
            assert set(bound) == {f"param_{name}" for name in statement.params}


def test_the_session_lookup_of_the_store_writer_binds_the_sites() -> None:
    rows = [{"session_id": 7, "site": EVIL[0], "start": 86400.5}]
    statement = stored_versions_statement(rows)
    check_statement(statement)
    assert statement.params == {"p0": [EVIL[0]]}


# --- the result cache -----------------------------------------------------------------------


def test_result_cache_keys_hold_the_bound_values() -> None:
    """Same text, other values: another answer. (A key of the text alone would serve
    yesterday's `7d` today, or one filter's answer for another.)"""
    body = {"site_id": "a.test", "metrics": ["visitors"], "date_range": "7d"}
    plans = [
        plan_query(body, timezone="UTC", now=NOW, first_day=None),
        plan_query(body, timezone="UTC", now=NOW + timedelta(days=1), first_day=None),
        plan_query(
            {**body, "filters": [["is", "event:page", ["/a"]]]},
            timezone="UTC",
            now=NOW,
            first_day=None,
        ),
        plan_query(
            {**body, "filters": [["is", "event:page", ["/b"]]]},
            timezone="UTC",
            now=NOW,
            first_day=None,
        ),
    ]
    assert plans[0].statements[0].sql == plans[1].statements[0].sql
    assert plans[2].statements[0].sql == plans[3].statements[0].sql
    keys = [ResultCache.key("a.test", p.statements, (0, 1), b"same") for p in plans]
    assert len(set(keys)) == len(keys)
    # And equal values give equal keys: the cache does hit.
    again = plan_query(body, timezone="UTC", now=NOW + timedelta(hours=1), first_day=None)
    assert ResultCache.key("a.test", again.statements, (0, 1), b"same") == keys[0]
