"""End to end on the real embedded stack: hostile text as data and as query values. Pages whose
paths hold quotes, backslashes, braces that look like placeholders, NUL and newlines, a property
key and an event name of the same kind, go in through `/api/event`; the Stats API counts each of
them exactly, and a filter on any of them matches exactly it, on every table the planner picks
(day, minute and raw-event rollups, sessions)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest

from tests.conftest import Stack

pytestmark = pytest.mark.integration

SITE = "hostile.test"
TIMEZONE = "Asia/Kolkata"  # a half-hour offset: hourly buckets come from minutes or raw events
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
# path -> pageviews (one visitor, one session each); every path differs from the others
PAGES: dict[str, int] = {
    "/it's": 1,
    "/it\\'s": 2,
    "/a\\b": 3,
    "/a\\\\b": 4,
    "/{p0:String}": 5,
    "/{p1:Array(String)}'); DROP TABLE events; --": 6,
    "/nul\x00nl\ncr\rtab\tend": 7,
    "/%s %(x)s $$ `x` \"q\" ' OR '1'='1": 8,
    "/plain": 9,
}
PROP = "pl'an\\{p0:String}\x00"  # every pageview carries {PROP: its path}
EVENT = "Sign'up\\{p2:Date}\n"  # custom events, on a page of their own
EVENT_PAGE = "/custom"
EVENTS = 3


def send(stack: Stack, client: httpx.Client, n: int, name: str, path: str) -> None:
    body: dict[str, Any] = {
        "n": name,
        "u": f"https://{SITE}{quote(path, safe='/')}",  # ingest unquotes the path
        "d": SITE,
    }
    if name == "pageview":
        body["p"] = {PROP: path}
    resp = client.post(
        f"{stack.url}/api/event",
        content=orjson.dumps(body),
        headers={
            "User-Agent": FIREFOX,
            "X-Forwarded-For": f"10.77.{n // 250}.{n % 250 + 1}",  # a visitor per hit
            "Content-Type": "text/plain",
        },
    )
    assert resp.status_code == 202 and "x-plausible-dropped" not in resp.headers, resp.text


class Site:
    def __init__(self, stack: Stack, key: str) -> None:
        self.stack, self.key = stack, key
        today = dt.datetime.now(ZoneInfo(TIMEZONE)).date()
        self.dates = [(today - dt.timedelta(days=1)).isoformat(), today.isoformat()]

    def query(self, **body: Any) -> dict[str, Any]:
        resp = httpx.post(
            f"{self.stack.url}/api/v2/query",
            json={"site_id": SITE, "date_range": self.dates, **body},
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def rows(self, **body: Any) -> dict[tuple[str, ...], list[Any]]:
        results = self.query(**body)["results"]
        return {tuple(r["dimensions"]): r["metrics"] for r in results}


@pytest.fixture(scope="module")
def site(stack: Stack) -> Site:
    key = stack.add_site(SITE, TIMEZONE)
    time.sleep(1.2)  # the site list refresh
    n = 0
    with httpx.Client(timeout=30) as client:
        for path, count in PAGES.items():
            for _ in range(count):
                send(stack, client, n, "pageview", path)
                n += 1
        for _ in range(EVENTS):
            send(stack, client, n, EVENT, EVENT_PAGE)
            n += 1
    loaded = Site(stack, key)
    want = [sum(PAGES.values()), sum(PAGES.values()) + EVENTS, n]
    deadline = time.monotonic() + 120
    got: list[Any] = []
    while time.monotonic() < deadline:
        got = loaded.query(metrics=["pageviews", "events", "visits"])["results"][0]["metrics"]
        if got == want:
            return loaded
        time.sleep(1)
    raise AssertionError(f"totals never reached {want}: {got}\n{stack.logs()}")


def test_every_hostile_page_is_counted_exactly(site: Site) -> None:
    got = site.query(metrics=["visitors", "pageviews", "visits"], dimensions=["event:page"])
    assert got["meta"]["table"] == "rollup_day+sessions"
    rows = {tuple(r["dimensions"]): r["metrics"] for r in got["results"]}
    want = {(path,): [n, n, n] for path, n in PAGES.items()}
    assert rows == {**want, (EVENT_PAGE,): [EVENTS, 0, EVENTS]}


@pytest.mark.parametrize("path", list(PAGES))
def test_a_filter_on_a_hostile_page_matches_exactly_it(site: Site, path: str) -> None:
    n = PAGES[path]
    metrics = ["visitors", "pageviews", "visits", "bounce_rate"]
    is_path = ["is", "event:page", [path]]
    answers = {
        "day": site.query(metrics=metrics, filters=[is_path]),
        "minute": site.query(metrics=metrics, filters=[is_path], date_range="30m"),
        "insensitive": site.query(metrics=metrics, filters=[[*is_path, {"case_sensitive": False}]]),
        "entry page": site.query(metrics=metrics, filters=[["is", "visit:entry_page", [path]]]),
    }
    tables = {name: a["meta"]["table"] for name, a in answers.items()}
    assert tables == {
        "day": "rollup_day+sessions",
        "minute": "rollup_minute+sessions",
        "insensitive": "rollup_day+sessions",
        "entry page": "sessions",
    }
    for name, answer in answers.items():
        assert answer["results"] == [{"metrics": [n, n, n, 100], "dimensions": []}], name
    # The property carries the path: a breakdown and a filter on it read the raw events.
    props = site.query(
        metrics=["pageviews"],
        dimensions=[f"event:props:{PROP}"],
        filters=[["is", f"event:props:{PROP}", [path]]],
    )
    assert props["meta"]["table"] == "events"
    assert props["results"] == [{"metrics": [n], "dimensions": [path]}]
    # Hourly buckets in the site's timezone (a bound timezone) add up to the page's count.
    hourly = site.query(metrics=["pageviews"], dimensions=["time:hour"], filters=[is_path])
    assert sum(r["metrics"][0] for r in hourly["results"]) == n
    # Every other page, and only those, when negated.
    others = site.rows(metrics=["pageviews"], dimensions=["event:page"], filters=[["not", is_path]])
    assert others == {(p,): [c] for p, c in PAGES.items() if p != path} | {(EVENT_PAGE,): [0]}


@pytest.mark.parametrize("needle", ["\\", "'", "{p", "\x00", "\n", "'); DROP", "%s", "$$"])
def test_contains_a_hostile_fragment(site: Site, needle: str) -> None:
    want = {(p,): [c] for p, c in PAGES.items() if needle in p}
    assert want, needle  # each needle is in some page
    got = site.rows(
        metrics=["pageviews"],
        dimensions=["event:page"],
        filters=[["contains", "event:page", [needle]]],
    )
    assert got == want
    sessions = site.rows(
        metrics=["visits"],
        dimensions=["visit:entry_page"],
        filters=[["contains", "visit:entry_page", [needle]]],
    )
    assert sessions == want


def test_a_hostile_event_name_and_property_key(site: Site) -> None:
    got = site.query(
        metrics=["visitors", "events", "visits"],
        dimensions=["event:name"],
        filters=[["is", "event:name", [EVENT]]],
    )
    assert got["results"] == [{"metrics": [EVENTS, EVENTS, EVENTS], "dimensions": [EVENT]}]
    by_prop = site.rows(metrics=["pageviews", "visits"], dimensions=[f"event:props:{PROP}"])
    want = {(path,): [n, n] for path, n in PAGES.items()}
    assert by_prop == {**want, ("(not set)",): [0, EVENTS]}
