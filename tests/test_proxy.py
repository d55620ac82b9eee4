"""The forwarding of `rollup run`'s ingest process (engine/proxy.py), between real HTTP servers:
a client, the proxy served by uvicorn, and an upstream served by uvicorn (or a socket that
hangs up). Methods, paths, bodies, statuses and headers pass unchanged, answers stream, and a
missing, slow or broken api process gets a clear JSON error."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from engine.proxy import PROXY_ERRORS, ApiProxy
from tests.conftest import free_port

LOOPBACK = ["127.0.0.1/32", "::1/128"]


async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """What the api process would see: echoed back as JSON, or a special answer by path."""
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    headers = dict(scope["headers"])
    if path == "/stream":  # three chunks, 0.4 s apart
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"chunk%d;" % i, "more_body": True})
            await asyncio.sleep(0.4)
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/big":
        size = int(scope["query_string"].decode().split("=")[1])
        block = hashlib.sha256(b"x").digest() * 2048  # 64 KiB
        start = {"type": "http.response.start", "status": 200}
        await send({**start, "headers": [(b"content-length", str(size).encode())]})
        sent = 0
        while sent < size:
            part = block[: size - sent]
            sent += len(part)
            await send({"type": "http.response.body", "body": part, "more_body": sent < size})
        return
    if path == "/slow":
        await asyncio.sleep(3)
    if path == "/break":  # the api process dies mid-answer
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("upstream died")
    answer = {
        "method": scope["method"],
        "raw_path": scope["raw_path"].decode(),
        "query": scope["query_string"].decode(),
        "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
        "body_sha": hashlib.sha256(body).hexdigest(),
        "body_len": len(body),
    }
    status = int(headers.get(b"x-want-status", b"200"))
    out = [
        (b"content-type", b"application/json"),
        (b"x-upstream", b"yes"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"retry-after", b"7"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send(
        {
            "type": "http.response.body",
            "body": b"" if status in (204, 304) else orjson.dumps(answer),
        }
    )


class Front:
    """The proxy as the ingest process serves it (its client made in the server's loop)."""

    def __init__(self, upstream_url: str, trusted: list[str], timeout: float) -> None:
        self.args = (upstream_url, trusted, timeout)
        self.proxy: ApiProxy | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.proxy = ApiProxy(*self.args)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    assert self.proxy is not None
                    await self.proxy.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert self.proxy is not None
        await self.proxy(scope, receive, send)


@contextmanager
def serving(app: Any, lifespan: str = "off") -> Iterator[str]:
    port = free_port()
    # As the CLI serves: X-Forwarded-For is judged by the app, not by uvicorn.
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan=lifespan,
        log_level="critical",
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def proxy_to(upstream_url: str, trusted: list[str] = LOOPBACK, timeout: float = 5) -> Iterator[str]:
    with serving(Front(upstream_url, trusted, timeout), lifespan="on") as url:
        yield url


@pytest.fixture(scope="module")
def front() -> Iterator[str]:
    with serving(upstream) as up, proxy_to(up) as url:
        yield url


def errors(reason: str) -> float:
    return PROXY_ERRORS.labels(reason)._value.get()


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_methods_paths_queries_and_bodies_pass_unchanged(front: str, method: str) -> None:
    body = os.urandom(300_000) if method in ("POST", "PUT", "PATCH") else b""
    resp = httpx.request(
        method,
        f"{front}/api/a%2Fb/c%20d?site_id=x%2By&q=%C3%A9&empty=",
        content=body or None,
        headers={"X-Custom": "1", "Authorization": "Bearer k", "Cookie": "c=3"},
    )
    assert resp.status_code == 200, resp.text
    seen = resp.json()
    assert seen["method"] == method
    assert seen["raw_path"] == "/api/a%2Fb/c%20d"
    assert seen["query"] == "site_id=x%2By&q=%C3%A9&empty="
    assert seen["body_len"] == len(body)
    assert seen["body_sha"] == hashlib.sha256(body).hexdigest()
    headers = dict(seen["headers"])
    assert headers["x-custom"] == "1" and headers["authorization"] == "Bearer k"
    assert headers["cookie"] == "c=3"
    assert headers["host"] == front.removeprefix("http://")  # the Host the client asked for


def test_streamed_request_body_of_unknown_length(front: str) -> None:
    parts = [os.urandom(65_536) for _ in range(20)]
    resp = httpx.post(f"{front}/upload", content=iter(parts))  # chunked transfer encoding
    seen = resp.json()
    assert seen["body_len"] == sum(map(len, parts))
    assert seen["body_sha"] == hashlib.sha256(b"".join(parts)).hexdigest()


@pytest.mark.parametrize("status", [201, 204, 304, 400, 401, 404, 413, 429, 500, 503])
def test_statuses_and_response_headers_pass_unchanged(front: str, status: int) -> None:
    resp = httpx.get(f"{front}/status", headers={"X-Want-Status": str(status)})
    assert resp.status_code == status
    assert resp.headers["x-upstream"] == "yes"
    assert resp.headers["retry-after"] == "7"
    assert resp.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert len(resp.headers.get_list("server")) == 1  # the front's own, not twice
    assert len(resp.headers.get_list("date")) == 1


def test_hop_by_hop_headers_stay_on_their_connection(front: str) -> None:
    resp = httpx.get(
        f"{front}/hop",
        headers={"Connection": "keep-alive, X-Private", "X-Private": "1", "TE": "trailers"},
    )
    names = {name for name, _ in resp.json()["headers"]}
    assert "x-private" not in names and "te" not in names


def test_client_address_is_the_one_the_ingest_resolved(front: str) -> None:
    # A trusted peer (loopback): its X-Forwarded-For names the client, passed on alone.
    resp = httpx.get(f"{front}/xff", headers={"X-Forwarded-For": "garbage, 203.0.113.9, 10.0.0.1"})
    assert [v for k, v in resp.json()["headers"] if k == "x-forwarded-for"] == ["203.0.113.9"]
    resp = httpx.get(f"{front}/xff")
    assert [v for k, v in resp.json()["headers"] if k == "x-forwarded-for"] == ["127.0.0.1"]


def test_untrusted_peer_cannot_choose_its_address() -> None:
    with serving(upstream) as up, proxy_to(up, trusted=["10.0.0.0/8"]) as url:
        resp = httpx.get(f"{url}/xff", headers={"X-Forwarded-For": "203.0.113.9"})
    assert [v for k, v in resp.json()["headers"] if k == "x-forwarded-for"] == ["127.0.0.1"]


def test_answers_stream_without_buffering(front: str) -> None:
    started = time.monotonic()
    arrivals = []
    with httpx.stream("GET", f"{front}/stream") as resp:
        for chunk in resp.iter_raw():
            if chunk:
                arrivals.append((time.monotonic() - started, chunk))
    assert b"".join(c for _, c in arrivals) == b"chunk0;chunk1;chunk2;"
    assert arrivals[0][0] < 0.35  # the first chunk before the upstream wrote the last
    assert arrivals[-1][0] >= 0.8


def test_large_answer(front: str) -> None:
    size = 20 * 1024 * 1024 + 5
    resp = httpx.get(f"{front}/big?size={size}", timeout=60)
    block = hashlib.sha256(b"x").digest() * 2048
    expected = (block * (size // len(block) + 1))[:size]
    assert resp.headers["content-length"] == str(size)
    assert resp.content == expected


def test_api_process_down_is_a_clear_503() -> None:
    before = errors("unavailable")
    with proxy_to(f"http://127.0.0.1:{free_port()}") as url:
        resp = httpx.post(f"{url}/api/v2/query", json={"site_id": "x"})
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "2"
    assert "api process is not answering" in resp.json()["error"]
    assert errors("unavailable") == before + 1


def test_slow_api_process_is_a_504() -> None:
    before = errors("timeout")
    with serving(upstream) as up, proxy_to(up, timeout=0.5) as url:
        resp = httpx.get(f"{url}/slow")
    assert resp.status_code == 504
    assert "did not answer within 0.5 s" in resp.json()["error"]
    assert errors("timeout") == before + 1


@contextmanager
def hanging_up() -> Iterator[str]:
    """A server that accepts, reads and closes without a word: a crashing api process."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    stop = threading.Event()

    def loop() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            conn.recv(65536)
            conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def test_api_process_hanging_up_is_a_502() -> None:
    before = errors("bad_gateway")
    with hanging_up() as up, proxy_to(up) as url:
        resp = httpx.get(f"{url}/anything")
    assert resp.status_code == 502
    assert "failed to answer" in resp.json()["error"]
    assert errors("bad_gateway") == before + 1


def test_answer_broken_off_midway_is_not_completed(front: str) -> None:
    before = errors("interrupted")
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{front}/break")
    deadline = time.monotonic() + 5
    while errors("interrupted") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert errors("interrupted") == before + 1
