"""The browser-side parts in headless Chromium (Debian's, driven by Playwright) on the real
embedded stack: the dashboard shows the Stats API's numbers, which equal exact answers from a
generated trace, and its live number follows new hits; the tracker script sends pageviews on load
and on history navigation, custom events and web vitals, and the Stats API counts them exactly."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from engine.event_input import parse_event_body
from engine.hits import VITALS
from tests.conftest import ROOT, Stack
from tests.trace import DIMENSION_VALUE, breakdown, generate, local_day, shown, totals

pytestmark = pytest.mark.integration

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
ARTIFACTS = ROOT / "tests" / "artifacts"
T = TypeVar("T")


def wait_for(
    what: str,
    probe: Callable[[], T],
    ok: Callable[[T], bool],
    timeout: float = 90,
    page: Page | None = None,
) -> T:
    """Polls `probe` until `ok`. With a page, waits through Playwright, which delivers the
    page's events (requests seen) only while one of its calls runs."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: last value {value!r}")
        if page is not None:
            page.wait_for_timeout(250)
        else:
            time.sleep(0.5)


def close_enough(actual: float, expected: float) -> bool:
    # Unique counts are exact below 100 and within 1% above (uniqCombined64).
    return actual == expected if expected < 100 else abs(actual - expected) <= 0.01 * expected


class Api:
    def __init__(self, stack: Stack, site: str, key: str) -> None:
        self.stack, self.site, self.key = stack, site, key

    def query(self, body: dict[str, Any]) -> dict[str, Any]:
        resp = httpx.post(
            f"{self.stack.url}/api/v2/query",
            json={"site_id": self.site, **body},
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def live(self) -> dict[str, Any]:
        resp = httpx.get(
            f"{self.stack.url}/api/v1/stats/realtime/live",
            params={"site_id": self.site},
            headers={"Authorization": f"Bearer {self.key}"},
        )
        assert resp.status_code == 200, resp.text
        return dict(resp.json())


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's chromium is not installed: `make browser` installs it")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                # No network here but loopback: keep Chromium from calling home.
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                # The customer's site of the tracker tests, served by the test on loopback
                # (a real host name: the tracker ignores localhost, as Plausible's does).
                "--host-resolver-rules=MAP shop.test 127.0.0.1",
                "--disable-features=HttpsUpgrades",
            ],
        )
        yield browser
        browser.close()


# --- the dashboard -----------------------------------------------------------------------------

DASH_SITE = "dash.test"
PANEL_DIMENSIONS = {
    "event:page": "pages",
    "visit:entry_page": "pages",
    "visit:exit_page": "pages",
    "visit:source": "sources",
    "visit:country": "locations",
    "visit:device": "devices",
    "visit:browser": "devices",
    "visit:os": "devices",
}
TOP_METRICS = [
    "visitors",
    "visits",
    "pageviews",
    "views_per_visit",
    "bounce_rate",
    "visit_duration",
]


def top_stats(page: Page) -> dict[str, float]:
    page.wait_for_selector("[data-testid=top-stats][data-loaded='1']")
    values: dict[str, str] = page.eval_on_selector_all(
        "[data-testid^=stat-]",
        "els => Object.fromEntries(els.map(e => [e.dataset.testid.slice(5), e.dataset.value]))",
    )
    return {k: float(v) for k, v in values.items()}


def rows(page: Page, dimension: str) -> list[tuple[str, int]]:
    selector = f"[data-testid='rows-{dimension}'][data-loaded='1']"
    page.wait_for_selector(selector)
    found: list[list[str]] = page.eval_on_selector_all(
        f"{selector} li.row", "els => els.map(e => [e.dataset.label, e.dataset.value])"
    )
    return [(label, int(value)) for label, value in found]


def live_visitors(page: Page) -> int:
    value = page.get_attribute("[data-testid=live-visitors]", "data-value")
    return int(value) if value else -1


