"""Ingest throughput with `hey` against `rollup run`, against a do-nothing baseline server in the
same script, and the seconds from a hit to its appearance in the Stats API and realtime endpoint.

    python -m loadtest.ingest_bench [--seconds 20] [--concurrency 64] [--runs 3]
        [--fresh-rate 5000] [--fresh-warmup 10] [--fresh-samples 20]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtest import progress
from loadtest.harness import (
    RunningStack,
    Scrape,
    embedded_stack,
    free_port,
    histogram_quantile,
    metric,
)
from loadtest.results import Target, write_result

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


def hey_command(url: str, seconds: int, concurrency: int, qps_per_worker: float = 0) -> list[str]:
    """`hey` POSTing the realistic hit (`qps_per_worker` caps the rate: hey's -q is per
    connection)."""
    rate = ["-q", str(qps_per_worker)] if qps_per_worker else []
    return [
        "hey", *rate, "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST",
        "-T", "text/plain", "-H", f"User-Agent: {UA}", "-d", BODY, url,
    ]  # fmt: skip


def hey_report(out: str) -> tuple[float, float, dict[str, int]]:
    """Requests/s, p99 seconds and status counts from hey's summary."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%% in ([\d.]+) secs".replace("%%", "%"), out)
    codes = {m[0]: int(m[1]) for m in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    return rps, float(p99.group(1)) if p99 else float("nan"), codes


def hey(url: str, seconds: int, concurrency: int) -> tuple[float, float, dict[str, int]]:
    """One full-blast `hey` run: requests/s, p99 seconds and status counts."""
    command = hey_command(url, seconds, concurrency)
    return hey_report(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def baseline(seconds: int, concurrency: int) -> float:
    with tempfile.TemporaryDirectory(prefix="rollup-bare-app-") as app_dir:
        (Path(app_dir) / "bare_app.py").write_text(BASELINE_APP)
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bare_app:app",
                "--app-dir",
                app_dir,
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


FRESHNESS_LIMIT = 60.0  # seconds; a sample still invisible by then is reported as 60


def freshness(
    stack: RunningStack, key: str, samples: int = 5, pause: float = 1.5
) -> tuple[list[float], list[float]]:
    """Seconds from a 202 to the hit's page showing in /api/v2/query and in the live endpoint,
    each polled by a thread of its own (polled in turn, a slow answer of one delayed the
    other's next look)."""
    to_query, to_live = [], []
    headers = {"Authorization": f"Bearer {key}"}

    def in_query(page: str) -> bool:
        result = httpx.post(
            f"{stack.url}/api/v2/query",
            headers=headers,
            json={
                "site_id": "bench.test",
                "metrics": ["pageviews"],
                "date_range": "30m",
                "filters": [["is", "event:page", [page]]],
            },
            timeout=FRESHNESS_LIMIT,
        ).json()
        return bool(result["results"][0]["metrics"][0] == 1)

    def in_live(page: str) -> bool:
        live = httpx.get(
            f"{stack.url}/api/v1/stats/realtime/live",
            headers=headers,
            params={"site_id": "bench.test"},
            timeout=FRESHNESS_LIMIT,
        ).json()
        return any(p == page for p, _ in live["top_pages"])

    def seconds_until(visible: Any, page: str, sent: float) -> float:
        while not visible(page):
            if time.monotonic() - sent > FRESHNESS_LIMIT:
                return FRESHNESS_LIMIT  # a backlog the pipeline cannot drain
            time.sleep(0.05)
        return time.monotonic() - sent

    with ThreadPoolExecutor(2) as pool:
        for sample in range(samples):
            # The live endpoint lists the 10 top pages, ties by name: every probe page has one
            # view, so each probe's name sorts before the earlier ones' (a random name made the
            # eleventh probe of a run invisible there, "later than the limit").
            page = f"/fresh-{9999 - sample:04d}-{uuid.uuid4().hex[:8]}"
            body = {"n": "pageview", "u": f"https://bench.test{page}", "d": "bench.test"}
            sent = time.monotonic()
            resp = httpx.post(f"{stack.url}/api/event", json=body, headers={"User-Agent": UA})
            assert resp.status_code == 202
            query_seen = pool.submit(seconds_until, in_query, page, sent)
            live_seen = pool.submit(seconds_until, in_live, page, sent)
            to_query.append(query_seen.result())
            to_live.append(live_seen.result())
            if max(to_query[-1], to_live[-1]) >= FRESHNESS_LIMIT:
                break  # the backlog only grows while the load lasts: more samples say nothing new
            time.sleep(pause)
    return to_query, to_live


def wait_drained(stack: RunningStack, hits: int, timeout: float = 600) -> float:
    """Seconds until the worker has processed `hits` and the store holds them: freshness is
    measured at a steady load, not behind the backlog the full-blast runs leave."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        processed = metric(stack.worker_metrics, "rollup_worker_hits_total")
        stored = metric(f"{stack.url}/metrics", "rollup_store_rows_total", {"table": "events"})
        if processed >= hits and stored >= hits:
            return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"{hits:,} hits not drained in {timeout:.0f} s")


def freshness_under_load(
    stack: RunningStack, key: str, rate: int, warmup: float, samples: int
) -> dict[str, Any]:
    """At a steady `rate` hits/s from hey, after `warmup` seconds of it, the seconds from a
    202 to the hit being visible."""
    # hey paces each connection (-q) and a connection waits for its answer, so a rate holds
    # only while latency stays under concurrency / rate: 50 connections kept 5,000 hits/s
    # up to 10 ms, and reached 1,500-3,300 under the engine. Each connection here offers 20
    # hits/s, so 5,000 hits/s holds up to 50 ms.
    concurrency = max(50, rate // 20)
    # hey runs until every probe is done (SIGINT makes it stop and report), so no probe is
    # taken after the load.
    load = subprocess.Popen(
        hey_command(f"{stack.url}/api/event", 3600, concurrency, rate / concurrency),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        time.sleep(warmup)
        before = stage_scrapes(stack)
        to_query, to_live = freshness(stack, key, samples=samples, pause=0.3)
        stages = stage_timings(before, stage_scrapes(stack))
    finally:
        load.send_signal(signal.SIGINT)
        out, _ = load.communicate(timeout=60)
    achieved, p99, codes = hey_report(out)
    return {
        "offered_hits_per_second": rate,
        "warmup_seconds": warmup,
        "achieved_hits_per_second": round(achieved),
        "ingest_p99_ms": round(p99 * 1000, 1),
        "status_codes": codes,
        "to_query_seconds": [round(x, 3) for x in to_query],
        "to_live_seconds": [round(x, 3) for x in to_live],
        "stages_while_probing": stages,
    }


# A hit's way to /api/v2/query, stage by stage: (process, histogram, what it times).
STAGES = (
    ("worker", "rollup_worker_event_lag_seconds", "hit -> worker output sent (newest hit a batch)"),
    ("worker", "rollup_worker_batch_seconds", "worker batch"),
    ("api", "rollup_store_delay_seconds", "worker output sent -> queryable"),
    ("api", "rollup_store_batch_seconds", "store batch (inserts, level derives)"),
    ("api", "rollup_stats_query_seconds", "Stats API answer"),
)


def stage_scrapes(stack: RunningStack) -> dict[str, Scrape]:
    return {"worker": Scrape(stack.worker_metrics), "api": Scrape(f"{stack.url}/metrics")}


def stage_timings(before: dict[str, Scrape], after: dict[str, Scrape]) -> dict[str, Any]:
    """p50 and p99 seconds of each stage's histogram over the probes' minutes, then of the
    store batch's statements by table."""
    timings: dict[str, Any] = {}

    def quantiles(role: str, name: str, labels: dict[str, str] | None = None) -> list[Any]:
        found = [
            histogram_quantile(before[role], after[role], name, q, labels) for q in (0.5, 0.99)
        ]
        return [None if x is None else round(x, 3) for x in found]

    for role, name, what in STAGES:
        timings[what] = quantiles(role, name)
    for kind, name in (
        ("insert", "rollup_store_insert_seconds"),
        ("derive", "rollup_store_derive_seconds"),
    ):
        tables = {s.labels["table"] for s in after["api"].samples if s.name == f"{name}_bucket"}
        for table in sorted(tables):
            timings[f"  {kind} {table}"] = quantiles("api", name, {"table": table})
    return timings


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    if not shutil.which("hey"):
        sys.exit("hey is not installed: apt-get install -y hey")
    runs = Runs()
    with embedded_stack() as stack:
        key = stack.add_site("bench.test")
        time.sleep(1.5)
        # Rounds of bare server, engine, ingest alone: this machine's speed drifts by 2x within
        # minutes, so each ratio compares runs minutes apart at most.
        for number in range(args.runs):
            accepted = sum(codes.get("202", 0) for codes in runs.all_codes)
            with progress.timed(f"round {number + 1}: engine draining the backlog", 60):
                wait_drained(stack, accepted)
            with progress.timed(f"round {number + 1}: bare server", args.seconds):
                runs.base.append(baseline(args.seconds, args.concurrency))
            shares: dict[str, float] = {}
            with (
                progress.timed(f"round {number + 1}: engine", args.seconds),
                stack.cpu_shares(shares),
            ):
                rps, tail, codes = hey(f"{stack.url}/api/event", args.seconds, args.concurrency)
            runs.engine_cores.append(shares)
            runs.engine.append(rps)
            runs.p99s.append(tail)
            runs.all_codes.append(codes)
            # The same with the rest of the engine paused: what the ingest takes when it has
            # the machine (with hey) to itself, as on a node of its own. Kafka keeps the hits.
            shares = {}
            with (
                stack.paused("api", "worker", "live"),
                progress.timed(f"round {number + 1}: ingest alone", args.seconds),
                stack.cpu_shares(shares),
            ):
                rps_alone, tail_alone, codes = hey(
                    f"{stack.url}/api/event", args.seconds, args.concurrency
                )
            runs.alone_cores.append(shares)
            runs.alone.append(rps_alone)
            runs.alone_p99s.append(tail_alone)
            runs.all_codes.append(codes)
            print(
                f"  round {number + 1}: bare {runs.base[-1]:,.0f} req/s; engine {rps:,.0f} req/s, "
                f"p99 {tail * 1000:.1f} ms; ingest alone {rps_alone:,.0f} req/s, "
                f"p99 {tail_alone * 1000:.1f} ms",
                flush=True,
            )
            print(f"    cores, engine: {runs.engine_cores[-1]}", flush=True)
            print(f"    cores, ingest alone: {runs.alone_cores[-1]}", flush=True)
        accepted = sum(codes.get("202", 0) for codes in runs.all_codes)
        with progress.timed("engine draining the runs' backlog", 60):
            drained = wait_drained(stack, accepted)
        print(f"  backlog of the runs drained {drained:.1f} s after they ended", flush=True)
        fresh = freshness_under_load(
            stack, key, args.fresh_rate, args.fresh_warmup, args.fresh_samples
        )
        print(f"  freshness: {fresh}", flush=True)
    results = []
    if runs.engine:
        results.append(ingest_result(args, runs, drained))
    live99, query99 = p99(fresh["to_live_seconds"]), p99(fresh["to_query_seconds"])
    achieved = fresh["achieved_hits_per_second"]
    freshness_result = write_result(
        "freshness",
        fresh,
        [
            Target("steady load hits/s", f">= {args.fresh_rate}", achieved, None),
            Target("202 -> realtime p99 s", "<= 1", round(live99, 3), live99 <= 1),
            Target("202 -> /api/v2/query p99 s", "<= 5", round(query99, 3), query99 <= 5),
        ],
        chart={"realtime p99": live99, "/api/v2/query p99": query99},
        unit="seconds",
    )
    print("  stage            p50 s    p99 s   (while probing)")
    for what, (p50, p99_) in fresh["stages_while_probing"].items():
        print(f"  {what:<48} {p50!s:>7} {p99_!s:>7}")
    return [*results, freshness_result]


@dataclass
class Runs:
    """The ingest rounds' figures, one entry per round (codes: two per round)."""

    base: list[float] = field(default_factory=list)
    engine: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    alone: list[float] = field(default_factory=list)
    alone_p99s: list[float] = field(default_factory=list)
    all_codes: list[dict[str, int]] = field(default_factory=list)
    # Cores each process used during the round, the load generator (hey) and the idle ones.
    engine_cores: list[dict[str, float]] = field(default_factory=list)
    alone_cores: list[dict[str, float]] = field(default_factory=list)


def ingest_result(args: argparse.Namespace, runs: Runs, drained: float) -> dict[str, Any]:
    median_engine, median_base = statistics.median(runs.engine), statistics.median(runs.base)
    median_p99 = statistics.median(runs.p99s) * 1000
    # Per round, then the median: the rounds' machines differ, a round's runs hardly.
    ratio = statistics.median(e / b for e, b in zip(runs.engine, runs.base, strict=True))
    alone_ratio = statistics.median(a / b for a, b in zip(runs.alone, runs.base, strict=True))
    alone_p99 = statistics.median(runs.alone_p99s) * 1000
    return write_result(
        "ingest",
        {
            "command": f"hey -z {args.seconds}s -c {args.concurrency} POST /api/event",
            "engine_requests_per_second": [round(x) for x in runs.engine],
            "engine_p99_ms": [round(x * 1000, 1) for x in runs.p99s],
            "ingest_alone_requests_per_second": [round(x) for x in runs.alone],
            "ingest_alone_p99_ms": [round(x * 1000, 1) for x in runs.alone_p99s],
            "backlog_drained_seconds": round(drained, 1),
            "status_codes": runs.all_codes,
            "bare_server_requests_per_second": [round(x) for x in runs.base],
            "engine_cores_per_round": runs.engine_cores,
            "ingest_alone_cores_per_round": runs.alone_cores,
            "ratios_per_round": [
                round(e / b, 3) for e, b in zip(runs.engine, runs.base, strict=True)
            ],
        },
        [
            Target("requests/s vs bare server", ">= 0.70", round(ratio, 3), ratio >= 0.7),
            Target("p99 latency ms", "<= 20", round(median_p99, 1), median_p99 <= 20),
            Target("engine requests/s (median)", "report", round(median_engine), None),
            Target("ingest alone (rest paused) vs bare", "report", round(alone_ratio, 3), None),
            Target("ingest alone p99 ms", "report", round(alone_p99, 1), None),
        ],
        chart={
            "rollup /api/event": median_engine,
            "ingest alone": statistics.median(runs.alone),
            "bare server": median_base,
        },
        unit="requests/s",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--runs", type=int, default=3, help="rounds of the ingest runs (0: freshness only)"
    )
    parser.add_argument("--fresh-rate", type=int, default=5000)
    parser.add_argument(
        "--fresh-warmup", type=float, default=10, help="seconds of load before the first probe"
    )
    parser.add_argument("--fresh-samples", type=int, default=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
