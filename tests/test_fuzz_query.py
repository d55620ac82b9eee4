"""Fuzzing the Stats API query path: the parser takes any JSON and answers a plan or a
QueryError, nothing else; text from a request reaches SQL only as bound parameters that
ClickHouse reads back as exactly that text (checked on a real chDB store against the Python
oracle, with hostile strings as data, as filter values and as property names)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import QueryError
from engine.query import plan_query
from engine.query.sql import Params
from tests.query_helpers import CHOICES, NOW, Hit, open_store, oracle, plans_for_every_table, run

SITE = "utc.test"
HOSTILE = [
    "'; DROP TABLE events; --",
    "' OR '1'='1",
    "\\",
    "\\'",
    "'",
    "''",
    '"',
    "`x`",
    "%",
    "_",
    "%_%",
    "\x00",
    "\n\r\t",
    "\x1b[31m",
    "{p0:String}",
    "{name:Identifier}",
    "?",
    "%s",
    "$1",
    "x' || 'y",
    "\\x27",
    "é",
    "\U0001d54f\U0001f389",
    "\u2028\u2029",
    "\ufeff",
    "SELECT 1",
    ")) OR 1=1 --",
    "/*",
    "*/",
    "(not set)",
    "Direct / None",
]


def hostile_hits() -> list[Hit]:
    rng = random.Random(3)
    hits = []
    for i, text in enumerate(HOSTILE * 3):
        fields = {col: rng.choice(options) for col, options in CHOICES.items()}
        fields["page"] = "/" + text if i % 2 else text
        fields["utm_source"] = text
        hits.append(
            Hit(
                site=SITE,
                ts=NOW - timedelta(minutes=5 + i * 7),
                name=rng.choice(["pageview", "pageview", text]) or "pageview",
                vid=rng.getrandbits(64),
                fields=fields,
                props={text: HOSTILE[(i + 1) % len(HOSTILE)], "plan": text} if text else {},
            )
        )
    return hits


Store = tuple[Any, list[Hit]]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    hits = hostile_hits()
    client = open_store(Path(tmp_path_factory.mktemp("fuzz_query")) / "ch", hits)
    yield client, hits
    client.close()


texts = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40))
dimensions = st.one_of(
    st.sampled_from(["event:page", "event:name", "visit:utm_source", "event:props:plan"]),
    st.sampled_from(HOSTILE).filter(bool).map(lambda k: f"event:props:{k}"),
)
conditions = st.tuples(
    st.sampled_from(["is", "is_not", "contains", "contains_not"]),
    dimensions,
    st.lists(texts, min_size=1, max_size=3),
    st.booleans(),
).map(lambda t: [t[0], t[1], t[2]] + ([] if t[3] else [{"case_sensitive": False}]))
filters = st.recursive(
    conditions,
    lambda inner: st.one_of(
        st.tuples(st.sampled_from(["and", "or"]), st.lists(inner, min_size=1, max_size=3)).map(
            list
        ),
        inner.map(lambda f: ["not", f]),
    ),
    max_leaves=5,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flt=filters, breakdown=st.one_of(st.none(), dimensions))
def test_hostile_filters_match_the_oracle_on_every_table(
    store: Store, flt: list[Any], breakdown: str | None
) -> None:
    client, hits = store
    body: dict[str, Any] = {
        "site_id": SITE,
        "metrics": ["visitors", "pageviews", "events"],
        "date_range": "day",
        "filters": [flt],
    }
    if breakdown is not None:
        body["dimensions"] = [breakdown]
    for plan in plans_for_every_table(body, hits):
        got = run(client, plan)
        want = oracle(plan, body, hits)
        assert got["results"] == want["results"], (plan.table, plan.statements)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.text(), min_size=1, max_size=50))
def test_every_bound_string_reads_back_as_itself(store: Store, values: list[str]) -> None:
    client, _ = store
    params = Params()
    statement = params.statement(f"SELECT {params.strings(values)}, [{params.string(values[0])}]")
    (row,) = client.query(statement.sql, parameters=statement.params).result_rows
    assert row == (values, values[:1])


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
VALID_PARTS: dict[str, Any] = {
    "metrics": st.lists(
        st.sampled_from(["visitors", "pageviews", "events", "visits", "bounce_rate"]),
        min_size=1,
        max_size=3,
        unique=True,
    ),
    "date_range": st.sampled_from(["day", "7d", "30m", "all", "month", "realtime"])
    | st.just(["2026-11-01", "2026-11-09"]),
    "dimensions": st.lists(
        dimensions | st.sampled_from(["time:day", "time:hour"]), max_size=2, unique=True
    ),
    "filters": st.lists(filters, max_size=2),
    "pagination": st.fixed_dictionaries({"limit": st.integers(1, 10_000)}),
}


@st.composite
def bodies(draw: st.DrawFn) -> Any:
    """A valid body, then none, one or two of its parts replaced by arbitrary JSON."""
    body = {
        "site_id": SITE,
        **{
            k: draw(v)
            for k, v in VALID_PARTS.items()
            if draw(st.booleans()) or k in ("metrics", "date_range")
        },
    }
    for key in draw(
        st.lists(st.sampled_from([*VALID_PARTS, "order_by", "include", "x"]), max_size=2)
    ):
        body[key] = draw(JSON)
    return body


PARSED = {"ok": 0, "rejected": 0}


@settings(max_examples=1200, deadline=None)
@given(body=bodies() | JSON)
def test_query_parser_answers_a_plan_or_a_query_error(body: Any) -> None:
    try:
        plan = plan_query(body, timezone="Europe/Berlin", now=NOW, first_day=None)
    except QueryError as error:
        assert str(error)  # names what is wrong
        PARSED["rejected"] += 1
        return
    PARSED["ok"] += 1
    assert plan.statements and all(isinstance(s.sql, str) for s in plan.statements)


def test_report_parsed_counts() -> None:
    print(f"query parser fuzz: {PARSED}")
