"""The rollup topology: hits → sessions and per-minute rollup deltas (to the store).

One rollups message per hits message, tagged with the hits partition and offset, so the store can
recognise a replay. Events are acknowledged (and so their offsets committed) only after their
rollups were acknowledged by the broker. The live counters are the live topology's, a role of
its own (topologies/live.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Awaitable
from typing import Any, NoReturn

import faust
from prometheus_client import Counter, Histogram

from config import Settings
from engine.hits import Hit, decode_hits
from engine.rollup_rows import WorkerOutput, build_rollup_rows, encode_output
from topologies import consumer_order, end_offsets, worker_metrics
from topologies.session_stage import SessionStage

log = logging.getLogger(__name__)

HITS_PROCESSED = Counter("rollup_worker_hits_total", "Hits folded into rollups by this worker")
MESSAGES_PROCESSED = Counter("rollup_worker_messages_total", "Hits messages processed")
BAD_MESSAGES = Counter(
    "rollup_worker_bad_messages_total", "Hits messages that could not be decoded"
)
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
        "datadir": str(settings.worker_dir),
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
        # Record batches of up to 1 MB: the session changelog goes out a batch at a time.
        "producer_max_batch_size": 1024 * 1024,
        "stream_wait_empty": False,
        # After a SIGKILL, Tansu can report a changelog highwater one below the offset RocksDB
        # persisted, and Faust then refuses to start. Our table states carry their own applied
        # offsets, so starting from the newer local state is safe.
        "recovery_consistency_check": False,
    }


def _die(reason: str) -> NoReturn:
    log.critical("%s: exiting without committing its offsets", reason, exc_info=True)
    logging.shutdown()
    os._exit(70)


async def _finish_or_die(batch: asyncio.Future[None]) -> None:
    try:
        await batch
    except BaseException:
        _die("rollup batch interrupted")


def raw_topic(app: faust.App, name: str) -> faust.TopicT:
    """A topic whose keys and values are bytes as they travel: we encode them ourselves."""
    return app.topic(
        name, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw"
    )


def hits_and_sessions(app: faust.App, settings: Settings) -> tuple[faust.TopicT, Any]:
    """The hits topic (raw bytes) and the sessions table: per (site, visitor), the events of
    the sessions that may still change."""
    hits_topic = raw_topic(app, settings.hits_topic)
    sessions_table = app.Table(
        "sessions",
        default=bytes,
        key_type=str,
        value_type=bytes,
        partitions=settings.topic_partitions,
    )
    return hits_topic, sessions_table


def build_worker_app(settings: Settings) -> faust.App:
    end_offsets.install(settings.kafka_bootstrap)
    consumer_order.install()
    app = faust.App(f"{settings.app_id}-worker", **faust_settings(settings))
    hits_topic, sessions_table = hits_and_sessions(app, settings)
    rollups_topic = raw_topic(app, settings.rollups_topic)
    sessions = SessionStage(
        sessions_table, settings.session_lateness_seconds, settings.session_state_idle_seconds
    )

    worker_metrics.install(app, settings, {"sessions": sessions_table})

    @app.timer(interval=settings.session_expiry_interval)  # type: ignore[untyped-decorator]
    async def expire_sessions() -> None:
        sessions.expire()
        await sessions.changelog.flush()

    in_order = consumer_order.InOrder(app, settings.hits_topic)

    def decode(event: faust.EventT[Any]) -> list[Hit] | None:
        message = event.message
        try:
            return decode_hits(message.value or b"")
        except Exception:
            BAD_MESSAGES.inc()
            log.exception(
                "skipping undecodable hits message %s/%s", message.partition, message.offset
            )
            return None

    async def process_message(
        event: faust.EventT[Any], hits: list[Hit]
    ) -> tuple[Awaitable[Any], float]:
        """Session state and rollups for one hits message; returns the pending send of its
        output and its newest hit time."""
        message = event.message
        session_rows, hits = sessions.process(hits, event)
        output = WorkerOutput.of(
            message.partition, message.offset, build_rollup_rows(hits), session_rows, hits
        )
        sent = await rollups_topic.send(
            key=str(message.partition).encode(),
            value=encode_output(output),
            partition=message.partition,
        )
        HITS_PROCESSED.inc(len(hits))
        MESSAGES_PROCESSED.inc()
        return sent, max((h["ts"] for h in hits), default=0.0)

    async def process_batch(events: list[faust.EventT[Any]]) -> None:
        started = time.monotonic()
        admitted: list[tuple[faust.EventT[Any], list[Hit]]] = []
        for event in events:
            if not await in_order.admit(event.message):
                continue
            hits = decode(event)
            if hits is not None:
                admitted.append((event, hits))
        sends = []
        newest_ts = 0.0
        for event, hits in admitted:
            sent, newest = await process_message(event, hits)
            sends.append(sent)
            newest_ts = max(newest_ts, newest)
        # One table write per key per batch, under the last event that touched the key.
        sessions.end_batch()
        # The batch's offsets are acknowledged when this returns: only once every output and
        # every changelog record is acknowledged by the broker.
        await asyncio.gather(*sends, sessions.changelog.flush())
        if newest_ts:
            LAG_SECONDS.observe(max(0.0, time.time() - newest_ts))
        BATCH_SECONDS.observe(time.monotonic() - started)
        worker_metrics.BATCH_MESSAGES.observe(len(events))

    @app.agent(hits_topic, name="rollups")
    async def rollups(stream: faust.StreamT[bytes]) -> None:
        async for events in stream.take_events(  # type: ignore[attr-defined]
            max_=500, within=settings.worker_flush_seconds / 4
        ):
            # Faust's take_events acknowledges a batch however the loop body ends, even by an
            # exception or a cancellation (shutdown, rebalance). So the batch runs to completion
            # in its own task, and if it cannot complete the process dies before the offsets
            # can be committed: Kafka then delivers the batch again to whoever owns it next.
            batch = asyncio.ensure_future(process_batch(list(events)))
            try:
                await asyncio.shield(batch)
            except asyncio.CancelledError:
                await _finish_or_die(batch)
                raise
            except Exception:
                _die("rollup batch failed")

    return app


def run_worker(settings: Settings) -> None:
    """Run the worker in the foreground until SIGTERM/SIGINT."""
    import uvloop
    from faust.worker import Worker

    # uvloop's C transports: the worker's socket writes (large produce requests) cost a sixth
    # of its time on asyncio's pure-Python selector transport. Set before anything asks for
    # a loop; Faust's consumer thread makes its own loop under the same policy.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())
    app = build_worker_app(settings)
    # A batch allocates a few objects per hit and frees them together: the default young-
    # generation threshold (700) ran collections that walk every cached state, 6% of the time.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    from engine.logs import dict_config

    # Text mode keeps Faust's own (colour) log setup; json replaces it.
    logging_config = (
        dict_config(settings.log_level, "json") if settings.log_format == "json" else None
    )
    worker = Worker(
        app, loglevel=settings.log_level.upper(), quiet=True, logging_config=logging_config
    )
    worker.execute_from_commandline()
