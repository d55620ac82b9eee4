"""Forwarding from the ingest process to the api process (`rollup run`).

The embedded store (chDB) opens in one process only, so the store writer and the Stats API live
together in the api process. `rollup run` puts the ingest in a process of its own on the public
port, so that hits do not share a GIL with the writer and queries: it answers `POST /api/event`
and `POST /api/import` itself and streams every other request to the api process on a loopback
port, unbuffered both ways. `/api/health` and `/metrics` are answered here from both processes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson
from prometheus_client import Counter

from engine.errors import InputError
from engine.http_metrics import Receive, Scope, Send
from engine.ingest import client_address

log = logging.getLogger(__name__)

PROXY_ERRORS = Counter(
    "rollup_proxy_errors_total",
    "Requests the ingest process could not forward to the api process (rollup run), by reason",
    ["reason"],
)

# Meaningful for one connection only (RFC 9110, 7.6.1): never forwarded. `expect` too: the
# front server already answered a client's `100-continue`.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)
# The front server writes these itself on every answer; the api's copies would be duplicates.
FRONT_HEADERS = frozenset({b"date", b"server"})
XFF = b"x-forwarded-for"
# Below uvicorn's keep-alive timeout (5 s), so that a pooled connection is never reused just as
# the api process closes it.
KEEPALIVE_SECONDS = 2.0

AfterAnswer = Callable[[Scope, int], Awaitable[None]]


class ApiProxy:
    """An ASGI app that streams a request to the api process and its answer back."""

    def __init__(
        self,
        upstream: str,
        trusted_proxies: list[str],
        timeout: float,
        after_answer: AfterAnswer | None = None,
    ) -> None:
        self.upstream = httpx.URL(upstream)
        self._trusted = trusted_proxies
        self._timeout = timeout
        self._after_answer = after_answer
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=2.0, pool=5.0),
            limits=httpx.Limits(
                max_connections=256,
                max_keepalive_connections=64,
                keepalive_expiry=KEEPALIVE_SECONDS,
            ),
            trust_env=False,  # never an HTTP_PROXY from the environment between two local processes
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(self, path: str, timeout: float) -> httpx.Response:
        """A whole (small) answer of the api process: its health or its metrics."""
        return await self._client.get(self.upstream.join(path), timeout=timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = self._client.build_request(
            scope["method"],
            self._url(scope),
            headers=self._headers(scope),
            content=_body(receive) if _has_body(scope) else None,
        )
        try:
            response = await self._client.send(request, stream=True)
        except InputError:
            return  # the client went away while its body was being forwarded
        except httpx.TransportError as exc:
            await _send_failure(send, exc, self._timeout)
            return
        try:
            if self._after_answer is not None:
                await self._after_answer(scope, response.status_code)
            headers = [
                (name.lower(), value)
                for name, value in response.headers.raw
                if name.lower() not in HOP_BY_HOP and name.lower() not in FRONT_HEADERS
            ]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            # Raw bytes: a compressed answer stays compressed and its content-length stays true.
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except httpx.TransportError as exc:
            # The status line is out: nothing valid can follow. The server closes the connection.
            PROXY_ERRORS.labels("interrupted").inc()
            log.warning("the api process broke off an answer: %s", type(exc).__name__)
        finally:
            await response.aclose()

    def _url(self, scope: Scope) -> httpx.URL:
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string", b"")
        # The path exactly as the client encoded it (`%2F` stays `%2F`).
        return self.upstream.copy_with(raw_path=raw + b"?" + query if query else raw)

    def _headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        pairs: list[tuple[bytes, bytes]] = scope["headers"]
        named = {
            token.strip().lower()
            for name, value in pairs
            if name == b"connection"
            for token in value.split(b",")
        }
        forwarded = None
        headers = []
        for name, value in pairs:
            if name == XFF:
                forwarded = value.decode("latin-1")
            elif name not in HOP_BY_HOP and name not in named:
                headers.append((name, value))
        # The api trusts loopback and believes the first X-Forwarded-For entry, so it is sent
        # the one address this process resolved (a client's own header counts only when the
        # client is a trusted proxy): the api sees the address one process would have seen.
        # It is passed on, never logged.
        client = scope.get("client")
        address = client_address(client[0] if client else None, forwarded, self._trusted)
        if address:
            headers.append((XFF, address.encode()))
        return headers


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InputError({"body": ["client disconnected"]})
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body"):
            return


async def _send_failure(send: Send, exc: httpx.TransportError, timeout: float) -> None:
    """A clear answer when the api process cannot be reached or does not answer."""
    retry = None
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        reason, status, retry = "unavailable", 503, "2"
        message = "the api process is not answering (starting or restarting); retry shortly"
    elif isinstance(exc, httpx.PoolTimeout):
        reason, status, retry = "busy", 503, "1"
        message = "too many requests waiting for the api process; retry shortly"
    elif isinstance(exc, httpx.TimeoutException):
        reason, status = "timeout", 504
        message = f"the api process did not answer within {timeout:g} s"
    else:
        reason, status = "bad_gateway", 502
        message = f"the api process failed to answer ({type(exc).__name__})"
    PROXY_ERRORS.labels(reason).inc()
    await send_error(send, status, message, retry)


async def send_error(send: Send, status: int, message: str, retry_after: str | None) -> None:
    headers: list[Any] = [(b"content-type", b"application/json")]
    if retry_after:
        headers.append((b"retry-after", retry_after.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": orjson.dumps({"error": message})})
