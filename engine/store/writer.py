"""The store writer: consumes `rollups` and `hits` and inserts them into ClickHouse.

Exactly-once without transactions: every inserted row carries its source (hits partition,
offset) and the writer skips any source message at or below the highest one already stored.
Offsets are committed to Kafka only after the insert, but correctness rests on ClickHouse's
own record: after a crash anywhere between the two, the replayed messages are recognised.
Rollup messages of one hits partition arrive in hits-offset order because the worker sends
them to the rollups partition of the same number, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from config import Settings
from engine.hits import decode_hits
from engine.rollup_rows import decode_rollups
from engine.store.client import Store
from sinks.base import Sink
from sinks.clickhouse import EventsSink, RollupLogSink

log = logging.getLogger(__name__)

ROWS_WRITTEN = Counter("rollup_store_rows_total", "Rows inserted into ClickHouse", ["table"])
REPLAYS_SKIPPED = Counter(
    "rollup_store_replayed_messages_total",
    "Source messages skipped because ClickHouse already holds them",
    ["table"],
)
BAD_MESSAGES = Counter("rollup_store_bad_messages_total", "Undecodable messages", ["table"])
INSERT_FAILURES = Counter("rollup_store_insert_failures_total", "Failed inserts", ["table"])
APPLIED_OFFSET = Gauge(
    "rollup_store_applied_offset", "Highest hits offset stored", ["table", "partition"]
)


class _Reload(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: _WriterLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._loop.reload_applied()


class _WriterLoop:
    """One topic → one ClickHouse table, with the replay guard described above."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        topic: str,
        table: str,
        sink: Sink[Any],
        decode: Callable[[bytes, int, int], tuple[int, int, Any]],
    ) -> None:
        self.settings = settings
        self.store = store
        self.topic = topic
        self.table = table
        self.sink = sink
        self.decode = decode
        self.applied: dict[int, int] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.healthy = False
        self.last_error = ""

    async def reload_applied(self) -> None:
        self.applied = await self.store.applied_offsets(self.table)

    async def run(self) -> None:
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the writer alive; Kafka redelivers
                self.healthy = False
                self.last_error = str(exc)[:300]
                log.warning("store writer for %s restarting after: %s", self.table, exc)
                await asyncio.sleep(2.0)

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=f"{self.settings.app_id}-store-{self.table}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            max_partition_fetch_bytes=16 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        self.consumer = consumer
        await consumer.start()
        try:
            consumer.subscribe([self.topic], listener=_Reload(self))
            while True:
                batches = await consumer.getmany(
                    timeout_ms=int(self.settings.store_flush_seconds * 1000), max_records=2000
                )
                self.healthy = True
                if not batches:
                    continue
                await self._apply(consumer, batches)
        finally:
            self.consumer = None
            with contextlib.suppress(KafkaError):
                await consumer.stop()

    async def _apply(self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, Any]) -> None:
        newest: dict[int, int] = {}
        for records in batches.values():
            for record in records:
                try:
                    src_partition, src_offset, item = self.decode(
                        record.value, record.partition, record.offset
                    )
                except Exception:
                    BAD_MESSAGES.labels(self.table).inc()
                    log.exception("undecodable message %s/%s", record.partition, record.offset)
                    continue
                if src_offset <= max(
                    self.applied.get(src_partition, -1), newest.get(src_partition, -1)
                ):
                    REPLAYS_SKIPPED.labels(self.table).inc()
                    continue
                self.sink.add(item, src_partition, src_offset)
                newest[src_partition] = src_offset
        rows = 0
        for attempt in range(3):
            try:
                rows = await self.sink.flush()
                break
            except Exception:
                INSERT_FAILURES.labels(self.table).inc()
                if attempt == 2:
                    # Uncommitted: the consumer restarts and Kafka delivers these again.
                    self.sink.discard()
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))
        ROWS_WRITTEN.labels(self.table).inc(rows)
        for partition, offset in newest.items():
            self.applied[partition] = offset
            APPLIED_OFFSET.labels(self.table, str(partition)).set(offset)
        await consumer.commit()


def _decode_rollups(value: bytes, partition: int, offset: int) -> tuple[int, int, Any]:
    return decode_rollups(value)


def _decode_hits(value: bytes, partition: int, offset: int) -> tuple[int, int, Any]:
    return partition, offset, decode_hits(value)


class StoreWriter:
    """Runs both loops as background tasks of the process that owns the store."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.loops = [
            _WriterLoop(
                settings,
                store,
                settings.rollups_topic,
                "rollup_log",
                RollupLogSink(store),
                _decode_rollups,
            ),
            _WriterLoop(
                settings, store, settings.hits_topic, "events", EventsSink(store), _decode_hits
            ),
        ]
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for loop in self.loops:
            await loop.reload_applied()
            self._tasks.append(asyncio.create_task(loop.run(), name=f"store-{loop.table}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    @property
    def healthy(self) -> bool:
        return all(loop.healthy for loop in self.loops)
