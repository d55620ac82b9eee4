"""The rollup topology: hits → per-minute rollup deltas (to the store) and live counters (Redis).

One rollups message per hits message, tagged with the hits partition and offset, so the store can
recognise a replay. Events are acknowledged (and so their offsets committed) only after their
rollups were acknowledged by the broker and their live counters written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
from prometheus_client import Counter, Histogram
from redis.asyncio import Redis

from config import Settings
from engine.hits import decode_hits
from engine.rollup_rows import build_rollup_rows, encode_rollups
from sinks.redis_live import LiveCountersSink

log = logging.getLogger(__name__)

HITS_PROCESSED = Counter("rollup_worker_hits_total", "Hits folded into rollups by this worker")
MESSAGES_PROCESSED = Counter("rollup_worker_messages_total", "Hits messages processed")
BAD_MESSAGES = Counter("rollup_worker_bad_messages_total", "Hits messages that could not be decoded")
LIVE_FAILURES = Counter("rollup_worker_live_failures_total", "Failed Redis live-counter writes")
BATCH_SECONDS = Histogram("rollup_worker_batch_seconds", "Time to process one batch of messages")
LAG_SECONDS = Histogram(
    "rollup_worker_event_lag_seconds",
    "Seconds from a hit's event time to its rollup being sent",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)


def faust_settings(settings: Settings) -> dict[str, Any]:
    """Faust configuration; the short session timeout makes group joins and failover fast."""
    return {
        "broker": f"kafka://{settings.kafka_bootstrap.replace(',', ';kafka://')}",
        "store": "rocksdb://",
        "datadir": str(settings.data_dir.resolve() / "worker"),
        "topic_partitions": settings.topic_partitions,
        "web_enabled": False,
        "broker_session_timeout": 10.0,
        "broker_heartbeat_interval": 1.0,
        "broker_rebalance_timeout": 10.0,
        "broker_commit_every": 1000,
        "broker_commit_interval": 1.0,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        "producer_max_request_size": 16 * 1024 * 1024,
        "stream_wait_empty": False,
    }


def build_worker_app(settings: Settings, redis: Redis | None = None) -> faust.App:
    app = faust.App(f"{settings.app_id}-worker", **faust_settings(settings))
    hits_topic = app.topic(settings.hits_topic, key_type=bytes, value_type=bytes,
                           value_serializer="raw", key_serializer="raw")  # fmt: skip
    rollups_topic = app.topic(settings.rollups_topic, key_type=bytes, value_type=bytes,
                              value_serializer="raw", key_serializer="raw")  # fmt: skip
    live_redis = redis or Redis.from_url(settings.redis_dsn)
    live = LiveCountersSink(live_redis, settings.hits_topic)

    @app.agent(hits_topic, name="rollups")
    async def rollups(stream: faust.StreamT[bytes]) -> None:
        async for events in stream.take_events(max_=500, within=settings.worker_flush_seconds / 4):
            started = time.monotonic()
            sends = []
            newest_ts = 0.0
            for event in events:
                message = event.message
                try:
                    hits = decode_hits(message.value)
                except Exception:
                    BAD_MESSAGES.inc()
                    log.exception("skipping undecodable hits message %s/%s",
                                  message.partition, message.offset)  # fmt: skip
                    continue
                batch = build_rollup_rows(hits)
                if len(batch):
                    sends.append(
                        await rollups_topic.send(
                            key=str(message.partition).encode(),
                            value=encode_rollups(batch, message.partition, message.offset),
                            partition=message.partition,
                        )
                    )
                live.add(hits, message.partition, message.offset)
                HITS_PROCESSED.inc(len(hits))
                MESSAGES_PROCESSED.inc()
                newest_ts = max([newest_ts, *(h["ts"] for h in hits)])
            # Acknowledge the hits only once their rollups are durable.
            await asyncio.gather(*sends)
            try:
                await live.flush()
            except Exception as exc:  # live counters are best effort; rollups are not
                LIVE_FAILURES.inc()
                live.discard()
                log.warning("live counters not updated: %s", exc)
            if newest_ts:
                LAG_SECONDS.observe(max(0.0, time.time() - newest_ts))
            BATCH_SECONDS.observe(time.monotonic() - started)

    return app


def run_worker(settings: Settings) -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT."""
    from faust.worker import Worker

    app = build_worker_app(settings)
    worker = Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