def test_dashboard_shows_the_stats_api_numbers(stack: Stack, browser: Browser) -> None:
    key = stack.add_site(DASH_SITE)
    time.sleep(1.5)  # the server refreshes its site list every 0.5 s
    api = Api(stack, DASH_SITE, key)
    trace = generate([DASH_SITE], time.time(), live=0, imported=300, seed=21)
    lines = [orjson.dumps(h.import_line()) for h in trace.imported]
    resp = httpx.post(
        f"{stack.url}/api/import",
        content=b"\n".join(lines),
        headers={"Authorization": f"Bearer {stack.admin_token}"},
        timeout=120,
    )
    assert resp.status_code == 202 and resp.json()["accepted"] == len(lines), resp.text
    hits = trace.counted
    expected = totals(hits)
    aggregate = {"metrics": TOP_METRICS, "date_range": "7d"}  # imported days are 1-5 days ago
    wait_for(
        "pageviews of the imported trace",
        lambda: api.query(aggregate)["results"][0]["metrics"][2],
        lambda pageviews: pageviews == expected["pageviews"],
    )
    # Sessions are written beside the rollups: wait until the visit metrics settle too.
    previous: list[Any] = []

    def settled(metrics: list[Any]) -> bool:
        nonlocal previous
        same, previous = metrics == previous, metrics
        return same

    wait_for(
        "settled session metrics", lambda: api.query(aggregate)["results"][0]["metrics"], settled
    )

    context = browser.new_context(viewport={"width": 1280, "height": 1500}, user_agent=CHROME)
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    page.goto(f"{stack.url}/dashboard/{DASH_SITE}?period=7d#key={key}")

    # Top stats: the API's answer to the same query, and the trace's exact counts.
    shown_stats = top_stats(page)
    api_stats = dict(zip(TOP_METRICS, api.query(aggregate)["results"][0]["metrics"], strict=True))
    assert shown_stats == {k: float(v) for k, v in api_stats.items()}
    assert shown_stats["pageviews"] == expected["pageviews"]
    assert close_enough(shown_stats["visitors"], expected["visitors"])
    assert page.inner_text("[data-testid=stat-pageviews] .big") == str(expected["pageviews"])

    # Visitors and pageviews by day: the API's series (empty days filled), the trace's days.
    page.wait_for_selector("[data-testid=timeseries][data-loaded='1'] canvas")
    series = orjson.loads(page.get_attribute("[data-testid=timeseries]", "data-series") or "")
    by_day = api.query(
        {
            "metrics": ["visitors", "pageviews"],
            "date_range": "7d",
            "dimensions": ["time:day"],
            "include": {"time_labels": True},
        }
    )
    assert series["labels"] == by_day["meta"]["time_labels"] and len(series["labels"]) == 7
    api_days = {r["dimensions"][0]: r["metrics"] for r in by_day["results"]}
    assert series["pageviews"] == [api_days.get(d, [0, 0])[1] for d in series["labels"]]
    assert series["visitors"] == [api_days.get(d, [0, 0])[0] for d in series["labels"]]
    oracle_days = breakdown(hits, lambda h: local_day(h, "UTC"))
    assert {d: p for d, p in zip(series["labels"], series["pageviews"], strict=True) if p} == {
        d: m["pageviews"] for d, m in oracle_days.items()
    }

    # Every breakdown panel and tab: the API's rows in its order, and the trace's counts.
    for dimension, panel in PANEL_DIMENSIONS.items():
        tab = page.locator(f"[data-testid='panel-{panel}'] [data-testid='tab-{dimension}']")
        if tab.count():
            tab.click()
        shown_rows = rows(page, dimension)
        answer = api.query(
            {
                "metrics": ["visitors"],
                "date_range": "7d",
                "dimensions": [dimension],
                "order_by": [["visitors", "desc"]],
                "pagination": {"limit": 10},
            }
        )
        assert shown_rows == [(r["dimensions"][0], r["metrics"][0]) for r in answer["results"]]
        assert shown_rows, dimension
        if dimension in DIMENSION_VALUE:
            oracle = breakdown(hits, lambda h, d=dimension: shown(d, DIMENSION_VALUE[d](h)))
            assert {label for label, _ in shown_rows} == set(oracle), dimension
            for label, visitors in shown_rows:
                assert close_enough(visitors, oracle[label]["visitors"]), (dimension, label)

    # A custom range: today and the five days before it hold the whole trace.
    today = dt.datetime.now(dt.UTC).date()
    start = (today - dt.timedelta(days=5)).isoformat()
    page.select_option("[data-testid=period]", "custom")
    page.fill("[data-testid=from]", start)
    page.fill("[data-testid=to]", today.isoformat())
    page.click("[data-testid=apply]")
    page.wait_for_url(f"**period=custom&from={start}&to={today.isoformat()}**")
    custom = api.query({"metrics": TOP_METRICS, "date_range": [start, today.isoformat()]})
    shown_stats = top_stats(page)
    assert shown_stats == dict(
        zip(TOP_METRICS, map(float, custom["results"][0]["metrics"]), strict=True)
    )
    assert shown_stats["pageviews"] == expected["pageviews"]

    # The live number: the realtime endpoint's, and it follows new hits (3 new visitors).
    before = wait_for("live number", lambda: live_visitors(page), lambda v: v >= 0)
    assert before == api.live()["visitors"]
    for address in ("8.8.8.8", "193.0.6.139", "81.2.69.160"):
        resp = httpx.post(
            f"{stack.url}/api/event",
            json={"name": "pageview", "url": f"https://{DASH_SITE}/live", "domain": DASH_SITE},
            headers={"User-Agent": CHROME, "X-Forwarded-For": address},
        )
        assert resp.status_code == 202 and "x-plausible-dropped" not in resp.headers
    after = wait_for(
        "live number after 3 hits", lambda: live_visitors(page), lambda v: v >= before + 3
    )
    assert after == before + 3
    assert api.live()["visitors"] == after

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\ndashboard screenshot: {shot}")
    assert not page_errors, page_errors
    context.close()


def test_dashboard_without_a_valid_key(stack: Stack, browser: Browser) -> None:
    page = browser.new_page(user_agent=CHROME)
    page.goto(f"{stack.url}/dashboard/{DASH_SITE}")
    assert page.locator("form.keyform").is_visible()
    page.goto(f"{stack.url}/dashboard/{DASH_SITE}#key=not-a-key")
    error = page.wait_for_selector("[data-testid=top-stats] ~ [data-testid=error]")
    assert error is not None and "invalid API key" in error.inner_text()
    page.close()


# --- the tracker -------------------------------------------------------------------------------

SHOP_SITE = "shop.test"
SHOP_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Shop</title>
<script defer {attrs} src="/js/script.js"></script></head>
<body><h1>A shop</h1><p>Something to paint, so that FCP and LCP have an element.</p>
<button id="buy" onclick="this.textContent = 'Thanks'">Buy</button></body></html>
"""


class Shop:
    """A customer's site, served by the test on loopback as http://shop.test:PORT (Chromium
    maps the name to 127.0.0.1). Like a site that proxies Plausible, it serves the tracker and
    forwards /api/event to the stack, keeping every body the browser sent, even those sent as
    the page is closed (which Playwright's own request events miss)."""

    def __init__(self, stack: Stack, attrs: str) -> None:
        self.sent: list[dict[str, Any]] = []
        self.answers: list[tuple[int, str | None]] = []  # status, x-plausible-dropped
        shop = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def reply(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/js/script.js":
                    resp = httpx.get(f"{stack.url}/js/script.js")
                    self.reply(resp.status_code, resp.headers["content-type"], resp.content)
                else:
                    page = SHOP_PAGE.format(attrs=attrs).encode()
                    self.reply(200, "text/html; charset=utf-8", page)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                shop.sent.append(orjson.loads(body))
                resp = httpx.post(
                    f"{stack.url}/api/event",
                    content=body,
                    headers={
                        "User-Agent": self.headers["User-Agent"],
                        "Content-Type": self.headers.get("Content-Type", "text/plain"),
                    },
                )
                shop.answers.append((resp.status_code, resp.headers.get("x-plausible-dropped")))
                self.reply(resp.status_code, resp.headers["content-type"], resp.content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://{SHOP_SITE}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_tracker_pageviews_events_and_vitals(stack: Stack, browser: Browser) -> None:
    key = stack.add_site(SHOP_SITE)
    time.sleep(1.5)
    api = Api(stack, SHOP_SITE, key)
    shop = Shop(stack, f'data-domain="{SHOP_SITE}"')
    origin = shop.origin
    context = browser.new_context(user_agent=CHROME)
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    sent = shop.sent

    page.goto(f"{origin}/")
    wait_for("pageview on load", lambda: len(sent), lambda n: n == 1, page=page)
    page.evaluate("history.pushState({}, '', '/pricing')")
    wait_for("pageview on pushState", lambda: len(sent), lambda n: n == 2, page=page)
    # Same path again (only the query changes): no new pageview, as in Plausible.
    page.evaluate("history.pushState({}, '', '/pricing?plan=pro')")
    status = page.evaluate(
        "new Promise(done => plausible('Signup', {props: {plan: 'pro'}, callback: done}))"
    )
    assert status == {"status": 202}
    page.click("#buy")  # an interaction, for INP
    page.go_back()  # /pricing?plan=pro -> /pricing: same path, no pageview
    page.go_back()  # -> /: popstate, a pageview
    wait_for("pageview on popstate", lambda: len(sent), lambda n: n == 4, page=page)
    assert not page_errors, page_errors
    page.close(run_before_unload=True)  # leaving the page (pagehide) sends its vitals
    wait_for("vitals on leaving", lambda: len(sent), lambda n: n == 5, timeout=30)
    wait_for("answers", lambda: len(shop.answers), lambda n: n == len(sent), timeout=30)
    context.close()
    shop.close()

    pageviews = [b for b in sent if b["n"] == "pageview"]
    assert [b["u"] for b in pageviews] == [f"{origin}/", f"{origin}/pricing", f"{origin}/"]
    assert all(b["d"] == SHOP_SITE for b in sent)
    (signup,) = [b for b in sent if b["n"] == "Signup"]
    assert signup["p"] == {"plan": "pro"}
    (vitals_event,) = [b for b in sent if "vitals" in b]
    # Sent with the document's first URL, on a non-counted, non-interactive event.
    assert vitals_event["n"] == "engagement" and vitals_event["i"] is False
    assert vitals_event["u"] == f"{origin}/"
    vitals = vitals_event["vitals"]
    assert set(vitals) <= set(VITALS) and {"ttfb", "fcp", "lcp", "cls"} <= set(vitals), vitals
    assert all(isinstance(v, int | float) and v >= 0 for v in vitals.values()), vitals
    assert vitals["fcp"] <= vitals["lcp"]
    # The ingest took every body as it is (vitals included), dropping none.
    assert shop.answers == [(202, None)] * len(sent)
    for body in sent:
        parse_event_body(orjson.dumps(body))

    # The Stats API counts them exactly: 3 pageviews (/ twice, /pricing), 1 Signup, 1 visitor;
    # the engagement event carrying the vitals counts as nothing.
    today = dt.datetime.now(dt.UTC).date()
    date_range = [(today - dt.timedelta(days=1)).isoformat(), today.isoformat()]

    def table(dimension: str, metric_name: str) -> dict[str, int]:
        answer = api.query(
            {"metrics": [metric_name], "date_range": date_range, "dimensions": [dimension]}
        )
        return {r["dimensions"][0]: r["metrics"][0] for r in answer["results"]}

    wait_for(
        "tracked totals",
        lambda: api.query(
            {"metrics": ["visitors", "pageviews", "events"], "date_range": date_range}
        )["results"][0]["metrics"],
        lambda m: m == [1, 3, 4],
    )
    assert table("event:page", "pageviews") == {"/": 2, "/pricing": 1}
    assert table("event:name", "events") == {"pageview": 3, "Signup": 1}
    assert table("event:props:plan", "events") == {"pro": 1, "(not set)": 3}

    # The vitals the browser sent are the page's p75 (one sample: itself, within the sketch's
    # 0.5%, plus the rounding of the answer); the page loaded by pushState has none.
    metric_names = [f"{v}_p75" for v in sorted(vitals)]

    def p75_by_page() -> dict[str, dict[str, Any]]:
        answer = api.query(
            {"metrics": metric_names, "date_range": date_range, "dimensions": ["event:page"]}
        )
        return {r["dimensions"][0]: dict(zip(metric_names, r["metrics"], strict=True))
                for r in answer["results"]}  # fmt: skip

    # The vitals ride on the last event sent (on leaving the page), which no total above
    # counts: the totals can be stored before it is, so wait for its samples too.
    p75 = wait_for(
        "vitals stored",
        p75_by_page,
        lambda t: "/" in t and all(v is not None for v in t["/"].values()),
        timeout=30,
    )
    assert set(p75) == {"/", "/pricing"}
    assert all(v is None for v in p75["/pricing"].values()), p75
    for name, sample in vitals.items():
        got = p75["/"][f"{name}_p75"]
        half_unit = 0.0005 if name == "cls" else 0.5
        assert got is not None and abs(got - sample) <= 0.005 * sample + half_unit, (name, got)


def test_tracker_respects_do_not_track(stack: Stack, browser: Browser) -> None:
    shop = Shop(stack, f'data-domain="{SHOP_SITE}" data-respect-dnt')
    context = browser.new_context(user_agent=CHROME)
    context.add_init_script(
        "Object.defineProperty(Navigator.prototype, 'doNotTrack', {get: () => '1'})"
    )
    page = context.new_page()
    page.goto(f"{shop.origin}/")
    page.wait_for_function("typeof window.plausible === 'function'")
    # An ignored event calls its callback at once, without a request.
    page.evaluate("new Promise(done => plausible('Signup', {callback: done}))")
    page.evaluate("history.pushState({}, '', '/other')")
    page.close(run_before_unload=True)
    time.sleep(1)  # a request sent on leaving would have arrived by now
    context.close()
    shop.close()
    assert shop.sent == []


def test_script_is_served(stack: Stack) -> None:
    resp = httpx.get(f"{stack.url}/js/script.js")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/javascript")
    assert "data-domain" in resp.text and len(resp.content) < 20_000
