"""Ingest answers on the real stack: errors name the field, are counted, and lose nothing else;
late hits correct earlier minutes; the CLI reports start failures in one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.clock import day_of
from tests.conftest import ROOT, Stack, free_port

pytestmark = pytest.mark.integration

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


@pytest.fixture(scope="module")
def site(stack: Stack) -> tuple[str, str]:
    key = stack.add_site("ingest.test")
    time.sleep(1.5)
    return "ingest.test", key


def post_event(stack: Stack, body: bytes | dict[str, object], **headers: str) -> httpx.Response:
    headers = {"User-Agent": CHROME, **headers}
    if isinstance(body, dict):
        return httpx.post(f"{stack.url}/api/event", json=body, headers=headers)
    return httpx.post(f"{stack.url}/api/event", content=body, headers=headers)


def metric(stack: Stack, name: str, labels: str = "") -> float:
    text = httpx.get(f"{stack.url}/metrics").text
    for line in text.splitlines():
        if line.startswith(name + (labels or " ")) or line.startswith(f"{name}{{{labels}}}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def pageviews(stack: Stack, site: tuple[str, str], page: str, date_range: object) -> int:
    resp = httpx.post(
        f"{stack.url}/api/v2/query",
        headers={"Authorization": f"Bearer {site[1]}"},
        json={
            "site_id": site[0],
            "metrics": ["pageviews"],
            "date_range": date_range,
            "filters": [["is", "event:page", [page]]],
        },
    )
    assert resp.status_code == 200, resp.text
    return int(resp.json()["results"][0]["metrics"][0])


def wait_for(predicate: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise AssertionError("condition not met in time")


def test_invalid_events_name_the_field_and_are_counted(stack: Stack, site: tuple[str, str]) -> None:
    before = metric(stack, "rollup_ingest_rejected_total", 'field="url"')
    cases = [
        (b'{"name": "pageview"}', "url"),
        (b'{"url": "https://ingest.test/"}', "name"),
        (b'{"n": "pageview", "u": "javascript:alert(1)"}', "url"),
        (b'{"n": "pageview", "u": "https://ingest.test/", "i": "yes"}', "interactive"),
        (
            b'{"n": "pageview", "u": "https://ingest.test/", "p": {"k": "' + b"x" * 2100 + b'"}}',
            "props",
        ),
        (b"[1, 2]", "body"),
        (b"{not json", "body"),
    ]
    for body, field in cases:
        resp = post_event(stack, body)
        assert resp.status_code == 400, body
        assert field in resp.json()["errors"], (body, resp.text)
    assert metric(stack, "rollup_ingest_rejected_total", 'field="url"') >= before + 2
    resp = httpx.post(
        f"{stack.url}/api/event",
        content=b'{"n":"pageview","u":"https://ingest.test/"}',
        headers={"User-Agent": ""},
    )
    assert resp.status_code == 400 and "user_agent" in resp.json()["errors"]
    huge = b'{"n":"pageview","u":"https://ingest.test/","p":{"a":"' + b"x" * 70_000 + b'"}}'
    assert post_event(stack, huge).status_code == 413


def test_bad_input_loses_nothing_else(stack: Stack, site: tuple[str, str]) -> None:
    page = f"/good-{time.time_ns()}"
    for i in range(20):
        assert post_event(stack, b"{broken").status_code == 400
        body = {"n": "pageview", "u": f"https://ingest.test{page}", "d": "ingest.test"}
        assert post_event(stack, body, **{"X-Forwarded-For": f"8.8.8.{i}"}).status_code == 202
    wait_for(lambda: pageviews(stack, site, page, "day") == 20)
    assert httpx.get(f"{stack.url}/api/health").status_code == 200


def test_late_hit_corrects_a_written_minute(stack: Stack, site: tuple[str, str]) -> None:
    page = f"/late-{time.time_ns()}"
    minute = (int(time.time()) // 60 - 90) * 60  # 90 minutes ago: long written and closed
    line = {"name": "pageview", "url": f"https://ingest.test{page}", "domain": "ingest.test",
            "timestamp": minute + 5, "ip": "8.8.8.8", "user_agent": CHROME}  # fmt: skip
    auth = {"Authorization": f"Bearer {stack.admin_token}"}
    import orjson

    resp = httpx.post(f"{stack.url}/api/import", content=orjson.dumps(line), headers=auth)
    assert resp.status_code == 202 and resp.json()["accepted"] == 1
    day = [day_of(minute), day_of(minute)]  # not "day": 90 minutes ago may be yesterday
    wait_for(lambda: pageviews(stack, site, page, day) == 1)
    # The same minute again, after it was written: a correction, not a drop.
    line["timestamp"] = minute + 30
    resp = httpx.post(f"{stack.url}/api/import", content=orjson.dumps(line), headers=auth)
    assert resp.status_code == 202
    wait_for(lambda: pageviews(stack, site, page, day) == 2)
    since = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(minute))
    until = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(minute + 59))
    assert pageviews(stack, site, page, [since, until]) == 2


def test_import_needs_the_admin_token(stack: Stack) -> None:
    resp = httpx.post(f"{stack.url}/api/import", content=b"{}")
    assert resp.status_code == 401
    resp = httpx.post(f"{stack.url}/api/import", content=b"{}",
                      headers={"Authorization": "Bearer wrong"})  # fmt: skip
    assert resp.status_code == 401


def test_metrics_and_health(stack: Stack) -> None:
    health = httpx.get(f"{stack.url}/api/health")
    assert health.status_code == 200
    assert health.json() == {"broker": "ok", "redis": "ok", "clickhouse": "ok"}
    text = httpx.get(f"{stack.url}/metrics").text
    assert "rollup_ingest_accepted_total" in text
    assert "rollup_store_rows_total" in text


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "ROLLUP_DATA_DIR": str(tmp_path), "ROLLUP_HTTP_PORT": str(port),
               "ROLLUP_BROKER_PORT": str(free_port())}  # fmt: skip
        out = subprocess.run([sys.executable, "-m", "engine.cli", "run"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 1
        assert out.stderr.strip().count("\n") == 0, out.stderr
        assert f"port {port} is already in use" in out.stderr and "http" in out.stderr
        env.update(ROLLUP_HTTP_PORT=str(free_port()), ROLLUP_BROKER_PORT=str(port))
        out = subprocess.run([sys.executable, "-m", "engine.cli", "run"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 1
        errors = [line for line in out.stderr.splitlines() if line.startswith("rollup:")]
        assert errors and "broker" in errors[0] and "already in use" in errors[0], out.stderr
