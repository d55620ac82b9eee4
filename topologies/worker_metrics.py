"""The stream roles' observability: Prometheus metrics (ours and Faust's sensors), consumer lag
per partition, table sizes, and a small HTTP server for /metrics and /api/health, used by the
worker and the live role.

The server runs in a thread, not on the role's event loop, so a scrape still answers when the
loop is busy; /api/health reports the loop itself through a heartbeat the loop must keep beating.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import faust
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, Histogram, generate_latest

from config import Settings

log = logging.getLogger(__name__)

CONSUMER_LAG = Gauge(
    "rollup_worker_consumer_lag_messages",
    "Messages in the partition not yet committed by this worker (log end minus committed)",
    ["topic", "partition"],
)
BATCH_MESSAGES = Histogram(
    "rollup_worker_batch_messages",
    "Hits messages per processed batch",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500),
)
TABLE_KEYS = Gauge("rollup_worker_table_keys", "Keys in a local Faust table", ["table"])
STATE_BYTES = Gauge("rollup_worker_state_bytes", "Bytes of RocksDB state on this worker's disk")
READY = Gauge("rollup_worker_ready", "1 once the worker joined its group and finished recovery")

# A loop that has not beaten for this long is stuck: /api/health answers 503 (liveness).
STALL_SECONDS = 60.0
HEARTBEAT_SECONDS = 5.0
TABLE_STATS_SECONDS = 15.0

_faust_metrics: Any = None
_lag_labels: set[tuple[str, str]] = set()


class RoleHealth:
    """What /api/health reports; written by the event loop, read by the server thread."""

    def __init__(self, role: str = "worker", ready_gauge: Gauge | None = READY) -> None:
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


HEALTH = RoleHealth()


def faust_sensors(app: faust.App) -> None:
    """Faust's own Prometheus sensor (messages, commits, rebalances, sends; names `faust_*`).
    Its metrics register once per process: building a second app reuses them."""
    global _faust_metrics
    from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor

    if _faust_metrics is None:
        _faust_metrics = FaustMetrics.create(REGISTRY, "faust")
    app.monitor = PrometheusMonitor(metrics=_faust_metrics)


def update_lag(app: faust.App) -> None:
    """Per assigned partition: the broker's log end minus the offset this worker committed
    (or resumed from); a partition never committed counts from its start."""
    consumer: Any = app.consumer
    try:
        assigned = consumer.assignment()
        # Faust's own record: the committed offsets it sought to at assignment, then each commit.
        committed = dict(consumer._committed_offset)
    except Exception:  # consumer not started yet, or between generations
        return
    current = {(tp.topic, str(tp.partition)) for tp in assigned}
    for labels in _lag_labels - current:  # moved to another worker: not ours to report
        with contextlib.suppress(KeyError):
            CONSUMER_LAG.remove(*labels)
    _lag_labels.intersection_update(current)
    for tp in assigned:
        with contextlib.suppress(Exception):
            end = consumer.highwater(tp)
            if end is not None:
                lag = max(0, end - (committed.get(tp) or 0))
                CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(lag)
                _lag_labels.add((tp.topic, str(tp.partition)))


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


def install(app: faust.App, settings: Settings, tables: dict[str, Any]) -> None:
    """Sensors, the heartbeat and the periodic gauges of one worker app."""
    faust_sensors(app)

    @app.timer(interval=HEARTBEAT_SECONDS)  # type: ignore[untyped-decorator]
    async def heartbeat() -> None:
        HEALTH.beat(ready=app.rebalancing_count > 0 and not app.rebalancing)
        update_lag(app)

    @app.timer(interval=TABLE_STATS_SECONDS)  # type: ignore[untyped-decorator]
    async def table_stats() -> None:
        for name, table in tables.items():
            with contextlib.suppress(Exception):  # a table mid-recovery may refuse
                TABLE_KEYS.labels(name).set(len(table))
        STATE_BYTES.set(_dir_bytes(settings.worker_dir))


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


def serve(settings: Settings) -> ThreadingHTTPServer | None:
    """The worker's /metrics and /api/health on worker_web_host:worker_web_port (0 = off)."""
    return serve_role(settings.worker_web_host, settings.worker_web_port, HEALTH)


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
