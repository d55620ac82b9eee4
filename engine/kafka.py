"""Kafka plumbing shared by the roles: topic setup, group consumers and the ingest's group-commit
hit producer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from prometheus_client import Counter, Gauge, Histogram

from config import Settings
from engine.errors import ComponentError, UnavailableError
from engine.hits import Hit, encode_hits

log = logging.getLogger(__name__)

PRODUCE_SECONDS = Histogram(
    "rollup_ingest_produce_seconds",
    "Time from handing a site's hits to the producer to the broker's acknowledgement",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
MESSAGE_HITS = Histogram(
    "rollup_ingest_message_hits",
    "Hits per Kafka message produced (group commit grows messages with load)",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
)
PRODUCE_FAILURES = Counter(
    "rollup_ingest_produce_failures_total", "Hits messages the broker did not acknowledge"
)
PENDING_HITS = Gauge("rollup_ingest_pending_hits", "Hits waiting for the broker")


def group_consumer(
    settings: Settings, group: str, *topics: str, **options: Any
) -> AIOKafkaConsumer:
    """A consumer in group `<app id>-<group>` that commits by hand (after its writes), reads a
    new group's partitions from their start, and is taken out of the group 10 s after it dies."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.app_id}-{group}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
        **options,
    )


async def ensure_topics(settings: Settings, timeout: float = 30.0) -> None:
    """Create the hits and rollups topics with the configured partition count if missing."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await admin.start()
            break
        except KafkaError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise ComponentError(
                    "broker", f"unreachable at {settings.kafka_bootstrap}"
                ) from exc
            await asyncio.sleep(0.5)
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, settings.topic_partitions, 1)
            for name in (settings.hits_topic, settings.rollups_topic)
            if name not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(wanted)
    finally:
        await admin.close()


@dataclass
class _Pending:
    hits: list[Hit] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class HitProducer:
    """Writes hits to the `hits` topic, several per Kafka message, keyed by site.

    Group commit: while one flush is in flight, new hits queue up and leave together in the
    next one, so messages grow with load while an idle engine still answers in milliseconds.
    `submit` returns only once the broker acknowledged the hits (acks=all): a 202 is durable.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._pending: dict[str, _Pending] = defaultdict(_Pending)
        self._pending_count = 0
        self._wakeup = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._healthy = False
        self.messages_sent = 0
        self.hits_sent = 0

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            acks="all",
            linger_ms=0,
            max_request_size=8 * 1024 * 1024,
            request_timeout_ms=10_000,
        )
        try:
            await self._producer.start()
        except KafkaError as exc:
            raise ComponentError("broker", f"producer cannot connect: {exc}") from exc
        self._healthy = True
        self._flusher = asyncio.create_task(self._flush_loop(), name="hit-producer")

    async def stop(self) -> None:
        if self._flusher is not None:
            # Let queued hits leave before the producer closes.
            for _ in range(100):
                if not self._pending_count:
                    break
                await asyncio.sleep(0.05)
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._producer is not None:
            await self._producer.stop()

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def submit(self, hits: list[Hit]) -> None:
        if not hits:
            return
        if self._pending_count + len(hits) > self._settings.max_pending_hits:
            raise UnavailableError("ingest buffer full", retry_after=1)
        if not self._healthy:
            raise UnavailableError("broker unavailable", retry_after=5)
        loop = asyncio.get_running_loop()
        site = hits[0]["site"]
        if all(hit["site"] == site for hit in hits):
            # The usual request: one site, one future to wait on and nothing to gather.
            fut: asyncio.Future[None] = loop.create_future()
            pending = self._pending[site]
            pending.hits.extend(hits)
            pending.waiters.append(fut)
            self._pending_count += len(hits)
            self._wakeup.set()
            await fut
            return
        by_site: dict[str, list[Hit]] = defaultdict(list)
        for hit in hits:
            by_site[hit["site"]].append(hit)
        waiters = []
        for site, site_hits in by_site.items():
            fut = loop.create_future()
            pending = self._pending[site]
            pending.hits.extend(site_hits)
            pending.waiters.append(fut)
            waiters.append(fut)
        self._pending_count += len(hits)
        self._wakeup.set()
        await asyncio.gather(*waiters)

    async def _flush_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, defaultdict(_Pending)
            count, self._pending_count = self._pending_count, 0
            PENDING_HITS.set(count)
            if count:
                await self._flush(batch)
            PENDING_HITS.set(self._pending_count)

    async def _flush(self, batch: dict[str, _Pending]) -> None:
        assert self._producer is not None
        limit = self._settings.produce_max_hits_per_message
        sends: list[tuple[_Pending, list[asyncio.Future[object]]]] = []
        started = time.perf_counter()
        for site, pending in batch.items():
            futures = []
            key = site.encode()
            try:
                for start in range(0, len(pending.hits), limit):
                    chunk = pending.hits[start : start + limit]
                    MESSAGE_HITS.observe(len(chunk))
                    payload = encode_hits(chunk)
                    futures.append(
                        await self._producer.send(self._settings.hits_topic, payload, key=key)
                    )
                    self.messages_sent += 1
            except Exception as exc:
                self._fail(pending, exc)
                continue
            sends.append((pending, futures))
        for pending, futures in sends:
            results = await asyncio.gather(*futures, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                PRODUCE_FAILURES.inc(len(errors))
                self._fail(pending, errors[0])
                continue
            PRODUCE_SECONDS.observe(time.perf_counter() - started)
            self._healthy = True
            self.hits_sent += len(pending.hits)
            for waiter in pending.waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _fail(self, pending: _Pending, exc: BaseException) -> None:
        log.warning("hits not acknowledged by the broker: %s", exc)
        self._healthy = False
        # Clients get a 503 and retry; the flag clears on the next acknowledged send.
        asyncio.get_running_loop().call_later(2.0, self._mark_retry)
        for waiter in pending.waiters:
            if not waiter.done():
                waiter.set_exception(UnavailableError(f"broker did not acknowledge: {exc}"))

    def _mark_retry(self) -> None:
        self._healthy = True
