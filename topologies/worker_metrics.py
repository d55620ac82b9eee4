"""The worker's own observability: Prometheus metrics (ours and Faust's sensors), consumer lag
per partition, table sizes, and the heartbeat its /metrics and /api/health server
(topologies/role_web.py) reports.
"""

from __future__ import annotations

import contextlib
import logging
import os
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import faust
from prometheus_client import REGISTRY, Gauge, Histogram

from config import Settings
from topologies.role_web import RoleHealth, serve_role

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

HEARTBEAT_SECONDS = 5.0
TABLE_STATS_SECONDS = 15.0

_faust_metrics: Any = None
_lag_labels: set[tuple[str, str]] = set()


HEALTH = RoleHealth("worker", READY)


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


def serve(settings: Settings) -> ThreadingHTTPServer | None:
    """The worker's /metrics and /api/health on worker_web_host:worker_web_port (0 = off)."""
    return serve_role(settings.worker_web_host, settings.worker_web_port, HEALTH)
