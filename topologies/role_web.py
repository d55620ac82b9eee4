"""The stream roles' small HTTP server (the worker's and the live counters'): /metrics and
/api/health, in a thread rather than on the role's event loop, so a scrape still answers when
the loop is busy; /api/health reports the loop itself through a heartbeat it must keep beating.
No Faust here: the live role does without it.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest

log = logging.getLogger(__name__)

# A loop that has not beaten for this long is stuck: /api/health answers 503 (liveness).
STALL_SECONDS = 60.0


class RoleHealth:
    """What /api/health reports; written by the event loop, read by the server thread."""

    def __init__(self, role: str = "worker", ready_gauge: Gauge | None = None) -> None:
        self.role = role
        self.ready_gauge = ready_gauge
        self.last_beat = 0.0
        self.ready = False

    def beat(self, ready: bool) -> None:
        self.last_beat = time.monotonic()
        self.ready = ready
        if self.ready_gauge is not None:
            self.ready_gauge.set(1 if ready else 0)

    def status(self, liveness: bool = False) -> tuple[int, dict[str, str]]:
        """Readiness: joined and beating. Liveness (`?probe=liveness`): not stalled; a worker
        still starting or recovering its tables is alive, however long that takes."""
        if not self.last_beat:
            return (200 if liveness else 503), {self.role: "starting"}
        stalled = time.monotonic() - self.last_beat
        if stalled > STALL_SECONDS:
            return 503, {self.role: f"event loop stalled for {stalled:.0f}s"}
        if liveness:
            return 200, {self.role: "alive"}
        if not self.ready:
            return 503, {self.role: "joining group or recovering tables"}
        return 200, {self.role: "ok"}


def _handler(health: RoleHealth) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if path == "/metrics":
                self._answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif path == "/api/health":
                status, body = health.status(liveness="probe=liveness" in query.split("&"))
                self._answer(status, orjson.dumps(body), "application/json")
            else:
                self._answer(404, b"not found", "text/plain")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None  # scrapes every few seconds would drown the log

    return Handler


def serve_role(host: str, port: int, health: RoleHealth) -> ThreadingHTTPServer | None:
    """Start /metrics and /api/health of a role on host:port (0 = off), in a thread."""
    if not port:
        return None
    try:
        server = ThreadingHTTPServer((host, port), _handler(health))
    except OSError as exc:
        log.warning("%s web port %d unavailable (%s): no metrics", health.role, port, exc)
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"{health.role}-web", daemon=True).start()
    log.info("%s metrics on http://%s:%d/metrics", health.role, host, port)
    return server
