"""Web vitals end to end on the real embedded stack: a generated trace of page loads (a pageview
plus a non-interactive engagement event carrying the page's vitals, as the tracker sends them)
is imported; for every group with at least 100 samples of a vital, the Stats API's p75 is within
2% of the exact p75 of the inputs, by page, device, country, browser and in aggregate, from
rollup_day and from the events table. Absurd vitals are dropped and counted, their events kept."""

from __future__ import annotations

import datetime as dt
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.hits import VITALS
from tests.conftest import Stack
from tests.trace import ADDRESSES, USER_AGENTS

pytestmark = pytest.mark.integration

SITE = "vitals.test"
TZ = "Europe/Berlin"
SEED = 8
# page -> page loads; the last one stays under 100 samples (checked for presence only).
PAGES = {"/": 800, "/pricing": 500, "/blog/fast": 320, "/docs": 200, "/rare": 40}
ONLY_VITALS_PAGE = "/only-vitals"  # engagement events with vitals, never a pageview

METRICS = [f"{v}_p75" for v in VITALS]
MIN_SAMPLES = 100
MAX_RELATIVE_ERROR = 0.02
# (vital, medians per page factor, log sigma): lognormal-ish samples.
MEDIANS = {"ttfb": 180.0, "fcp": 900.0, "lcp": 1800.0, "inp": 120.0, "cls": 0.15}
SIGMA = {"ttfb": 0.35, "fcp": 0.3, "lcp": 0.35, "inp": 0.4, "cls": 0.35}
# Absurd or invalid vitals, each dropped with its (vital label, reason); the event is kept.
ABSURD: list[tuple[dict[str, Any], tuple[str, str]]] = [
    ({"lcp": -5}, ("lcp", "negative")),
    ({"ttfb": 4_000_000}, ("ttfb", "too_large")),
    ({"cls": 150}, ("cls", "too_large")),
    ({"inp": "slow"}, ("inp", "not_a_number")),
    ({"fid": 12}, ("unknown", "unknown_key")),
]


