"""HTTP metrics by endpoint: request counts by status and latency, for every route of the app.

The endpoint label is the route's template (`/dashboard/{site}`, not the path a client sent), or
`other` for unmatched paths, so the label set stays bounded whatever clients request.
`POST /api/event` is counted by its own fast path (engine/ingest_asgi.py), which answers before
the router, with the same metrics.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import Counter, Histogram

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HTTP_REQUESTS = Counter(
    "rollup_http_requests_total", "HTTP requests by endpoint and status", ["endpoint", "status"]
)
HTTP_SECONDS = Histogram(
    "rollup_http_request_duration_seconds",
    "HTTP request latency by endpoint, to the start of the response",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
UNMATCHED = "other"


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before any response is a server error

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                HTTP_SECONDS.labels(endpoint_of(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            HTTP_REQUESTS.labels(endpoint_of(scope), str(status)).inc()


def endpoint_of(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED
