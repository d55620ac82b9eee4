"""Ingest throughput with `hey` against `rollup run`, against a do-nothing baseline server in the
same script, and the seconds from a hit to its appearance in the Stats API and realtime endpoint.

    python -m loadtest.ingest_bench [--seconds 10] [--concurrency 64] [--runs 3]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import httpx

from loadtest import progress
from loadtest.harness import RunningStack, embedded_stack, free_port

UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
BODY = '{"n":"pageview","u":"https://bench.test/pricing","d":"bench.test","r":"https://www.google.com/"}'

BASELINE_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 202,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})
"""


def hey(url: str, seconds: int, concurrency: int) -> tuple[float, float, dict[str, int]]:
    out = subprocess.run(
        [
            "hey",
            "-z",
            f"{seconds}s",
            "-c",
            str(concurrency),
            "-m",
            "POST",
            "-T",
            "text/plain",
            "-H",
            f"User-Agent: {UA}",
            "-d",
            BODY,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%% in ([\d.]+) secs".replace("%%", "%"), out)
    codes = {m[0]: int(m[1]) for m in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    return rps, float(p99.group(1)) if p99 else float("nan"), codes


def baseline(seconds: int, concurrency: int) -> float:
    with tempfile.NamedTemporaryFile(
        "w", suffix=".py", dir=".", prefix="_bench_app_", delete=True
    ) as module:
        module.write(BASELINE_APP)
        module.flush()
        name = module.name.rsplit("/", 1)[-1][:-3]
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                f"{name}:app",
                "--port",
                str(port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
        )
        try:
            time.sleep(2)
            rps, _, _ = hey(f"http://127.0.0.1:{port}/", seconds, concurrency)
        finally:
            proc.terminate()
            proc.wait()
    return rps


def freshness(stack: RunningStack, key: str, samples: int = 5) -> tuple[list[float], list[float]]:
    """Seconds from a 202 to the hit's page showing in /api/v2/query and in the live endpoint."""
    to_query, to_live = [], []
    headers = {"Authorization": f"Bearer {key}"}
    with progress.steps("hit -> query and live", samples) as (bars, task):
        for _ in range(samples):
            _freshness_sample(stack, headers, to_query, to_live)
            bars.advance(task)
    return to_query, to_live


def _freshness_sample(
    stack: RunningStack, headers: dict[str, str], to_query: list[float], to_live: list[float]
) -> None:
    page = f"/fresh-{uuid.uuid4().hex[:8]}"
    body = {"n": "pageview", "u": f"https://bench.test{page}", "d": "bench.test"}
    sent = time.monotonic()
    resp = httpx.post(f"{stack.url}/api/event", json=body, headers={"User-Agent": UA})
    assert resp.status_code == 202
    seen_query = seen_live = None
    while seen_query is None or seen_live is None:
        if time.monotonic() - sent > 60:
            raise RuntimeError("hit never appeared")
        if seen_query is None:
            result = httpx.post(
                f"{stack.url}/api/v2/query",
                headers=headers,
                json={
                    "site_id": "bench.test",
                    "metrics": ["pageviews"],
                    "date_range": "30m",
                    "filters": [["is", "event:page", [page]]],
                },
            ).json()
            if result["results"][0]["metrics"][0] == 1:
                seen_query = time.monotonic() - sent
        if seen_live is None:
            live = httpx.get(
                f"{stack.url}/api/v1/stats/realtime/live",
                headers=headers,
                params={"site_id": "bench.test"},
            ).json()
            if any(p == page for p, _ in live["top_pages"]) or _page_in(live, page):
                seen_live = time.monotonic() - sent
        time.sleep(0.05)
    to_query.append(seen_query)
    to_live.append(seen_live)
    time.sleep(1.5)


def _page_in(live: dict[str, object], page: str) -> bool:
    return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("hey"):
        sys.exit("hey is not installed: apt-get install -y hey")
    base = []
    for run in range(args.runs):
        with progress.timed(f"baseline run {run + 1}/{args.runs}", args.seconds):
            base.append(baseline(args.seconds, args.concurrency))
    with embedded_stack() as stack:
        key = stack.add_site("bench.test")
        time.sleep(1.5)
        engine, p99s = [], []
        for run in range(args.runs):
            with progress.timed(f"engine run {run + 1}/{args.runs}", args.seconds):
                rps, p99, codes = hey(f"{stack.url}/api/event", args.seconds, args.concurrency)
            engine.append(rps)
            p99s.append(p99)
            print(f"  run: {rps:,.0f} req/s, p99 {p99 * 1000:.1f} ms, status codes {codes}")
        time.sleep(3)
        to_query, to_live = freshness(stack, key)
    median_engine, median_base = statistics.median(engine), statistics.median(base)
    print(f"baseline (uvicorn, 202 and nothing else): median {median_base:,.0f} req/s")
    print(
        f"rollup ingest /api/event (202 after broker ack): median {median_engine:,.0f} req/s, "
        f"p99 {statistics.median(p99s) * 1000:.1f} ms"
    )
    print(f"ratio engine/baseline: {median_engine / median_base:.2f}")
    print(
        f"hit -> /api/v2/query: median {statistics.median(to_query):.2f} s "
        f"(max {max(to_query):.2f} s)"
    )
    print(
        f"hit -> realtime live: median {statistics.median(to_live):.2f} s "
        f"(max {max(to_live):.2f} s)"
    )


if __name__ == "__main__":
    main()