def exact_p75(samples: list[float]) -> float:
    """The 75th percentile with linear interpolation between order statistics."""
    ordered = sorted(samples)
    rank = 0.75 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class VitalsTrace:
    lines: list[dict[str, Any]] = field(default_factory=list)
    pageviews: Counter[str] = field(default_factory=Counter)
    # (dimension, shown value) -> vital -> samples; dimension "" is the aggregate.
    samples: dict[tuple[str, str], dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    drops: Counter[tuple[str, str]] = field(default_factory=Counter)


def generate(now: float) -> VitalsTrace:
    rng = random.Random(SEED)
    trace = VitalsTrace()
    today = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0)
    loads = [page for page, n in PAGES.items() for _ in range(n)]
    loads += [ONLY_VITALS_PAGE] * 3
    for number, page in enumerate(loads):
        ua = rng.choice(list(USER_AGENTS))
        ip = rng.choice(list(ADDRESSES))
        # Whole days before today (several days, so the range reads rollup_day).
        ts = (today - dt.timedelta(days=rng.randint(1, 5))).timestamp() + rng.randint(0, 86000)
        url = f"https://{SITE}{page}"
        base = {"url": url, "domain": SITE, "ip": ip, "user_agent": ua}
        factor = 1.0 + 0.25 * list(PAGES).index(page) if page in PAGES else 1.0
        vitals: dict[str, Any] = {}
        for vital in VITALS:
            if vital == "inp" and rng.random() < 0.2:
                continue  # no interaction on this page load
            median = MEDIANS[vital] * factor
            vitals[vital] = round(rng.lognormvariate(math.log(median), SIGMA[vital]), 4)
        sent = dict(vitals)
        pageview: dict[str, Any] = {**base, "name": "pageview", "timestamp": ts}
        if number % 23 == 0 and page in PAGES:  # an absurd vital, on engagement or pageview
            absurd, drop = ABSURD[(number // 23) % len(ABSURD)]
            if number % 2:
                sent.update(absurd)  # replaces that vital's valid sample
                vitals = {k: v for k, v in vitals.items() if k not in absurd}
            else:
                pageview["vitals"] = absurd
            trace.drops[drop] += 1
        browser, _, _, _, device = USER_AGENTS[ua]
        groups = [("", ""), ("event:page", page), ("visit:device", device)]
        groups += [("visit:browser", browser), ("visit:country", ADDRESSES[ip] or "(not set)")]
        for group in groups:
            for vital, sample in vitals.items():
                trace.samples[group][vital].append(float(sample))
        if page != ONLY_VITALS_PAGE:
            trace.lines.append(pageview)
            trace.pageviews[page] += 1
        trace.lines.append(
            {
                **base,
                "name": "engagement",
                "interactive": False,
                "timestamp": ts + 4,
                "vitals": sent,
            }
        )
    trace.lines.sort(key=lambda line: float(line["timestamp"]))
    return trace


def scrape_drops(stack: Stack) -> Counter[tuple[str, str]]:
    text = httpx.get(f"{stack.url}/metrics", timeout=10).text
    out: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rollup_ingest_vitals_dropped_total":
                out[(sample.labels["vital"], sample.labels["reason"])] = int(sample.value)
    return out


class Loaded:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.key = stack.add_site(SITE, TZ)
        self.trace = generate(time.time())
        today = dt.datetime.now(ZoneInfo(TZ)).date()
        self.date_range = [(today - dt.timedelta(days=7)).isoformat(), today.isoformat()]
        self.drops_seen: Counter[tuple[str, str]] = Counter()
        self.errors: list[tuple[str, str, str, str, int, float, float, float]] = []

    def query(self, body: dict[str, Any]) -> dict[str, Any]:
        resp = httpx.post(
            f"{self.stack.url}/api/v2/query",
            json={"site_id": SITE, "date_range": self.date_range, **body},
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        return dict(resp.json())


def _eventually(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not in time"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def loaded(stack: Stack) -> Loaded:
    loaded = Loaded(stack)
    time.sleep(1.5)  # the server refreshes its site list every 0.5 s
    before = scrape_drops(stack)
    resp = httpx.post(
        f"{stack.url}/api/import",
        content=b"\n".join(orjson.dumps(line) for line in loaded.trace.lines),
        headers={"Authorization": f"Bearer {stack.admin_token}"},
        timeout=120,
    )
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"accepted": len(loaded.trace.lines), "dropped": 0, "errors": []}
    loaded.drops_seen = scrape_drops(stack) - before
    expected = sum(loaded.trace.pageviews.values())
    n_lcp = len(loaded.trace.samples[("", "")]["lcp"])

    def arrived() -> bool:
        rows = [
            loaded.query({"metrics": ["pageviews", "lcp_p75"]})["results"],
            loaded.query({"metrics": ["pageviews", "lcp_p75"], "filters": [*FORCE_EVENTS]})[
                "results"
            ],
        ]
        return all(r[0]["metrics"][0] == expected and r[0]["metrics"][1] for r in rows)

    _eventually(arrived, f"{expected} pageviews and {n_lcp} lcp samples")
    return loaded


# Two non-time dimensions across dimensions and filters: only the events table answers. The
# filters keep every row (no hit is from that country or that OS).
FORCE_EVENTS = [["is_not", "visit:country", ["AQ"]], ["is_not", "visit:os", ["Plan 9"]]]


def check_groups(
    loaded: Loaded, dimension: str, filters: list[Any], table: str
) -> dict[str, list[Any]]:
    body: dict[str, Any] = {"metrics": ["pageviews", *METRICS], "filters": filters}
    if dimension:
        body["dimensions"] = [dimension]
    got = loaded.query(body)
    assert got["meta"]["table"] == table, got["meta"]
    rows = {(row["dimensions"] or [""])[0]: row["metrics"] for row in got["results"]}
    expected_groups = {v for (d, v) in loaded.trace.samples if d == dimension}
    if dimension == "event:page":
        # A page with vitals but no counted event is no row.
        expected_groups.discard(ONLY_VITALS_PAGE)
        assert ONLY_VITALS_PAGE not in rows
        assert {k: v[0] for k, v in rows.items()} == dict(loaded.trace.pageviews)
    assert set(rows) == expected_groups, (dimension, table)
    checked = 0
    for value in expected_groups:
        samples = loaded.trace.samples[(dimension, value)]
        for i, vital in enumerate(VITALS):
            api = rows[value][1 + i]
            n = len(samples[vital])
            assert api is not None, (dimension, value, vital)
            if vital == "cls":
                assert isinstance(api, float)
            else:
                assert isinstance(api, int)
            if n < MIN_SAMPLES:
                continue
            exact = exact_p75(samples[vital])
            error = abs(api - exact) / exact
            row = (table, dimension or "(aggregate)", value, vital, n, exact, api, error)
            loaded.errors.append(row)
            assert error <= MAX_RELATIVE_ERROR, (table, dimension, value, vital, api, exact)
            checked += 1
    assert checked >= 5
    return rows


@pytest.mark.parametrize(
    "dimension", ["", "event:page", "visit:device", "visit:country", "visit:browser"]
)
def test_p75_within_2_percent_from_rollup_day(loaded: Loaded, dimension: str) -> None:
    check_groups(loaded, dimension, [], "rollup_day")


@pytest.mark.parametrize("dimension", ["", "event:page", "visit:device"])
def test_p75_within_2_percent_from_the_events_table(loaded: Loaded, dimension: str) -> None:
    check_groups(loaded, dimension, FORCE_EVENTS, "events")


def test_both_tables_agree_on_visitors_and_pageviews(loaded: Loaded) -> None:
    body = {"metrics": ["visitors", "pageviews", "events"], "dimensions": ["event:page"]}
    rollup = loaded.query({**body, "metrics": [*body["metrics"], "lcp_p75"]})
    events = loaded.query(
        {**body, "metrics": [*body["metrics"], "lcp_p75"], "filters": FORCE_EVENTS}
    )
    plain = loaded.query(dict(body))
    as_map = [
        {tuple(r["dimensions"]): r["metrics"][:3] for r in q["results"]}
        for q in (rollup, events, plain)
    ]
    # Engagement events carrying vitals count as no visitor, pageview or event.
    assert as_map[0] == as_map[1] == as_map[2]
    assert all(m[1] == m[2] for m in as_map[2].values())  # only pageviews are events here


def test_absurd_vitals_are_dropped_and_counted(loaded: Loaded) -> None:
    assert loaded.trace.drops and loaded.drops_seen == loaded.trace.drops
    print("\nvitals dropped by (vital, reason):", dict(sorted(loaded.drops_seen.items())))


def test_report_errors(loaded: Loaded) -> None:
    """Prints the measured relative errors (run with -s); runs last in this module."""
    worst = max((e[-1] for e in loaded.errors), default=0.0)
    for table, dim, value, vital, n, exact, api, error in sorted(loaded.errors):
        print(f"{table:10} {dim:14} {value:12} {vital:4} n={n:4} exact={exact:10.4f} "
              f"api={api!s:>8} err={100 * error:.2f}%")  # fmt: skip
    print(f"worst relative error: {100 * worst:.2f}%")
    assert worst <= MAX_RELATIVE_ERROR
