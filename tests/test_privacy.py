"""Privacy proof on the real embedded stack: after hits from known client addresses and user
agents (live and imported), no Redis key or value, no ClickHouse table, no Kafka topic and no
log holds any of the addresses, the user agents, or an unsalted identity derived from them;
and no salt outlives 48 hours from the start of its day."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis as AsyncRedis

from engine.visitor import SALT_KEY, SaltStore, salt_expiry
from tests.clock import day_start
from tests.conftest import ROOT, Stack

pytestmark = pytest.mark.integration

SITE = "privacy.test"
ADDRESSES = ["198.51.100.23", "203.0.113.45", "2001:db8::1234:5678", "192.0.2.201"]
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/118.0.5993.117 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/16.6 Safari/605.1.15",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:119.0) Gecko/20100101 Firefox/119.0",
]


def needles() -> dict[str, bytes]:
    """Everything that would identify a visitor without the salt."""
    found: dict[str, bytes] = {}
    for ip in ADDRESSES:
        parsed = ipaddress.ip_address(ip)
        found[f"address {ip}"] = ip.encode()
        found[f"exploded {ip}"] = parsed.exploded.encode()
        found[f"sha256 {ip}"] = hashlib.sha256(ip.encode()).hexdigest().encode()
        found[f"md5 {ip}"] = hashlib.md5(ip.encode()).hexdigest().encode()
        for ua in AGENTS:
            identity = b"\x00".join((ua.encode(), ip.encode(), SITE.encode()))
            digest = hashlib.blake2b(identity, digest_size=8).digest()  # the id without a salt
            found[f"identity {ip} {ua[:30]}"] = identity
            found[f"unsalted id {ip} {ua[:30]}"] = str(int.from_bytes(digest, "big")).encode()
            found[f"unsalted hex {ip} {ua[:30]}"] = digest.hex().encode()
            found[f"sha256 identity {ip} {ua[:30]}"] = hashlib.sha256(identity).hexdigest().encode()
    for ua in AGENTS:
        found[f"user agent {ua[:40]}"] = ua.encode()
    return found


def binary_needles() -> dict[str, bytes]:
    """Raw forms only worth looking for in binary stores (Redis, Kafka)."""
    found = {f"packed {ip}": ipaddress.ip_address(ip).packed for ip in ADDRESSES}
    for ip in ADDRESSES:
        for ua in AGENTS:
            identity = b"\x00".join((ua.encode(), ip.encode(), SITE.encode()))
            found[f"unsalted raw {ip}"] = hashlib.blake2b(identity, digest_size=8).digest()
    return found


def redis_dump(socket: Path) -> bytes:
    """Every key and every value of every type."""
    client = redis.Redis(unix_socket_path=str(socket))
    parts: list[bytes] = []
    for key in client.scan_iter(count=1000):
        parts.append(key)
        kind = client.type(key)
        if kind == b"string":
            parts.append(client.get(key) or b"")
        elif kind == b"hash":
            parts.extend(b for kv in client.hgetall(key).items() for b in kv)
        elif kind == b"zset":
            parts.extend(m for m, _ in client.zrange(key, 0, -1, withscores=True))
        elif kind == b"set":
            parts.extend(client.smembers(key))
        elif kind == b"list":
            parts.extend(client.lrange(key, 0, -1))
        elif kind == b"stream":
            parts.append(repr(client.xrange(key)).encode())
    client.close()
    return b"\n".join(parts)


async def kafka_dump(bootstrap: str) -> tuple[bytes, dict[str, int]]:
    """Every record (key, value, headers) of every topic, from the beginning."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    parts: list[bytes] = []
    counts: dict[str, int] = {}
    try:
        topics = await consumer.topics()
        partitions = [
            TopicPartition(t, p)
            for t in sorted(topics)
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            remaining = [tp for tp in partitions if await consumer.position(tp) < ends[tp]]
            if not remaining:
                break
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=5000)
            for tp, records in batch.items():
                counts[tp.topic] = counts.get(tp.topic, 0) + len(records)
                for r in records:
                    parts += [r.key or b"", r.value or b""]
                    parts += [v for _, v in r.headers]
    finally:
        await consumer.stop()
    return b"\n".join(parts), counts


CLICKHOUSE_DUMP = r"""
import sys, clickhouse_connect
client = clickhouse_connect.get_client(dsn="chdb://" + sys.argv[1])
tables = client.query(
    "SELECT name FROM system.tables WHERE database = currentDatabase() "
    "AND engine NOT IN ('View', 'MaterializedView', 'Null')").result_rows
for (name,) in tables:
    data = client.raw_query(f"SELECT * FROM `{name}` FORMAT TSVRaw")
    lines = data.count(b"\n")
    sys.stderr.write(f"{name} {lines}\n")
    sys.stdout.buffer.write(data)
"""


