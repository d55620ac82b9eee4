"""Prometheus metrics of every role on the real embedded stack (`rollup run`): each metric the
operators' dashboard and alerts rely on moves as it should after real requests and hits."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.clock import one_day_anchor
from tests.conftest import ROOT, Stack

pytestmark = pytest.mark.integration

SITE = "metrics.test"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0 metrics-test"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    resp = httpx.get(url, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def labelled(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def worker_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.env['ROLLUP_WORKER_WEB_PORT']}"


def live_url(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.env['ROLLUP_LIVE_WEB_PORT']}"


def eventually(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def site_key(stack: Stack) -> str:
    key = stack.add_site(SITE)
    time.sleep(1.5)  # the sites refresh
    return key


def test_run_prints_the_urls_to_open(stack: Stack, site_key: str) -> None:
    # `rollup run` printed its welcome at start (the fixture's pipe holds it unread).
    assert stack.proc.stdout is not None
    fd = stack.proc.stdout.fileno()
    text = b""
    while b"Ctrl-C stops everything." not in text and select.select([fd], [], [], 5)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        text += chunk
    out = text.decode()
    assert f"POST {stack.url}/api/event" in out
    assert f"POST {stack.url}/api/v2/query" in out
    assert f"{stack.url}/dashboard/" in out
    assert f"{stack.url}/metrics (ingest, api)" in out
    assert f"{worker_url(stack)}/metrics (worker)" in out
    assert f"{live_url(stack)}/metrics (live)" in out
    assert "admin token" not in out  # given by the environment, so not generated


def test_worker_serves_metrics_and_health(stack: Stack) -> None:
    # Ready once the group is joined; the heartbeat reports it within a few seconds.
    def healthy() -> bool:
        health = httpx.get(f"{worker_url(stack)}/api/health", timeout=5)
        print(health.status_code, health.text)
        return health.status_code == 200 and health.json() == {"worker": "ok"}

    eventually(healthy, timeout=20)
    samples = scrape(f"{worker_url(stack)}/metrics")
    assert value(samples, "rollup_worker_ready") == 1
    assert httpx.get(f"{worker_url(stack)}/nothing", timeout=5).status_code == 404
    for base in (worker_url(stack), live_url(stack), stack.url):
        live = httpx.get(f"{base}/api/health?probe=liveness", timeout=5)
        assert live.status_code == 200, live.text


def test_live_role_serves_metrics_and_health(stack: Stack) -> None:
    def healthy() -> bool:
        health = httpx.get(f"{live_url(stack)}/api/health", timeout=5)
        return health.status_code == 200 and health.json() == {"live": "ok"}

    eventually(healthy, timeout=20)
    assert value(scrape(f"{live_url(stack)}/metrics"), "rollup_live_ready") == 1


def test_metrics_move_after_hits(stack: Stack, site_key: str) -> None:
    api = f"{stack.url}/metrics"
    before, worker_before = scrape(api), scrape(f"{worker_url(stack)}/metrics")
    live_before = scrape(f"{live_url(stack)}/metrics")

    # 20 hits accepted, one bot, one unknown site, one invalid body.
    for i in range(20):
        resp = httpx.post(
            f"{stack.url}/api/event",
            json={"n": "pageview", "u": f"https://{SITE}/page-{i % 4}"},
            headers={"User-Agent": FIREFOX, "X-Forwarded-For": f"203.0.113.{i}"},
        )
        assert resp.status_code == 202
    bot = {"n": "pageview", "u": f"https://{SITE}/"}
    assert httpx.post(f"{stack.url}/api/event", json=bot, headers={"User-Agent": GOOGLEBOT})
    unknown = {"n": "pageview", "u": "https://unknown.metrics.test/"}
    httpx.post(f"{stack.url}/api/event", json=unknown, headers={"User-Agent": FIREFOX})
    bad = httpx.post(f"{stack.url}/api/event", content=b"{", headers={"User-Agent": FIREFOX})
    assert bad.status_code == 400

    # A hit 20 minutes older than its visitor's newest: past the lateness window.
    fresh = one_day_anchor(time.time() - 30, 1200)  # one UTC day, so one visitor salt
    auth = {"Authorization": f"Bearer {stack.admin_token}"}
    for ts, page in ((fresh, "/fresh"), (fresh - 1200, "/late")):
        line = {"name": "pageview", "url": f"https://{SITE}{page}", "timestamp": ts,
                "ip": "198.51.100.7", "user_agent": FIREFOX}  # fmt: skip
        resp = httpx.post(f"{stack.url}/api/import", content=orjson.dumps(line), headers=auth)
        assert resp.status_code == 202, resp.text

    query = {"site_id": SITE, "metrics": ["pageviews"], "date_range": "day"}
    ok = httpx.post(f"{stack.url}/api/v2/query", json=query,
                    headers={"Authorization": f"Bearer {site_key}"})  # fmt: skip
    assert ok.status_code == 200
    denied = httpx.post(f"{stack.url}/api/v2/query", json=query,
                        headers={"Authorization": "Bearer wrong"})  # fmt: skip
    assert denied.status_code == 401

    after = scrape(api)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Ingest: requests by status, drops by reason, produce latency and message sizes.
    assert delta("rollup_ingest_requests_total", status="202") == 22
    assert delta("rollup_ingest_requests_total", status="400") == 1
    assert delta("rollup_ingest_dropped_total", reason="bot") == 1
    assert delta("rollup_ingest_dropped_total", reason="unknown_site") == 1
    assert delta("rollup_ingest_accepted_total") == 22
    assert delta("rollup_ingest_message_hits_sum") == 22
    assert delta("rollup_ingest_produce_seconds_count") >= 3
    assert delta("rollup_ingest_produce_seconds_sum") > 0
    assert value(after, "rollup_ingest_pending_hits") == 0
    # HTTP by endpoint: route templates, statuses and latencies.
    assert delta("rollup_http_requests_total", endpoint="/api/event", status="202") == 22
    assert delta("rollup_http_request_duration_seconds_count", endpoint="/api/event") == 23
    assert delta("rollup_http_requests_total", endpoint="/api/import", status="202") == 2
    assert delta("rollup_http_requests_total", endpoint="/api/v2/query", status="200") == 1
    assert delta("rollup_http_requests_total", endpoint="/api/v2/query", status="401") == 1
    assert delta("rollup_http_request_duration_seconds_count", endpoint="/api/v2/query") == 2
    assert (
        delta("rollup_stats_query_seconds_count", table="rollup_day")
        + delta("rollup_stats_query_seconds_count", table="rollup_hour")
        + delta("rollup_stats_query_seconds_count", table="rollup_minute")
        == 1
    )
    httpx.get(f"{stack.url}/no/such/path")
    assert (
        delta_now(stack, after, "rollup_http_requests_total", endpoint="other", status="404") == 1
    )

    # Worker: hits and messages processed, batch sizes, late hits, Faust's own sensors.
    def worker_delta(name: str, **labels: str) -> float:
        now_samples = scrape(f"{worker_url(stack)}/metrics")
        return value(now_samples, name, **labels) - value(worker_before, name, **labels)

    eventually(lambda: worker_delta("rollup_worker_hits_total") >= 22)
    assert worker_delta("rollup_worker_messages_total") >= 3
    assert worker_delta("rollup_worker_batch_messages_count") >= 1
    assert worker_delta("rollup_worker_batch_messages_sum") >= 3
    assert worker_delta("rollup_worker_batch_seconds_count") >= 1
    assert worker_delta("rollup_worker_late_hits_total") == 1
    assert worker_delta("faust_messages_received_total") >= 3

    # Live counters: every hits message counted, each with its delay to Redis.
    def live_delta(name: str) -> float:
        return value(scrape(f"{live_url(stack)}/metrics"), name) - value(live_before, name)

    eventually(lambda: live_delta("rollup_live_messages_total") >= 3)
    assert live_delta("rollup_live_delay_seconds_count") == live_delta("rollup_live_messages_total")
    assert live_delta("rollup_live_failures_total") == 0

    # Consumer lag per hits partition: reported for every partition, and drains to zero.
    def lag_drained() -> bool:
        lags = {
            dict(labels)["partition"]: v
            for labels, v in labelled(
                scrape(f"{worker_url(stack)}/metrics"), "rollup_worker_consumer_lag_messages"
            ).items()
            if dict(labels)["topic"] == "hits"
        }
        partitions = int(stack.env.get("ROLLUP_TOPIC_PARTITIONS", "4"))
        return len(lags) == partitions and all(v == 0 for v in lags.values())

    eventually(lag_drained, timeout=30)

    # Table sizes: the visitors just seen hold session state; RocksDB has bytes on disk.
    eventually(
        lambda: (
            value(
                scrape(f"{worker_url(stack)}/metrics"), "rollup_worker_table_keys", table="sessions"
            )
            >= 21
        ),
        timeout=40,
    )
    assert value(scrape(f"{worker_url(stack)}/metrics"), "rollup_worker_state_bytes") > 0

    # Store writer: rows written and insert latency per table.
    eventually(lambda: delta_now(stack, before, "rollup_store_rows_total", table="events") >= 22)
    for table in ("events", "rollup_log", "sessions"):
        assert delta_now(stack, before, "rollup_store_insert_seconds_count", table=table) >= 1
    assert delta_now(stack, before, "rollup_store_rows_total", table="rollup_log") >= 22
    # Stage timing: each stored output message's delay from the worker's send, each batch's time.
    messages = delta_now(stack, before, "rollup_store_delay_seconds_count")
    assert messages >= 3
    assert 0 < delta_now(stack, before, "rollup_store_delay_seconds_sum") < 60 * messages
    assert delta_now(stack, before, "rollup_store_batch_seconds_count") >= 1


def delta_now(stack: Stack, before: Samples, name: str, **labels: str) -> float:
    return value(scrape(f"{stack.url}/metrics"), name, **labels) - value(before, name, **labels)


def test_cli_import_prints_its_result_on_stdout(stack: Stack, site_key: str) -> None:
    # Progress goes to a terminal's stderr only: stdout stays the JSON result.
    now = time.time()
    lines = [
        {
            "name": "pageview",
            "url": f"https://{SITE}/imported-{i}",
            "timestamp": now - 90 - i,
            "ip": "192.0.2.10",
            "user_agent": FIREFOX,
        }
        for i in range(3)
    ]
    path = stack.data_dir / "import.ndjson"
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n{not json\n")
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "import", str(path)],
        env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    result = orjson.loads(done.stdout)
    assert result["accepted"] == 3 and result["errors"][0]["line"] == 4
    assert "\x1b[" not in done.stderr  # no progress bar drawn off a terminal
