"""Sessions end to end: a generated trace through /api/import (hours around a UTC midnight,
gaps just under and over 30 minutes, out-of-order hits, a salt rotation), checked against an
independent sessionizer; and the worker's session state falling back once traffic stops."""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from tests.clock import one_day_anchor
from tests.conftest import Stack
from tests.session_trace import Session, generate_sessions, sessionize
from tests.trace import DIMENSION_VALUE, shown, visitor_key

pytestmark = pytest.mark.integration

SITES = {"sessions.test": 21, "sessions-two.test": 22}


class Loaded:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.keys = {site: stack.add_site(site) for site in SITES}
        now = time.time()
        midnight = (now // 86400) * 86400
        self.lines = {
            site: generate_sessions(site, midnight, until=now - 120, seed=seed)
            for site, seed in SITES.items()
        }
        day = dt.datetime.fromtimestamp(midnight, dt.UTC).date()
        self.date_range = [(day - dt.timedelta(days=1)).isoformat(), day.isoformat()]

    def sessions(self, site: str) -> list[Session]:
        return sessionize(self.lines[site])

    def query(self, site: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = httpx.post(
            f"{self.stack.url}/api/v2/query",
            json={"site_id": site, "date_range": self.date_range, **body},
            headers={"Authorization": f"Bearer {self.keys[site]}"},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        return dict(resp.json())


def worker_metric(stack: Stack, name: str) -> float:
    port = stack.env["ROLLUP_WORKER_WEB_PORT"]
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


@pytest.fixture(scope="module")
def loaded(stack: Stack) -> Loaded:
    loaded = Loaded(stack)
    time.sleep(1.5)
    for lines in loaded.lines.values():
        body = b"\n".join(orjson.dumps(h.import_line()) for h in lines)
        resp = httpx.post(f"{stack.url}/api/import", content=body, timeout=60,
                          headers={"Authorization": f"Bearer {stack.admin_token}"})  # fmt: skip
        assert resp.status_code == 202 and resp.json()["accepted"] == len(lines), resp.text
    deadline = time.monotonic() + 90
    for site in SITES:
        expected = len(loaded.sessions(site))
        while loaded.query(site, {"metrics": ["visits"]})["results"][0]["metrics"] != [expected]:
            if time.monotonic() > deadline:
                got = loaded.query(site, {"metrics": ["visits"]})
                raise AssertionError(f"visits never reached {expected}: {got}\n{stack.logs()}")
            time.sleep(0.5)
    return loaded


def summary(sessions: list[Session]) -> dict[str, float]:
    visits = len(sessions)
    return {
        "visits": visits,
        "bounce_rate": 100 * sum(s.bounce for s in sessions) / visits if visits else 0,
        "visit_duration": sum(s.duration for s in sessions) / visits if visits else 0,
        "views_per_visit": sum(s.pageviews for s in sessions) / visits if visits else 0,
    }


SESSION_METRICS = ["visits", "bounce_rate", "visit_duration", "views_per_visit"]


def assert_metrics(got: list[float], expected: dict[str, float], context: object) -> None:
    visits, bounce_rate, duration, views = got
    assert visits == expected["visits"], context
    assert abs(bounce_rate - expected["bounce_rate"]) <= 0.5 + 1e-9, context
    assert abs(duration - expected["visit_duration"]) <= 0.5 + 1e-9, context
    assert abs(views - expected["views_per_visit"]) <= 0.005 + 1e-9, context


def test_session_totals(loaded: Loaded) -> None:
    for site in SITES:
        sessions = loaded.sessions(site)
        got = loaded.query(site, {"metrics": [*SESSION_METRICS, "visitors", "pageviews"]})
        metrics = got["results"][0]["metrics"]
        assert_metrics(metrics[:4], summary(sessions), site)
        counted = [h for h in loaded.lines[site] if h.name not in ("engagement", "pageleave")]
        assert metrics[4] == len({visitor_key(h) for h in counted})
        assert metrics[5] == sum(1 for h in counted if h.name == "pageview")


BREAKDOWNS: dict[str, Callable[[Session], str]] = {
    "visit:entry_page": lambda s: s.first.page,
    "visit:exit_page": lambda s: s.exit_page,
    "visit:source": lambda s: shown("visit:source", DIMENSION_VALUE["visit:source"](s.first)),
    "visit:device": lambda s: DIMENSION_VALUE["visit:device"](s.first),
    "time:hour": lambda s: time.strftime("%Y-%m-%d %H:00:00", time.gmtime(s.start)),
}


@pytest.mark.parametrize("dimension", sorted(BREAKDOWNS))
def test_session_breakdowns(loaded: Loaded, dimension: str) -> None:
    for site in SITES:
        groups: dict[str, list[Session]] = defaultdict(list)
        for session in loaded.sessions(site):
            groups[BREAKDOWNS[dimension](session)].append(session)
        got = loaded.query(site, {"metrics": SESSION_METRICS, "dimensions": [dimension]})
        table = {row["dimensions"][0]: row["metrics"] for row in got["results"]}
        assert set(table) == set(groups), dimension
        for value, sessions in groups.items():
            assert_metrics(table[value], summary(sessions), (dimension, value))


def test_event_page_with_session_metrics(loaded: Loaded) -> None:
    site = "sessions.test"
    sessions = loaded.sessions(site)
    got = loaded.query(site, {"metrics": SESSION_METRICS, "dimensions": ["event:page"]})
    table = {row["dimensions"][0]: row["metrics"] for row in got["results"]}
    pages = {h.page for s in sessions for h in s.hits}
    assert set(table) == pages
    for page in pages:
        with_page = [s for s in sessions if any(h.page == page for h in s.hits)]
        assert_metrics(table[page], summary(with_page), page)
    filtered = loaded.query(
        site, {"metrics": SESSION_METRICS, "filters": [["is", "visit:entry_page", ["/pricing"]]]}
    )
    entry = [s for s in sessions if s.first.page == "/pricing"]
    assert_metrics(filtered["results"][0]["metrics"], summary(entry), "entry filter")


def test_state_falls_back_after_traffic_stops(loaded: Loaded) -> None:
    deadline = time.monotonic() + 90
    while worker_metric(loaded.stack, "rollup_worker_session_states") > 0:
        assert time.monotonic() < deadline, "session states never expired"
        time.sleep(1)
    assert worker_metric(loaded.stack, "rollup_worker_session_states_expired_total") > 0


def test_hits_carry_their_sessions_visit_attributes(loaded: Loaded) -> None:
    site = "sessions-two.test"
    by_source: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for session in loaded.sessions(site):
        source = shown("visit:source", DIMENSION_VALUE["visit:source"](session.first))
        by_source[source].update(visitor_key(h) for h in session.hits)
    got = loaded.query(site, {"metrics": ["visitors"], "dimensions": ["visit:source"]})
    table = {row["dimensions"][0]: row["metrics"][0] for row in got["results"]}
    assert table == {k: len(v) for k, v in by_source.items()}


def test_hit_later_than_the_window_counts_but_not_in_sessions(loaded: Loaded) -> None:
    stack = loaded.stack
    key = stack.add_site("late.test")
    time.sleep(1.5)
    ua = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0 late-test"
    # Both hits on one UTC day: a day later the visitor's salt, and so its id, differ.
    newest = one_day_anchor(time.time() - 60, 1200)
    auth = {"Authorization": f"Bearer {stack.admin_token}"}

    def send(ts: float, page: str) -> None:
        line = {"name": "pageview", "url": f"https://late.test{page}", "timestamp": ts,
                "ip": "8.8.8.8", "user_agent": ua}  # fmt: skip
        resp = httpx.post(f"{stack.url}/api/import", content=orjson.dumps(line), headers=auth)
        assert resp.status_code == 202 and resp.json()["accepted"] == 1

    def totals() -> list[int]:
        resp = httpx.post(f"{stack.url}/api/v2/query", headers={"Authorization": f"Bearer {key}"},
                          json={"site_id": "late.test", "metrics": ["visits", "pageviews"],
                                "date_range": loaded.date_range})  # fmt: skip
        return list(resp.json()["results"][0]["metrics"])

    def wait_for(expected: list[int]) -> None:
        deadline = time.monotonic() + 60
        while totals() != expected:
            assert time.monotonic() < deadline, (totals(), expected)
            time.sleep(0.3)

    late_before = worker_metric(stack, "rollup_worker_late_hits_total")
    send(newest, "/first")
    wait_for([1, 1])
    # 20 minutes older than the visitor's newest hit: past the 10-minute lateness window.
    send(newest - 1200, "/too-late")
    wait_for([1, 2])
    assert worker_metric(stack, "rollup_worker_late_hits_total") == late_before + 1
