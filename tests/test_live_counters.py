"""The live topology's write path (topologies/live.py) on a real Redis: counters against an
oracle computed from the generated hits, and exactly once across replays and a batch written
in part before a crash. And `rollup live` as a process on the real broker: counts, health,
metrics and a clean stop."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from config import load_settings
from engine.hits import Hit, encode_hits
from engine.kafka import ensure_topics
from engine.live import live_summary, realtime_visitors
from engine.live_keys import state_key
from engine.stack import redis_binary
from loadtest.harness import free_port, metric
from tests.conftest import ROOT
from topologies.live import apply

SITES = ("a.test", "b.test")


@pytest.fixture
def redis_socket(tmp_path: Path) -> Iterator[Path]:
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        [redis_binary(), "--port", "0", "--unixsocket", str(sock), "--save", ""],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    yield sock
    proc.terminate()
    proc.wait(10)


def hit(site: str, page: str, vid: int, ts: float, name: str = "pageview") -> Hit:
    return Hit(
        ts=ts, site=site, tz="UTC", name=name, vid=vid, vid_prev=0, hostname=site, page=page,
        referrer="", source="", utm_source="", utm_medium="", utm_campaign="", utm_content="",
        utm_term="", device="Desktop", browser="Firefox", browser_version="121.0", os="Linux",
        os_version="", country="", props={}, interactive=True, revenue=None, vitals=None,
    )  # fmt: skip


def record(offset: int, hits: list[Hit], produced: float) -> Any:
    return SimpleNamespace(
        partition=0, offset=offset, timestamp=int(produced * 1000), value=encode_hits(hits)
    )


def generate(now: float, count: int, seed: int) -> list[Any]:
    """Messages of one site each (as the ingest sends them), produced now."""
    rng = random.Random(seed)
    records = []
    for offset in range(count):
        site = rng.choice(SITES)
        hits = [
            hit(site, f"/p{rng.randrange(6)}", rng.randrange(40), now - rng.random() * 5,
                rng.choice(["pageview"] * 4 + ["signup", "engagement"]))
            for _ in range(rng.randrange(1, 8))
        ]  # fmt: skip
        records.append(record(offset, hits, now))
    return records


def oracle(records: list[Any], site: str) -> dict[str, Any]:
    from engine.hits import decode_hits

    hits = [h for r in records for h in decode_hits(r.value) if h["site"] == site]
    counted = [h for h in hits if h["name"] != "engagement"]
    views = [h for h in hits if h["name"] == "pageview"]
    pages: dict[str, int] = {}
    for h in views:
        pages[h["page"]] = pages.get(h["page"], 0) + 1
    return {
        "visitors": len({h["vid"] for h in counted}),
        "pageviews": len(views),
        "pages": sorted(pages.items(), key=lambda kv: (-kv[1], kv[0])),
    }


async def observed(redis: Redis, site: str, now: float) -> dict[str, Any]:
    summary = await live_summary(redis, site, now)
    return {
        "visitors": await realtime_visitors(redis, site, now),
        "pageviews": sum(v for _, v in summary["pageviews_per_minute"]),
        "pages": [tuple(p) for p in summary["top_pages"]],
    }


def test_counters_match_the_hits_and_replays_change_nothing(redis_socket: Path) -> None:
    async def scenario() -> None:
        redis = Redis(unix_socket_path=str(redis_socket))
        # Just past a minute's start: every message of the test lands in one arrival minute.
        now = (time.time() // 60) * 60 + 1
        records = generate(now, 60, seed=7)
        first, second = records[:35], records[35:]
        await apply(redis, first)
        for site in SITES:
            assert await observed(redis, site, now) == oracle(first, site)
        # Kafka delivers the first batch again with the second (no commit before a restart).
        await apply(redis, records[20:])
        for site in SITES:
            assert await observed(redis, site, now) == oracle(records, site)
        # The second batch written but its states not (a crash inside the pipeline): Kafka
        # delivers it again, and the counters come out the same, not counted twice.
        minute = int(now // 60) * 60
        await redis.flushall()
        await apply(redis, first)
        before = {s: await redis.get(state_key(s, minute)) for s in SITES}
        await apply(redis, second)
        for site, state in before.items():
            assert state is not None
            await redis.set(state_key(site, minute), state)
        await apply(redis, second)
        for site in SITES:
            assert await observed(redis, site, now) == oracle(records, site)
        await redis.aclose()

    asyncio.run(scenario())


def test_old_and_undecodable_messages_are_skipped(redis_socket: Path) -> None:
    async def scenario() -> None:
        redis = Redis(unix_socket_path=str(redis_socket))
        now = (time.time() // 60) * 60 + 1
        old = record(0, [hit("a.test", "/old", 1, now - 2 * 3600)], now)  # an import
        broken = SimpleNamespace(partition=0, offset=1, timestamp=int(now * 1000), value=b"\x00x")
        fresh = record(2, [hit("a.test", "/new", 2, now)], now)
        await apply(redis, [old, broken, fresh])
        assert await observed(redis, "a.test", now) == oracle([fresh], "a.test")
        await redis.aclose()

    asyncio.run(scenario())


def test_live_role_process_counts_reports_and_stops(broker: str, redis_socket: Path) -> None:
    """`rollup live` on the real broker: the hits of a topic reach Redis exactly; it reports
    ready and its message count; SIGTERM stops it cleanly, and a restart counts nothing twice."""
    topic = f"hits-live-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROLLUP_")},
        "KAFKA_BROKERS": broker,
        "REDIS_URL": f"unix://{redis_socket}",
        "ROLLUP_HITS_TOPIC": topic,
        "ROLLUP_APP_ID": topic,
        "ROLLUP_LIVE_WEB_PORT": str(port),
    }
    settings = load_settings(kafka_brokers=broker, hits_topic=topic, redis_url="redis://unused")
    asyncio.run(ensure_topics(settings))
    now = time.time()
    records = generate(now, 40, seed=11)

    async def produce(batch: list[Any]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
        await producer.start()
        try:
            for r in batch:
                site = decode_site(r.value)
                await producer.send_and_wait(topic, r.value, key=site.encode())
        finally:
            await producer.stop()

    async def counters() -> dict[str, dict[str, Any]]:
        redis = Redis(unix_socket_path=str(redis_socket))
        try:
            return {site: await observed(redis, site, time.time()) for site in SITES}
        finally:
            await redis.aclose()

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "live"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def wait_until(check: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert live.poll() is None, (live.stderr.read() if live.stderr else b"")[-2000:]
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.2)

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    want = {site: oracle(records, site) for site in SITES}
    live = start()
    try:
        wait_until(healthy)
        asyncio.run(produce(records[:25]))
        metrics = f"http://127.0.0.1:{port}/metrics"
        wait_until(lambda: metric(metrics, "rollup_live_messages_total") >= 25)
        live.send_signal(signal.SIGTERM)
        assert live.wait(15) == 0
        # Restarted on the committed offsets: the rest is counted, the first part not twice.
        asyncio.run(produce(records[25:]))
        live = start()
        wait_until(lambda: asyncio.run(counters()) == want)
        assert metric(metrics, "rollup_live_messages_total") == 15
    finally:
        if live.poll() is None:
            live.kill()
            live.wait(10)


def decode_site(value: bytes) -> str:
    from engine.hits import decode_hits

    return decode_hits(value)[0]["site"]