def clickhouse_dump(chdb_dir: Path, scratch: Path) -> tuple[bytes, dict[str, int]]:
    """Every row of every table, read from a copy (the running server holds the directory's
    lock; its parts are immutable once written, so a copy is a consistent enough snapshot)."""
    copy = scratch / "clickhouse"

    def copy_file(src: str, dst: str) -> None:
        with contextlib.suppress(FileNotFoundError):  # a part merged away while copying
            shutil.copy2(src, dst)

    shutil.copytree(chdb_dir, copy, symlinks=True, copy_function=copy_file)
    (copy / "status").unlink(missing_ok=True)
    out = subprocess.run(
        [sys.executable, "-c", CLICKHOUSE_DUMP, str(copy)],
        capture_output=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {
        line.split()[0]: int(line.split()[1])
        for line in out.stderr.decode(errors="replace").splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    return out.stdout, rows


def assert_absent(where: str, blob: bytes, wanted: dict[str, bytes]) -> None:
    leaks = [name for name, needle in wanted.items() if needle in blob]
    assert not leaks, f"{where} holds {leaks}"


def test_no_address_user_agent_or_unsalted_identity_is_stored(stack: Stack, tmp_path: Path) -> None:
    key = stack.add_site(SITE)
    time.sleep(1.2)
    page = f"/privacy-{uuid.uuid4().hex[:8]}"
    sent = 0
    with httpx.Client(base_url=stack.url) as client:
        for ip in ADDRESSES:
            for ua in AGENTS:
                for body in (
                    {"n": "pageview", "u": f"https://{SITE}{page}", "r": "https://news.test/"},
                    {"n": "signup", "u": f"https://{SITE}{page}", "p": {"plan": "pro"}},
                ):
                    resp = client.post(
                        "/api/event", json=body, headers={"User-Agent": ua, "X-Forwarded-For": ip}
                    )
                    assert resp.status_code == 202 and "x-plausible-dropped" not in resp.headers
                sent += 1
        lines = [
            orjson.dumps(
                {
                    "name": "pageview",
                    "url": f"https://{SITE}{page}",
                    "ip": ip,
                    "user_agent": ua,
                    # An hour back, but today: the live hits' salt applies.
                    "timestamp": max(time.time() - 3600, day_start(time.time())),
                }
            )
            for ip in ADDRESSES
            for ua in AGENTS
        ]
        resp = client.post(
            "/api/import",
            content=b"\n".join(lines),
            headers={"Authorization": f"Bearer {stack.admin_token}"},
        )
        assert resp.status_code == 202 and resp.json()["accepted"] == len(lines), resp.text
        sent += len(lines)
        query = {
            "site_id": SITE,
            "metrics": ["pageviews", "visitors"],
            "date_range": "day",
            "filters": [["is", "event:page", [page]]],
        }
        deadline = time.monotonic() + 90
        metrics: list[int] = []
        while time.monotonic() < deadline:
            resp = client.post(
                "/api/v2/query", json=query, headers={"Authorization": f"Bearer {key}"}
            )
            metrics = resp.json()["results"][0]["metrics"]
            if metrics[0] == sent:
                break
            time.sleep(0.5)
        # Each (address, agent) pair is one visitor, live and imported alike (same day's salt).
        assert metrics == [sent, len(ADDRESSES) * len(AGENTS)], metrics
        live = client.get(
            "/api/v1/stats/realtime/live",
            params={"site_id": SITE},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert live.status_code == 200 and live.json()["visitors"] >= 1
    time.sleep(2)  # let the worker's changelogs and the live counters settle

    text_needles = needles()
    all_needles = {**text_needles, **binary_needles()}

    redis_blob = redis_dump(stack.data_dir / "redis.sock")
    assert page.encode() in redis_blob  # the scan sees this run's data
    assert_absent("Redis", redis_blob, all_needles)

    bootstrap = f"127.0.0.1:{stack.env['ROLLUP_BROKER_PORT']}"
    kafka_blob, per_topic = asyncio.run(kafka_dump(bootstrap))
    assert page.encode() in kafka_blob and per_topic.get("hits", 0) > 0, per_topic
    assert_absent("Kafka", kafka_blob, all_needles)

    ch_blob, rows = clickhouse_dump(stack.data_dir / "clickhouse", tmp_path)
    assert page.encode() in ch_blob and rows.get("events", 0) > 0, rows
    assert_absent("ClickHouse", ch_blob, text_needles)

    logs = b"\n".join(p.read_bytes() for p in sorted((stack.data_dir / "logs").glob("*.log")))
    assert logs  # the logs exist and were read
    assert_absent("logs", logs, text_needles)
    metrics_text = httpx.get(f"{stack.url}/metrics").content
    assert_absent("/metrics", metrics_text, text_needles)
    print(
        f"\nprivacy scan: {len(all_needles)} needles; redis {len(redis_blob)} B, kafka "
        f"{per_topic}, clickhouse rows {rows}, logs {len(logs)} B"
    )


def test_salts_live_at_most_48_hours_from_the_start_of_their_day(stack: Stack) -> None:
    client = redis.Redis(unix_socket_path=str(stack.data_dir / "redis.sock"))
    today = dt.datetime.now(dt.UTC).date()
    salts = list(client.scan_iter(match=SALT_KEY.format(day="*")))
    assert salts, "ingest made no salt"
    for key in salts:
        day = dt.date.fromisoformat(key.decode().rsplit(":", 1)[1])
        assert day in (today, today - dt.timedelta(days=1)), key
        ttl = client.ttl(key)
        assert ttl > 0, (key, ttl)  # never without an expiry
        assert abs(time.time() + ttl - salt_expiry(day)) <= 3, (key, ttl)
        assert (
            salt_expiry(day) - dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() == 48 * 3600
        )
    client.close()

    async def old_salt() -> tuple[bool, bool]:
        # Asked for a salt of a day that began more than 48 hours ago, Redis keeps none.
        r = AsyncRedis.from_url(f"unix://{stack.data_dir / 'redis.sock'}")
        day = today - dt.timedelta(days=3)
        store = SaltStore(r)
        try:
            await store.salts(dt.datetime.combine(day, dt.time(12), dt.UTC))
            raised = False
        except Exception:
            raised = True
        kept = await r.exists(SALT_KEY.format(day=day)) > 0
        await r.aclose()
        return raised, kept

    raised, kept = asyncio.run(old_salt())
    assert raised and not kept
