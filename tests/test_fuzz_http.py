"""Fuzzing the HTTP endpoints of the real embedded stack: generated bodies and headers on
`/api/event`, `/api/v2/query`, `/api/import` and the realtime endpoints get no 5xx; the valid
events sent between the bad ones are all counted (exact, through the Stats API); and every
rejection appears in `rollup_rejected_total` under the reason its answer implies."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from engine.rejections import KNOWN_FIELDS
from tests.conftest import Stack
from tests.test_fuzz_ingest import JSON, event_objects, raw_bodies
from tests.test_fuzz_query import bodies as query_bodies

pytestmark = pytest.mark.integration

SITE = "fuzz.test"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    # Generate only: a replayed or shrunk example would be sent (and tallied) twice.
    phases=[Phase.generate],
)
REPORT: dict[str, Any] = {}


def rejections(stack: Stack, endpoint: str) -> Counter[str]:
    found: Counter[str] = Counter()
    prefix = f'rollup_rejected_total{{endpoint="{endpoint}",reason="'
    for line in httpx.get(f"{stack.url}/metrics").text.splitlines():
        if line.startswith(prefix):
            reason = line[len(prefix) :].split('"', 1)[0]
            found[reason] = int(float(line.rsplit(" ", 1)[1]))
    return found


def reason_for(resp: httpx.Response) -> str:
    if resp.status_code == 413:
        return "too_large"
    field = next(iter(resp.json()["errors"]))
    return f"invalid_{field if field in KNOWN_FIELDS else 'other'}"


@pytest.fixture(scope="module")
def site(stack: Stack) -> tuple[str, str]:
    stack.add_site(SITE)
    out = stack.rollup("sites", "add-key", SITE, "--rate-limit", "1000000", "--label", "fuzz")
    time.sleep(1.2)  # the site list refresh
    return SITE, out.strip().splitlines()[-1]


def count_pageviews(stack: Stack, key: str, page: str, expected: int) -> int:
    body = {
        "site_id": SITE,
        "metrics": ["pageviews"],
        "date_range": "day",
        "filters": [["is", "event:page", [page]]],
    }
    deadline = time.monotonic() + 60
    got = -1
    while time.monotonic() < deadline:
        resp = httpx.post(
            f"{stack.url}/api/v2/query", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        assert resp.status_code == 200, resp.text
        got = int(resp.json()["results"][0]["metrics"][0])
        if got >= expected:
            time.sleep(1.5)  # and nothing more arrives
            resp = httpx.post(
                f"{stack.url}/api/v2/query", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            return int(resp.json()["results"][0]["metrics"][0])
        time.sleep(0.5)
    return got


HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from(
            ["application/json", "text/plain", "x/y", "application/json; charset=latin-1"]
        ),
        "X-Forwarded-For": st.sampled_from(
            ["1.2.3.4", "unknown, 5.6.7.8", "::1", "garbage", "1.2.3.4" + ", x" * 50]
        ),
    },
)
AGENTS = st.sampled_from([FIREFOX, FIREFOX, BOT, ""])


def test_event_endpoint_fuzz(stack: Stack, site: tuple[str, str]) -> None:
    page = f"/fuzz-valid-{uuid.uuid4().hex[:8]}"
    expected: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    valid = [0]
    before = rejections(stack, "event")
    client = httpx.Client(base_url=stack.url, timeout=30)

    def send_valid(i: int) -> None:
        resp = client.post(
            "/api/event",
            headers={"User-Agent": FIREFOX, "X-Forwarded-For": f"10.9.{i // 250}.{i % 250}"},
            content=orjson.dumps({"n": "pageview", "u": f"https://{SITE}{page}"}),
        )
        assert resp.status_code == 202 and "x-plausible-dropped" not in resp.headers, resp.text
        valid[0] += 1

    @settings(FUZZ, max_examples=800)
    @given(
        body=raw_bodies
        | event_objects().map(lambda o: {**o, "d": SITE} if len(o) % 3 == 0 else o).map(_dumps)
        | st.just(b'{"n":"pageview","u":"https://fuzz.test/","p":{"a":"' + b"x" * 70_000 + b'"}}'),
        headers=HEADERS,
        agent=AGENTS,
    )
    def one(body: bytes, headers: dict[str, str], agent: str) -> None:
        headers = {**headers, "User-Agent": agent}  # "" sends an empty one: a 400
        resp = client.post("/api/event", content=body, headers=headers)
        statuses[resp.status_code] += 1
        assert resp.status_code in (202, 400, 413), (resp.status_code, resp.text, body[:200])
        if resp.status_code == 202:
            dropped = int(resp.headers.get("x-plausible-dropped", 0))
            if dropped:
                expected["bot" if agent == BOT else "unknown_site"] += dropped
        else:
            expected[reason_for(resp)] += 1
        if sum(statuses.values()) % 5 == 0:
            send_valid(valid[0])

    one()
    after = rejections(stack, "event")
    delta = Counter({k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)})
    REPORT["event"] = {
        "inputs": sum(statuses.values()),
        "valid": valid[0],
        "statuses": dict(statuses),
        "rejections": dict(delta),
    }
    assert delta == expected
    assert count_pageviews(stack, site[1], page, valid[0]) == valid[0]
    assert httpx.get(f"{stack.url}/api/health").status_code == 200


def _dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):
        return b"{"


def test_query_endpoint_fuzz(stack: Stack, site: tuple[str, str]) -> None:
    statuses: Counter[int] = Counter()
    expected: Counter[str] = Counter()
    before = rejections(stack, "query")
    client = httpx.Client(
        base_url=stack.url, timeout=60, headers={"Authorization": f"Bearer {site[1]}"}
    )

    @settings(FUZZ, max_examples=400)
    @given(
        body=query_bodies().map(lambda b: {**b, "site_id": SITE}).map(_dumps)
        | st.binary(max_size=100)
        | JSON.map(_dumps)
    )
    def one(body: bytes) -> None:
        resp = client.post("/api/v2/query", content=body)
        statuses[resp.status_code] += 1
        assert resp.status_code in (200, 400, 401), (resp.status_code, resp.text, body[:300])
        if resp.status_code == 200:
            assert "results" in resp.json()
            return
        assert resp.json()["error"]
        if resp.status_code == 401:  # a body without this key's site_id: the same 401
            expected["unauthorized"] += 1
        elif resp.json()["error"].startswith("body:"):
            expected["invalid_json"] += 1
        else:
            expected["invalid_query"] += 1

    one()
    after = rejections(stack, "query")
    delta = Counter({k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)})
    REPORT["query"] = {
        "inputs": sum(statuses.values()),
        "statuses": dict(statuses),
        "rejections": dict(delta),
    }
    assert delta == expected
    assert statuses[200] > 20  # the generator reaches the store, not only the parser


def test_import_endpoint_fuzz(stack: Stack, site: tuple[str, str]) -> None:
    page = f"/fuzz-import-{uuid.uuid4().hex[:8]}"
    valid = [0]
    lines_sent = [0]
    expected: Counter[str] = Counter()
    before = rejections(stack, "import")
    client = httpx.Client(
        base_url=stack.url, timeout=60, headers={"Authorization": f"Bearer {stack.admin_token}"}
    )
    garbage_line = st.one_of(
        st.binary(max_size=60).filter(lambda b: b"\n" not in b and b"\r" not in b and b.strip()),
        st.builds(
            lambda o, ts, ip, ua: _dumps({**o, "timestamp": ts, "ip": ip, "user_agent": ua}),
            event_objects(),
            st.sampled_from([time.time() - 30, 0, -5, 1e12, "2026-01-01", "x", None, 1e300]),
            st.sampled_from(["192.0.2.1", "bad", None, 4]),
            st.sampled_from([FIREFOX, "", None, 7]),
        ),
    )

    @settings(FUZZ, max_examples=40)
    @given(lines=st.lists(garbage_line, min_size=1, max_size=25))
    def one(lines: list[bytes]) -> None:
        good = _dumps(
            {
                "n": "pageview",
                "u": f"https://{SITE}{page}",
                "timestamp": time.time() - 30,
                "ip": f"10.8.0.{valid[0] % 250}",
                "user_agent": FIREFOX,
            }
        )
        body = b"\n".join([*lines[: len(lines) // 2], good, *lines[len(lines) // 2 :]])
        resp = client.post("/api/import", content=body)
        assert resp.status_code == 202, resp.text
        answer = resp.json()
        valid[0] += 1
        lines_sent[0] += len(lines) + 1
        assert answer["accepted"] >= 1
        for error in answer["errors"]:
            field = next(iter(error["errors"]))
            expected[f"invalid_{field if field in KNOWN_FIELDS else 'other'}"] += 1
        if answer["dropped"]:
            expected["unknown_site"] += answer["dropped"]

    one()
    after = rejections(stack, "import")
    delta = Counter({k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)})
    REPORT["import"] = {"requests": valid[0], "lines": lines_sent[0], "rejections": dict(delta)}
    assert delta == expected
    assert count_pageviews(stack, site[1], page, valid[0]) == valid[0]


def test_realtime_and_admin_fuzz(stack: Stack, site: tuple[str, str]) -> None:
    client = httpx.Client(base_url=stack.url, timeout=30)
    seen: Counter[int] = Counter()

    @settings(FUZZ, max_examples=150)
    @given(
        site_id=st.text(max_size=40),
        path=st.sampled_from(["visitors", "live"]),
        key=st.booleans(),
        admin=st.sampled_from(["sites", "keys", "keys/0123456789ab/rotate", "x"]),
        body=st.binary(max_size=50) | JSON.map(_dumps),
    )
    def one(site_id: str, path: str, key: bool, admin: str, body: bytes) -> None:
        headers = {"Authorization": f"Bearer {site[1]}"} if key else {}
        resp = client.get(
            f"/api/v1/stats/realtime/{path}", params={"site_id": site_id}, headers=headers
        )
        seen[resp.status_code] += 1
        assert resp.status_code in (200, 401)
        resp = client.post(
            f"/api/admin/{admin}",
            content=body,
            headers={"Authorization": f"Bearer {stack.admin_token}"},
        )
        seen[resp.status_code] += 1
        assert resp.status_code in (200, 201, 400, 404), resp.text

    one()
    REPORT["realtime_admin"] = dict(seen)


def test_zz_report() -> None:
    print(
        "\nfuzz report:",
        orjson.dumps(REPORT, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode(),
    )
