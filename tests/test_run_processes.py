"""`rollup run` as four engine processes: the ingest process owns the public port and forwards
everything but hits to the api process (which owns the chDB store) on a loopback port. Through
the public port alone: hits reach the Stats API, health and metrics cover both processes, the
api's answers arrive unchanged, an api process that is down gets a clear 503, a crashed one is
restarted, and a stop takes ingest, the live counters, worker and api down in that order."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtest.harness import spawn
from tests.conftest import ROOT, Stack, free_port, running_stack

pytestmark = pytest.mark.integration

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0 run-test"
SITE = "run-processes.test"


def eventually(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.3)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def site_key(stack: Stack) -> str:
    key = stack.add_site(SITE)
    time.sleep(1.5)  # the sites refresh
    return key


def query(url: str, key: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(
        f"{url}/api/v2/query", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def test_four_engine_processes_and_the_public_port_is_the_ingest(stack: Stack) -> None:
    roles = stack.engine_processes()
    assert set(roles) == {"ingest", "api", "worker", "live"}, roles
    # The api listens on loopback at another port; the public port is the ingest process's.
    logs = (stack.data_dir / "logs" / "api.log").read_text()
    assert f"listening on http://127.0.0.1:{stack.url.rsplit(':', 1)[1]}" not in logs
    assert "api listening on http://127.0.0.1:" in logs
    ingest_log = (stack.data_dir / "logs" / "ingest.log").read_text()
    assert f"ingest listening on {stack.url}" in ingest_log


def test_hits_posted_to_the_public_port_show_in_the_stats_api(stack: Stack, site_key: str) -> None:
    page = f"/e2e-{uuid.uuid4().hex[:8]}"
    for i in range(12):
        resp = httpx.post(
            f"{stack.url}/api/event",
            json={"n": "pageview", "u": f"https://{SITE}{page}"},
            headers={"User-Agent": FIREFOX, "X-Forwarded-For": f"198.51.100.{i % 4}"},
        )
        assert resp.status_code == 202 and "x-plausible-dropped" not in resp.headers
    body = {
        "site_id": SITE,
        "metrics": ["visitors", "pageviews"],
        "date_range": "day",
        "filters": [["is", "event:page", [page]]],
    }

    def counted() -> bool:
        resp = query(stack.url, site_key, body)
        assert resp.status_code == 200, resp.text
        return bool(resp.json()["results"][0]["metrics"] == [4, 12])

    eventually(counted)
    live = httpx.get(
        f"{stack.url}/api/v1/stats/realtime/live",
        params={"site_id": SITE},
        headers={"Authorization": f"Bearer {site_key}"},
    )
    assert live.status_code == 200
    eventually(
        lambda: any(
            p == page
            for p, _ in httpx.get(
                f"{stack.url}/api/v1/stats/realtime/live",
                params={"site_id": SITE},
                headers={"Authorization": f"Bearer {site_key}"},
            ).json()["top_pages"]
        ),
        timeout=30,
    )


def test_combined_health(stack: Stack) -> None:
    resp = httpx.get(f"{stack.url}/api/health", timeout=15)
    assert resp.status_code == 200
    assert resp.json() == {"broker": "ok", "redis": "ok", "clickhouse": "ok"}


def test_combined_metrics_each_family_once(stack: Stack, site_key: str) -> None:
    text = httpx.get(f"{stack.url}/metrics", timeout=15).text
    for marker in ("# TYPE", "# HELP"):
        names = Counter(line.split()[2] for line in text.splitlines() if line.startswith(marker))
        assert [n for n, c in names.items() if c > 1] == []
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # The ingest's figures and the api's, in one scrape.
    assert "rollup_ingest_accepted" in families and "rollup_store_rows" in families
    assert any(s.labels.get("table") == "events" for s in families["rollup_store_rows"].samples)
    processes = {s.labels.get("process") for s in families["process_resident_memory_bytes"].samples}
    assert processes == {"ingest", "api"}
    # A series is reported once: summed over the two processes, not listed twice.
    series = Counter(
        (s.name, tuple(sorted(s.labels.items()))) for f in families.values() for s in f.samples
    )
    assert [k for k, c in series.items() if c > 1] == []


def test_api_answers_pass_unchanged(stack: Stack, site_key: str) -> None:
    # Statuses and JSON errors.
    denied = query(stack.url, "wrong", {"site_id": SITE, "metrics": ["visitors"]})
    assert denied.status_code == 401 and "error" in denied.json()
    assert httpx.get(f"{stack.url}/api/v2/query").status_code == 405
    assert httpx.get(f"{stack.url}/no/such/path").status_code == 404
    bad = query(stack.url, site_key, {"site_id": SITE, "metrics": ["nope"], "date_range": "day"})
    assert bad.status_code == 400 and "nope" in bad.json()["error"]
    # Headers of the api's answers, and a large file streamed through unchanged.
    page = httpx.get(f"{stack.url}/dashboard/{SITE}")
    assert (
        page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    )
    bundle = httpx.get(f"{stack.url}/assets/dashboard.js?v=1")
    assert bundle.status_code == 200
    assert bundle.content == (ROOT / "web" / "dist" / "dashboard.js").read_bytes()
    assert bundle.headers["content-length"] == str(len(bundle.content))
    tracker = httpx.get(f"{stack.url}/js/script.js")
    assert tracker.status_code == 200 and tracker.headers["access-control-allow-origin"] == "*"
    # A query string with encoded values reaches the api as sent.
    realtime = httpx.get(
        f"{stack.url}/api/v1/stats/realtime/visitors?site_id={SITE.replace('.', '%2E')}",
        headers={"Authorization": f"Bearer {site_key}"},
    )
    assert realtime.status_code == 200 and isinstance(realtime.json(), int)


def test_site_added_through_the_admin_api_takes_hits_at_once(stack: Stack) -> None:
    domain = f"admin-{uuid.uuid4().hex[:8]}.test"
    made = httpx.post(
        f"{stack.url}/api/admin/sites",
        json={"domain": domain},
        headers={"Authorization": f"Bearer {stack.admin_token}"},
    )
    assert made.status_code == 201, made.text
    # The api process made it; the ingest process knows it before the answer arrived.
    resp = httpx.post(
        f"{stack.url}/api/event",
        json={"n": "pageview", "u": f"https://{domain}/"},
        headers={"User-Agent": FIREFOX},
    )
    assert resp.status_code == 202 and "x-plausible-dropped" not in resp.headers


@pytest.fixture
def lone_ingest(stack: Stack) -> Iterator[str]:
    """An ingest process on the stack's broker and Redis whose api process is not running."""
    port = free_port()
    env = {
        **stack.env,
        "ROLLUP_HTTP_PORT": str(port),
        "ROLLUP_API_UPSTREAM_URL": f"http://127.0.0.1:{free_port()}",
    }
    proc = spawn("ingest", env, stack.data_dir / "logs" / "lone-ingest.log")
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, "ingest exited"
            try:
                return httpx.get(f"{url}/api/health?probe=liveness").status_code == 200
            except httpx.HTTPError:
                return False

        eventually(up, timeout=60)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_api_process_down(lone_ingest: str, site_key: str) -> None:
    health = httpx.get(f"{lone_ingest}/api/health", timeout=15)
    assert health.status_code == 503
    status = health.json()
    assert status["broker"] == "ok" and status["redis"] == "ok"
    assert status["api"].startswith("down: api process unreachable")
    resp = query(lone_ingest, site_key, {"site_id": SITE, "metrics": ["visitors"]})
    assert resp.status_code == 503 and resp.headers["retry-after"] == "2"
    assert "api process is not answering" in resp.json()["error"]
    # Its own metrics still, valid; hits are still taken.
    metrics = httpx.get(f"{lone_ingest}/metrics", timeout=15)
    assert metrics.status_code == 200
    families = {f.name for f in text_string_to_metric_families(metrics.text)}
    assert "rollup_ingest_accepted" in families and "rollup_proxy_errors" in families
    hit = httpx.post(
        f"{lone_ingest}/api/event",
        json={"n": "pageview", "u": f"https://{SITE}/lone"},
        headers={"User-Agent": FIREFOX},
    )
    assert hit.status_code == 202


