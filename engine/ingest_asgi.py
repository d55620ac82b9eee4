"""`POST /api/event` as a bare ASGI handler, ahead of Starlette's routing.

The hottest path of the engine: at tens of thousands of requests per second the framework's
request and response objects cost more than the handler, so this path skips them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from prometheus_client import Counter

from config import Settings
from engine.errors import InputError, UnavailableError
from engine.http_metrics import HTTP_REQUESTS, HTTP_SECONDS
from engine.ingest import UNAVAILABLE, client_address
from engine.runtime import Runtime

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

EVENT_PATH = "/api/event"
INGEST_REQUESTS = Counter(
    "rollup_ingest_requests_total", "POST /api/event requests by HTTP status", ["status"]
)
_JSON = [(b"content-type", b"application/json")]
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]


class FastEventPath:
    def __init__(self, app: ASGIApp, runtime: Runtime, settings: Settings) -> None:
        self.app = app
        self.runtime = runtime
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != EVENT_PATH
            or scope["method"] != "POST"
            or self.runtime.ingestor is None
        ):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, body, headers = await self._handle(scope, receive)
        _record(status, time.perf_counter() - started)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes, list[Any]]:
        user_agent = forwarded = None
        declared = 0
        for name, value in scope["headers"]:
            if name == b"user-agent":
                user_agent = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                forwarded = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit():
                declared = int(value)
        limit = self.settings.max_body_bytes
        try:
            if declared > limit:
                raise InputError({"body": [f"larger than {limit} bytes"]}, status=413)
            body = await _read_body(receive, limit)
            client = scope.get("client")
            peer = client_address(
                client[0] if client else None, forwarded, self.settings.trusted_proxies
            )
            assert self.runtime.ingestor is not None
            result = await self.runtime.ingestor.event(body, user_agent, peer)
        except InputError as error:
            return error.status, orjson.dumps({"errors": error.errors}), _JSON
        except UnavailableError as error:
            UNAVAILABLE.inc()
            headers = [*_JSON, (b"retry-after", str(error.retry_after).encode())]
            return 503, orjson.dumps({"error": str(error)}), headers
        if result.rate_limited and not result.accepted:
            headers = [*_JSON, (b"retry-after", b"1")]
            return 429, orjson.dumps({"error": "rate limit exceeded"}), headers
        if result.dropped:
            return 202, b"ok", [*_TEXT, (b"x-plausible-dropped", str(result.dropped).encode())]
        return 202, b"ok", _TEXT


# Per-status metric children, resolved once: `labels()` takes a lock and builds a key on every
# call, which this path would pay tens of thousands of times a second.
_CHILDREN: dict[int, tuple[Any, Any]] = {}
_EVENT_SECONDS = HTTP_SECONDS.labels(EVENT_PATH)


def _record(status: int, seconds: float) -> None:
    children = _CHILDREN.get(status)
    if children is None:
        code = str(status)
        children = (INGEST_REQUESTS.labels(code), HTTP_REQUESTS.labels(EVENT_PATH, code))
        _CHILDREN[status] = children
    children[0].inc()
    children[1].inc()
    _EVENT_SECONDS.observe(seconds)


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InputError({"body": ["client disconnected"]})
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise InputError({"body": [f"larger than {limit} bytes"]}, status=413)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)
