"""Two tenants on every HTTP endpoint, with the application database both the default SQLite
file (`stack`) and a real PostgreSQL server (`pg_stack`): a key reads its own sites only, and
a request for any other site is a 401 that cannot be told from an unknown site or a wrong key;
the admin token guards import and site management; keys can be revoked and rotated; the
Stats API and ingest limits are shared through Redis and answer 429 with Retry-After."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from engine.ratelimit import SharedRateLimiter
from tests.conftest import PG_STACK_CLIENT_LIMIT, PG_STACK_SITE_LIMIT, Stack

pytestmark = pytest.mark.integration

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"


def metric(stack: Stack, name: str, labels: str) -> float:
    for line in httpx.get(f"{stack.url}/metrics").text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Tenants:
    """Tenant A owns site a, tenant B site b; made over the admin API and the CLI."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        tag = uuid.uuid4().hex[:8]
        self.a, self.b = f"a-{tag}.test", f"b-{tag}.test"
        resp = self.admin("POST", "sites", {"domain": self.a, "timezone": "Europe/Berlin"})
        assert resp.status_code == 201, resp.text
        self.key_a = resp.json()["key"]
        self.key_b = stack.add_site(self.b)  # the CLI, on the same database
        self.c = httpx.Client(base_url=stack.url, timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.query(self.key_b, self.b).status_code != 200:
            time.sleep(0.2)

    def admin(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """As the admin by default; `token=""` sends no Authorization header."""
        token = self.stack.admin_token if token is None else token
        return httpx.request(
            method,
            f"{self.stack.url}/api/admin/{path}",
            content=orjson.dumps(body) if body is not None else None,
            headers={"Authorization": f"Bearer {token}"} if token else {},
        )

    def query(self, key: str | None, site: str, **extra: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        body = {"site_id": site, "metrics": ["pageviews"], "date_range": "day", **extra}
        return httpx.post(f"{self.stack.url}/api/v2/query", json=body, headers=headers)

    def realtime(self, kind: str, key: str | None, site: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return httpx.get(
            f"{self.stack.url}/api/v1/stats/realtime/{kind}",
            params={"site_id": site},
            headers=headers,
        )


@pytest.fixture(params=["stack", "pg_stack"], scope="module")
def tenants(request: pytest.FixtureRequest) -> Iterator[Tenants]:
    yield Tenants(request.getfixturevalue(request.param))


def site_endpoints(t: Tenants) -> dict[str, Any]:
    """Every endpoint that reads a site's data: (key, site) -> response."""
    return {
        "query": lambda key, site: t.query(key, site),
        "realtime_visitors": lambda key, site: t.realtime("visitors", key, site),
        "realtime_live": lambda key, site: t.realtime("live", key, site),
    }


def test_each_key_reads_only_its_own_site_on_every_endpoint(tenants: Tenants) -> None:
    t = tenants
    for name, call in site_endpoints(t).items():
        assert call(t.key_a, t.a).status_code == 200, name
        assert call(t.key_b, t.b).status_code == 200, name
        refusals = [
            call(t.key_a, t.b),  # another tenant's site
            call(t.key_b, t.a),
            call(t.key_a, "nowhere.test"),  # a site that does not exist
            call("rk_" + "A" * 43, t.a),  # a key that does not exist
            call(t.key_a + "x", t.a),
        ]
        assert {r.status_code for r in refusals} == {401}, name
        # Indistinguishable: the same body (but for the site asked for, which it names) and
        # the same headers.
        asked = [t.b, t.a, "nowhere.test", t.a, t.a]
        bodies = {
            r.content.replace(site.encode(), b"SITE")
            for r, site in zip(refusals, asked, strict=True)
        }
        assert len(bodies) == 1, (name, [r.text for r in refusals])
        heads = {
            tuple(
                sorted((k, v) for k, v in r.headers.items() if k not in ("date", "content-length"))
            )
            for r in refusals
        }
        assert len(heads) == 1, name
        missing = call(None, t.a)
        assert missing.status_code == 401 and "missing" in missing.json()["error"], name
    # A body that is not JSON, from a stranger, learns nothing either.
    resp = httpx.post(
        f"{t.stack.url}/api/v2/query", content=b"{", headers={"Authorization": "Bearer nope"}
    )
    assert resp.status_code == 401


def test_import_and_management_need_the_admin_token(tenants: Tenants) -> None:
    t = tenants
    line = orjson.dumps(
        {
            "name": "pageview",
            "url": f"https://{t.a}/",
            "domain": t.a,
            "timestamp": time.time() - 60,
            "ip": "192.0.2.1",
            "user_agent": FIREFOX,
        }
    )
    for token in (None, t.key_a, t.key_b, "wrong"):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = httpx.post(f"{t.stack.url}/api/import", content=line, headers=headers)
        assert resp.status_code == 401, (token, resp.text)
        for method, path, body in [
            ("GET", "sites", None),
            ("POST", "sites", {"domain": "evil.test"}),
            ("GET", "keys", None),
            ("POST", "keys", {"sites": [t.a, t.b]}),
            ("POST", "keys/" + "0" * 12 + "/revoke", {}),
        ]:
            resp = t.admin(method, path, body, token=token or "")
            assert resp.status_code == 401, (token, method, path, resp.text)
    resp = httpx.post(
        f"{t.stack.url}/api/import",
        content=line,
        headers={"Authorization": f"Bearer {t.stack.admin_token}"},
    )
    assert resp.status_code == 202 and resp.json()["accepted"] == 1, resp.text
    listed = t.admin("GET", "sites").json()
    assert {t.a, t.b} <= {s["domain"] for s in listed}
    assert "evil.test" not in {s["domain"] for s in listed}
    keys = t.admin("GET", f"keys?site_id={t.a}").json()
    assert keys and all(t.a in k["sites"] for k in keys)
    assert all(t.key_a not in orjson.dumps(k).decode() for k in keys)  # ids, never keys


def test_revoke_and_rotate_take_effect_at_once(tenants: Tenants) -> None:
    t = tenants
    made = t.admin("POST", "keys", {"sites": [t.a], "label": "rotating"})
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    assert t.query(key, t.a).status_code == 200
    assert t.query(key, t.b).status_code == 401  # made for a only
    ids = [
        k["key_id"]
        for k in t.admin("GET", f"keys?site_id={t.a}").json()
        if k["label"] == "rotating"
    ]
    assert len(ids) == 1
    rotated = t.admin("POST", f"keys/{ids[0]}/rotate", {})
    assert rotated.status_code == 200, rotated.text
    new_key = rotated.json()["key"]
    assert t.query(key, t.a).status_code == 401
    assert t.query(new_key, t.a).status_code == 200
    new_id = [
        k["key_id"]
        for k in t.admin("GET", f"keys?site_id={t.a}").json()
        if k["label"] == "rotating" and not k["revoked"]
    ]
    # The CLI revokes on the same database the server reads.
    out = t.stack.rollup("sites", "revoke", new_id[0])
    assert "revoked" in out
    for call in site_endpoints(t).values():
        assert call(new_key, t.a).status_code == 401
    assert "revoked" in t.stack.rollup("sites", "keys", t.a)
    bad = t.admin("POST", "keys/zz/revoke", {})
    assert bad.status_code == 400 and "key_id" in bad.json()["errors"]


def test_tenant_data_stays_apart(tenants: Tenants) -> None:
    """Hits for a are counted for a and never appear under b (exact counts)."""
    t = tenants
    page = f"/tenant-{uuid.uuid4().hex[:8]}"
    sent = 0
    for i in range(7):
        resp = httpx.post(
            f"{t.stack.url}/api/event",
            json={"n": "pageview", "u": f"https://{t.a}{page}", "d": t.a},
            headers={"User-Agent": FIREFOX, "X-Forwarded-For": f"192.0.2.{i + 10}"},
        )
        assert resp.status_code == 202, resp.text
        sent += 1
    flt = [["is", "event:page", [page]]]
    deadline = time.monotonic() + 120  # the PostgreSQL stack's worker may still be joining
    counts = (-1, -1)
    while time.monotonic() < deadline:
        a = t.query(t.key_a, t.a, filters=flt).json()["results"][0]["metrics"][0]
        b = t.query(t.key_b, t.b, filters=flt).json()["results"][0]["metrics"][0]
        counts = (a, b)
        if a == sent:
            break
        time.sleep(0.5)
    assert counts == (sent, 0)


def test_stats_api_rate_limit_per_key(tenants: Tenants) -> None:
    t = tenants
    small = t.admin("POST", "keys", {"sites": [t.b], "rate_limit": 3}).json()["key"]
    other = t.admin("POST", "keys", {"sites": [t.b], "rate_limit": 100}).json()["key"]
    before = metric(t.stack, "rollup_rejected_total", 'endpoint="query",reason="rate_limited"')
    answers = [t.query(small, t.b) for _ in range(5)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
    retry = int(answers[3].headers["Retry-After"])
    assert 1 <= retry <= 3600
    assert "rate limit" in answers[3].json()["error"]
    assert t.query(other, t.b).status_code == 200  # limits are per key
    after = metric(t.stack, "rollup_rejected_total", 'endpoint="query",reason="rate_limited"')
    assert after == before + 2
    assert metric(t.stack, "rollup_rate_limited_total", 'scope="stats_key"') >= 2


def test_stats_limit_is_shared_across_processes(stack: Stack) -> None:
    """Two limiters on two connections (as two processes have) admit the limit in total."""

    async def run() -> list[bool]:
        clients = [Redis.from_url(f"unix://{stack.data_dir / 'redis.sock'}") for _ in range(2)]
        limiters = [SharedRateLimiter(c) for c in clients]
        bucket = uuid.uuid4().hex
        decisions = await asyncio.gather(
            *(limiters[i % 2].hit("test", bucket, 10, 3600) for i in range(30))
        )
        for c in clients:
            await c.aclose()
        return [d.allowed for d in decisions]

    assert sum(asyncio.run(run())) == 10


def test_ingest_limits_per_client_and_per_site(pg_stack: Stack) -> None:
    t = Tenants(pg_stack)
    time.sleep(1.0)  # the site list refresh
    url = f"{pg_stack.url}/api/event"
    body = orjson.dumps({"n": "pageview", "u": f"https://{t.a}/", "d": t.a})
    with httpx.Client() as c:
        # Wait for the start of a second so that the burst sits in one window.
        time.sleep(1 - time.time() % 1)
        one = [
            c.post(
                url,
                content=body,
                headers={"User-Agent": FIREFOX, "X-Forwarded-For": "198.51.100.7"},
            )
            for _ in range(PG_STACK_CLIENT_LIMIT + 4)
        ]
    codes = [r.status_code for r in one]
    assert codes[:PG_STACK_CLIENT_LIMIT] == [202] * PG_STACK_CLIENT_LIMIT, codes
    assert codes[PG_STACK_CLIENT_LIMIT:] == [429] * 4, codes
    assert 1 <= int(one[-1].headers["Retry-After"]) <= 2
    time.sleep(2.5)
    with httpx.Client() as c:
        time.sleep(1 - time.time() % 1)
        many = [
            c.post(
                url,
                content=body,
                headers={"User-Agent": FIREFOX, "X-Forwarded-For": f"198.51.100.{i + 20}"},
            )
            for i in range(PG_STACK_SITE_LIMIT + 6)
        ]
    accepted = sum(r.status_code == 202 for r in many)
    assert accepted == PG_STACK_SITE_LIMIT, [r.status_code for r in many]
    assert metric(pg_stack, "rollup_rate_limited_total", 'scope="ingest_client"') >= 4
    assert metric(pg_stack, "rollup_rate_limited_total", 'scope="ingest_site"') >= 6
    # The shared buckets live in Redis under salted hashes, never under the address.
    from tests.test_privacy import redis_dump

    blob = redis_dump(pg_stack.data_dir / "redis.sock")
    assert b"rollup:rl:ingest_client:" in blob
    assert b"198.51.100." not in blob
    # The other tenant's site has its own budget.
    other = orjson.dumps({"n": "pageview", "u": f"https://{t.b}/", "d": t.b})
    resp = httpx.post(
        url, content=other, headers={"User-Agent": FIREFOX, "X-Forwarded-For": "198.51.100.99"}
    )
    assert resp.status_code == 202