def test_crashed_api_is_restarted_and_stop_order(tmp_path: Path) -> None:
    """On a stack of its own: SIGKILL the api process, then stop the whole stack."""
    with running_stack(tmp_path, wait_for_worker=False) as own:
        before = own.engine_processes()
        key = own.add_site("restart.test")
        body = {"site_id": "restart.test", "metrics": ["visitors"], "date_range": "day"}
        eventually(lambda: query(own.url, key, body).status_code == 200)
        os.kill(before["api"], signal.SIGKILL)
        statuses = set()

        def back() -> bool:
            status = query(own.url, key, body).status_code
            statuses.add(status)
            return status == 200

        eventually(back, timeout=120)
        assert statuses - {200} <= {502, 503}, statuses
        after = own.engine_processes()
        assert after["api"] != before["api"] and after["ingest"] == before["ingest"]

        # Stop: ingest first, then the live counters and the worker, then the api.
        gone: dict[str, float] = {}
        own.proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        while len(gone) < 4 and time.monotonic() - started < 90:
            for role, pid in after.items():
                if role not in gone and not alive(pid):
                    gone[role] = time.monotonic() - started
            time.sleep(0.01)
        own.proc.wait(60)
    assert set(gone) == {"ingest", "live", "worker", "api"}, gone
    assert gone["ingest"] <= gone["live"] <= gone["worker"] <= gone["api"], gone


def test_internal_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **os.environ,
            "ROLLUP_DATA_DIR": str(tmp_path),
            "ROLLUP_HTTP_PORT": str(free_port()),
            "ROLLUP_BROKER_PORT": str(free_port()),
            "ROLLUP_INTERNAL_API_PORT": str(port),
        }
        out = subprocess.run(
            [sys.executable, "-m", "engine.cli", "run"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0, out.stderr
    assert f"api: internal port {port} is already in use" in out.stderr
    assert "ROLLUP_INTERNAL_API_PORT" in out.stderr
