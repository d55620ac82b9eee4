"""Property tests on the real engine (chDB): any filter tree, any mix of event and session
metrics, any order and page answer exactly as the Python session oracle, on every table
(or pair of tables) that can answer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.dimensions import FIELD_OF, empty_label
from tests.query_helpers import (
    CHOICES,
    NAMES,
    Hit,
    Session,
    full_oracle,
    generate_hits,
    generate_session_hits,
    open_store,
    plans_for_every_table,
    run,
    sessionize,
)

pytestmark = pytest.mark.integration

SITE = "kolkata.test"
Store = tuple[Any, list[Hit], list[Session]]
DIMENSIONS = [*FIELD_OF, "event:props:plan", "event:props:author"]
DIMENSIONS += ["visit:entry_page", "visit:exit_page"]
TEXT = st.text(alphabet="ab/'\\\n\x00éÉ€ -_%", max_size=4)
METRICS = ["visitors", "pageviews", "events", "percentage"]
METRICS += ["visits", "bounce_rate", "visit_duration", "views_per_visit"]


def _values_for(dimension: str) -> st.SearchStrategy[str]:
    if dimension == "event:name":
        known = sorted(set(NAMES))
    elif dimension.startswith("event:props:"):
        known = ["free", "Pro", "pro", "o'neil"]
    elif dimension in ("visit:entry_page", "visit:exit_page"):
        known = [v for v in CHOICES["page"] if v]
    else:
        known = [v for v in CHOICES[FIELD_OF[dimension]] if v]
    known += [empty_label(dimension), empty_label(dimension).upper()]
    parts = [v[i:j] for v in known for i in range(len(v)) for j in range(i + 1, len(v) + 1)]
    return st.one_of(st.sampled_from(known), st.sampled_from(parts), TEXT)


@st.composite
def condition(draw: st.DrawFn) -> list[Any]:
    dimension = draw(st.sampled_from(DIMENSIONS))
    op = draw(st.sampled_from(["is", "is_not", "contains", "contains_not"]))
    out: list[Any] = [op, dimension, draw(st.lists(_values_for(dimension), min_size=1, max_size=3))]
    case = draw(st.sampled_from([None, True, False]))
    if case is not None:
        out.append({"case_sensitive": case})
    return out


FILTER_TREE = st.recursive(
    condition(),
    lambda children: st.one_of(
        st.builds(lambda cs: ["and", cs], st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda cs: ["or", cs], st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda c: ["not", c], children),
    ),
    max_leaves=5,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    hits = [
        h
        for h in generate_hits(seed=4, per_site=500) + generate_session_hits(seed=9)
        if h.site == SITE
    ]
    sessions = sessionize(hits)
    client = open_store(tmp_path_factory.mktemp("query_sessions_props") / "ch", hits, sessions)
    yield client, hits, sessions
    client.close()


@st.composite
def query_body(draw: st.DrawFn) -> dict[str, Any]:
    metrics = draw(st.lists(st.sampled_from(METRICS), min_size=1, max_size=4, unique=True))
    if not {"visits", "bounce_rate", "visit_duration", "views_per_visit"} & set(metrics):
        metrics.append(draw(st.sampled_from(["visits", "bounce_rate", "views_per_visit"])))
    dims = draw(st.lists(st.sampled_from(DIMENSIONS), max_size=2, unique=True))
    if draw(st.booleans()):
        dims.insert(draw(st.integers(0, len(dims))), draw(st.sampled_from(["time", "time:day"])))
    if "percentage" in metrics and not any(not d.startswith("time") for d in dims):
        metrics.remove("percentage")
    body: dict[str, Any] = {
        "site_id": SITE,
        "metrics": metrics,
        "date_range": draw(st.sampled_from(["day", "7d", "30d", "all", "30m"])),
        "dimensions": dims,
        "filters": draw(st.lists(FILTER_TREE, max_size=3)),
        "include": {"total_rows": True},
    }
    if dims:
        body["pagination"] = {"limit": draw(st.integers(1, 6)), "offset": draw(st.integers(0, 4))}
        keys = draw(st.lists(st.sampled_from(metrics + dims), max_size=2, unique=True))
        if keys:
            body["order_by"] = [[k, draw(st.sampled_from(["asc", "desc"]))] for k in keys]
    return body


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=query_body())
def test_session_queries_answer_like_the_oracle(store: Store, body: dict[str, Any]) -> None:
    client, hits, sessions = store
    for plan in plans_for_every_table(body, hits):
        got = run(client, plan)
        want = full_oracle(plan, body, hits, sessions)
        assert got["results"] == want["results"], (plan.table, plan.statements)
        assert got["meta"]["total_rows"] == want["total_rows"], plan.table
        event(f"table {plan.table}")
        event("rows" if any(any(r["metrics"]) for r in got["results"]) else "no rows")
