"""Property tests on the real engine (chDB): any bound string survives the round trip, and any
generated filter tree compiles to SQL that ClickHouse accepts and that answers exactly as the
Python oracle, on every table that can answer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from engine.dimensions import FIELD_OF, empty_label
from engine.query.sql import Params
from tests.query_helpers import (
    CHOICES,
    NAMES,
    Hit,
    generate_hits,
    open_store,
    oracle,
    plans_for_every_table,
    run,
)

pytestmark = pytest.mark.integration

Store = tuple[Any, dict[str, list[Hit]]]
SITE = "berlin.test"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    hits = [h for h in generate_hits(seed=3, per_site=600) if h.site == SITE]
    client = open_store(tmp_path_factory.mktemp("query_properties") / "ch", hits)
    yield client, {SITE: hits}
    client.close()


TEXT = st.text(alphabet="ab/'\\\n\t\x00\x7féÉ€ -_%", max_size=6)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=st.text(alphabet=st.characters(exclude_categories=["Cs"])))
@example("it's")
@example("back\\slash\\")
@example("\\'; DROP TABLE events; --")
@example("line\nbreak\r\ttab\x00nul")
@example("€ é \U0001f600")
@example("{p0:String}")
def test_bound_strings_round_trip(store: Store, value: str) -> None:
    client, _ = store
    params = Params()
    one, many = params.string(value), params.strings([value, value + "'", ""])
    statement = params.statement(f"SELECT {one}, length({one}), {many}")
    assert statement.sql == "SELECT {p0:String}, length({p0:String}), {p1:Array(String)}"
    assert client.query(statement.sql, parameters=statement.params).result_rows == [
        (value, len(value.encode("utf-8")), [value, value + "'", ""])
    ]


DIMENSIONS = [*FIELD_OF, "event:props:plan", "event:props:author"]


def _values_for(dimension: str) -> st.SearchStrategy[str]:
    if dimension == "event:name":
        known = sorted(set(NAMES))
    elif dimension.startswith("event:props:"):
        known = ["free", "Pro", "pro", "o'neil"]
    else:
        known = [v for v in CHOICES[FIELD_OF[dimension]] if v]
    known += [empty_label(dimension), empty_label(dimension).upper()]
    parts = [v[i:j] for v in known for i in range(len(v)) for j in range(i + 1, len(v) + 1)]
    return st.one_of(st.sampled_from(known), st.sampled_from(parts or known), TEXT)


@st.composite
def condition(draw: st.DrawFn, dimensions: list[str]) -> list[Any]:
    dimension = draw(st.sampled_from(dimensions))
    op = draw(st.sampled_from(["is", "is_not", "contains", "contains_not"]))
    values = draw(st.lists(_values_for(dimension), min_size=1, max_size=3))
    out: list[Any] = [op, dimension, values]
    case = draw(st.sampled_from([None, True, False]))
    if case is not None:
        out.append({"case_sensitive": case})
    return out


def filter_tree(dimensions: list[str]) -> st.SearchStrategy[list[Any]]:
    return st.recursive(
        condition(dimensions),
        lambda children: st.one_of(
            st.builds(lambda cs: ["and", cs], st.lists(children, min_size=1, max_size=3)),
            st.builds(lambda cs: ["or", cs], st.lists(children, min_size=1, max_size=3)),
            st.builds(lambda c: ["not", c], children),
        ),
        max_leaves=5,
    )


@st.composite
def query_body(draw: st.DrawFn) -> dict[str, Any]:
    one = draw(st.booleans())  # one dimension throughout: the rollups can answer too
    dimension = draw(st.sampled_from(DIMENSIONS))
    dims_for_filters = [dimension] if one else DIMENSIONS
    filters = draw(st.lists(filter_tree(dims_for_filters), max_size=3))
    shape = draw(st.sampled_from(["aggregate", "breakdown", "time+breakdown", "time"]))
    body: dict[str, Any] = {
        "site_id": SITE,
        "metrics": ["visitors", "pageviews", "events"],
        "date_range": draw(st.sampled_from(["day", "24h", "7d", "30d", "all", "30m"])),
        "filters": filters,
    }
    if shape != "aggregate":
        body["dimensions"] = {
            "breakdown": [dimension],
            "time+breakdown": ["time", dimension],
            "time": ["time"],
        }[shape]
        if shape != "time":
            body["metrics"].append("percentage")
        body["include"] = {"total_rows": True}
        body["pagination"] = {"limit": draw(st.integers(1, 5)), "offset": draw(st.integers(0, 3))}
    return body


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=query_body())
def test_filter_trees_answer_like_the_oracle(store: Store, body: dict[str, Any]) -> None:
    client, by_site = store
    hits = by_site[SITE]
    for plan in plans_for_every_table(body, hits):
        got = run(client, plan)
        want = oracle(plan, body, hits)
        assert got["results"] == want["results"], (plan.table, plan.statements)
        event(f"table {plan.table}")
        event("rows" if any(any(r["metrics"]) for r in got["results"]) else "no rows")
        if "include" in body:
            assert got["meta"]["total_rows"] == want["total_rows"], plan.table
