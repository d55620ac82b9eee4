"""The store writer: consumes the worker's output topic and inserts into ClickHouse.

Exactly-once without transactions: every inserted row carries its source (hits partition,
offset), and for each table the writer skips any source message at or below the highest one
that table already holds. Offsets are committed to Kafka only after the inserts, but
correctness rests on ClickHouse's own record: after a crash anywhere in between, replayed
messages are recognised. Worker output for one hits partition arrives in hits-offset order
because the worker writes it to the output partition of the same number, in order.
Session rows are absolute versions (ReplacingMergeTree), so they are idempotent anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge, Histogram

from config import Settings
from engine.kafka import group_consumer
from engine.rollup_rows import WorkerOutput, decode_output
from engine.store import day_totals, spans
from engine.store.client import Store
from engine.store.schema import (
    COARSE_LEVELS,
    ROLLUP_LEVELS,
    SESSION_ROLLUP,
    coarse_from_day_sql,
    derive_sql,
    rebuild_session_rollup_sql,
)
from engine.store.session_rollup import SessionRollupSink
from sinks.base import Sink
from sinks.clickhouse import EventsSink, RollupLogSink, SessionsSink

log = logging.getLogger(__name__)

# Worker output messages per store batch (one per hits message, up to 500 hits each).
MAX_BATCH_MESSAGES = 2000

ROWS_WRITTEN = Counter("rollup_store_rows_total", "Rows inserted into ClickHouse", ["table"])
REPLAYS_SKIPPED = Counter(
    "rollup_store_replayed_messages_total",
    "Source messages skipped because ClickHouse already holds them",
    ["table"],
)
BAD_MESSAGES = Counter("rollup_store_bad_messages_total", "Undecodable worker output messages")
INSERT_FAILURES = Counter("rollup_store_insert_failures_total", "Failed inserts", ["table"])
INSERT_RETRIES = Counter("rollup_store_insert_retries_total", "Inserts tried again", ["table"])
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 30, 60)
STORED_DELAY = Histogram(
    "rollup_store_delay_seconds",
    "Seconds from the worker sending an output message to its rows being queryable (inserted "
    "and folded into the levels that serve today): the writer's share of a hit's way to the "
    "Stats API",
    buckets=STAGE_BUCKETS,
)
BATCH_SECONDS = Histogram(
    "rollup_store_batch_seconds",
    "Time to store one batch: its inserts and level derives",
    buckets=STAGE_BUCKETS,
)
DERIVE_SECONDS = Histogram(
    "rollup_store_derive_seconds",
    "Time to fold a batch's log range into one rollup level (one INSERT ... SELECT)",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
APPLIED_OFFSET = Gauge(
    "rollup_store_applied_offset",
    "Highest hits offset stored (for a rollup level: folded into it)",
    ["table", "partition"],
)


@dataclass
class Target:
    """One ClickHouse table fed from the worker output, with its own replay guard."""

    table: str
    sink: Sink[Any]
    extract: Callable[[WorkerOutput], Any]
    applied: dict[int, int] = field(default_factory=dict)


class DayTotals:
    """The writer's side of day_totals (see engine/store/day_totals.py) and of the month spans
    that follow its rules (engine/store/spans.py): finalize days as they close, and retract
    then finalize again the closed days that a log stretch adds to."""

    def __init__(self, store: Store, now: Callable[[], datetime]) -> None:
        self.store = store
        self.now = now
        self.through: date | None = None  # days before it are finalized (or had no data)
        self.version = 0

    def _next_version(self) -> int:
        self.version += 1
        return self.version

    async def load(self) -> None:
        ((rows, newest, version),) = await self.store.query(day_totals.STATE_SQL)
        ((span_rows, span_version),) = await self.store.query(spans.STATE_SQL)
        ((year_rows,),) = await self.store.query(spans.YEAR_STATE_SQL)
        self.through = newest + timedelta(days=1) if rows else None
        self.version = max(int(version), int(span_version))
        if self.through is not None and not span_rows:
            # A store from before the spans: build them for the days finalized already.
            log.info("building %s for the days before %s", spans.TABLE, self.through)
            await self.store.command(spans.build_sql(self._next_version(), before=self.through))
        if self.through is not None and not year_rows:
            # Or from before the year prefixes (none either while no month has closed).
            months = [month for (month,) in await self.store.query(spans.MONTHS_SQL)]
            version = self._next_version()
            for sql in spans.year_build_by_month_sql(version, months, self.through):
                await self.store.command(sql)
        retracted = [(str(site), day) for site, day in await self.store.query(
            day_totals.RETRACTED_SQL
        )]  # fmt: skip
        if retracted:  # a crash between a retraction and the finalizing after it
            await self.refinalize(retracted)

    async def close_days(self) -> None:
        """Finalize the days that closed since the last call, and their spans."""
        before = day_totals.closed_before(self.now())
        if self.through is not None and before <= self.through:
            return
        version = self._next_version()
        await self.store.command(spans.build_sql(version, since=self.through, before=before))
        await self.store.command(spans.year_build_sql(version, since=self.through, before=before))
        await self.store.command(
            day_totals.finalize_sql(version, since=self.through, before=before)
        )
        self.through = before

    async def retract_touched(self, ranges: dict[int, tuple[int, int]]) -> list[tuple[str, date]]:
        """Before rollup_day takes these log ranges: retract the finalized days they add to,
        then their months' spans (in this order: a crash in between leaves a retracted day,
        which `load` finalizes again, with its spans)."""
        if self.through is None:
            return []
        rows = await self.store.query(day_totals.touched_sql(ranges, self.through))
        pairs = [(str(site), day) for site, day in rows]
        if pairs:
            version = self._next_version()
            await self.store.command(day_totals.retract_sql(pairs, version))
            await self.store.command(spans.retract_sql(spans.months_of(pairs), version))
        return pairs

    async def refinalize(self, pairs: list[tuple[str, date]]) -> None:
        """Finalize retracted days again: their spans first, the days last (see above)."""
        assert self.through is not None
        version = self._next_version()
        months = spans.months_of(pairs)
        await self.store.command(spans.build_sql(version, before=self.through, site_months=months))
        years = spans.years_of(months)
        await self.store.command(
            spans.year_build_sql(version, before=self.through, site_years=years)
        )
        sites, days = {s for s, _ in pairs}, {d for _, d in pairs}
        sql = day_totals.finalize_sql(version, sites=sites, days=days)
        await self.store.command(sql)


class _Reload(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, writer: StoreWriter) -> None:
        self._writer = writer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._writer.reload_applied()


class StoreWriter:
    """Runs in the process that owns the store (`rollup api`, or `serve` in the embedded stack)."""

    def __init__(
        self, settings: Settings, store: Store, now: Callable[[], datetime] | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.day_totals = DayTotals(store, now or (lambda: datetime.now(UTC)))
        self.targets = [
            Target("events", EventsSink(store), lambda out: out.events),
            Target("rollup_log", RollupLogSink(store), lambda out: out.rollups),
            # Before `sessions`: its deltas read the versions stored there before the batch.
            Target(SESSION_ROLLUP, SessionRollupSink(store), lambda out: out.sessions),
            Target("sessions", SessionsSink(store), lambda out: out.sessions),
        ]
        self.events, self.rollup_log = self.targets[0], self.targets[1]
        self.session_rollup, self.sessions = self.targets[2], self.targets[3]
        # Highest source position each rollup level holds, per hits partition.
        self.levels: dict[str, dict[int, int]] = {t: {} for t in ROLLUP_LEVELS.values()}
        # Data versions for the API's result cache: a site's version moves after every batch
        # applied for it, the epoch after anything else that may change what the store holds.
        self.epoch = 0
        self.site_versions: dict[str, int] = {}
        self.healthy = False
        self.last_error = ""
        self._task: asyncio.Task[None] | None = None
        # The coarse levels are derived every few seconds, not every batch: when next, and the
        # sites whose rows wait for them (their cached answers change again then).
        self._coarse_due = 0.0
        self._coarse_sites: set[str] = set()
        # The rebalance listener runs on aiokafka's coordinator task, concurrently with a batch
        # being applied: without this lock both could derive the same log range into a level.
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self.reload_applied()
        self._task = asyncio.create_task(self.run(), name="store-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def data_version(self, site: str) -> tuple[int, int]:
        return (self.epoch, self.site_versions.get(site, 0))

    def _touched(self, sites: set[str]) -> None:
        for site in sites:
            self.site_versions[site] = self.site_versions.get(site, 0) + 1

    async def reload_applied(self) -> None:
        async with self._lock:
            await self._reload_applied()

    async def _reload_applied(self) -> None:
        for target in self.targets:
            target.applied = await self.store.applied_offsets(target.table)
        for table in self.levels:
            self.levels[table] = await self.store.applied_offsets(table)
        behind = self.sessions.applied.items()
        if any(o > self.session_rollup.applied.get(p, -1) for p, o in behind):
            # Never left behind by the writer (it inserts session_hour first): a store from
            # before the table existed, or built in bulk. Count it from scratch.
            log.info("rebuilding %s from sessions", SESSION_ROLLUP)
            await self.store.command(f"TRUNCATE TABLE {SESSION_ROLLUP}")
            await self.store.command(rebuild_session_rollup_sql())
            self.session_rollup.applied = await self.store.applied_offsets(SESSION_ROLLUP)
        day = self.levels[ROLLUP_LEVELS["day"]]
        for table in COARSE_LEVELS:
            if day and not self.levels[table]:
                # A store from before the level existed: the log may have dropped old days.
                log.info("building %s from rollup_day", table)
                await self.store.command(coarse_from_day_sql(table))
                self.levels[table] = await self.store.applied_offsets(table)
        for table, have in self.levels.items():
            for partition, offset in have.items():
                APPLIED_OFFSET.labels(table, str(partition)).set(offset)
        await self.day_totals.load()
        # A crash between a log insert and the level inserts leaves levels behind: catch up.
        await self.derive_levels()
        self.epoch += 1

    async def derive_levels(self, coarse: bool = True) -> None:
        """Fold what the log holds beyond each level's own record into that level. One
        INSERT ... SELECT per level, each atomic, each recorded in the level itself. Without
        `coarse`, the week, month and quarter levels are left for a later call."""
        logged = self.rollup_log.applied
        for table, have in self.levels.items():
            if not coarse and table in COARSE_LEVELS:
                continue
            ranges = {
                partition: (have.get(partition, -1), high)
                for partition, high in logged.items()
                if high > have.get(partition, -1)
            }
            if not ranges:
                continue
            retracted: list[tuple[str, date]] = []
            if table == ROLLUP_LEVELS["day"]:
                retracted = await self.day_totals.retract_touched(ranges)
            with DERIVE_SECONDS.labels(table).time():
                await self.store.command(derive_sql(table, ranges))
            for partition, (_, high) in ranges.items():
                have[partition] = high
                APPLIED_OFFSET.labels(table, str(partition)).set(high)
            if retracted:
                await self.day_totals.refinalize(retracted)
        await self.day_totals.close_days()

    async def run(self) -> None:
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep the writer alive; Kafka redelivers
                self.healthy = False
                self.last_error = str(exc)[:300]
                log.warning("store writer restarting after: %s", exc)
                for target in self.targets:
                    target.sink.discard()
                await asyncio.sleep(2.0)

    async def _consume(self) -> None:
        consumer = group_consumer(
            self.settings,
            "store",
            max_partition_fetch_bytes=16 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        await consumer.start()
        try:
            consumer.subscribe([self.settings.rollups_topic], listener=_Reload(self))
            while True:
                batches = await self._collect(consumer)
                self.healthy = True
                if batches:
                    await self._apply(consumer, batches)
                elif self._coarse_sites:
                    async with self._lock:  # idle: nothing to gain by waiting
                        await self.derive_coarse()
        finally:
            with contextlib.suppress(KafkaError):
                await consumer.stop()

    async def _collect(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Any]]:
        """What arrives within one flush interval (or up to MAX_BATCH_MESSAGES): every batch
        costs a few inserts and level derives, and each insert a part for ClickHouse to merge,
        so a backlog is drained in few large batches rather than many small ones."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.store_flush_seconds
        batches: dict[TopicPartition, list[Any]] = {}
        count = 0
        while count < MAX_BATCH_MESSAGES:
            remaining = deadline - loop.time()
            fetched = await consumer.getmany(
                timeout_ms=max(0, int(remaining * 1000)), max_records=MAX_BATCH_MESSAGES - count
            )
            for tp, records in fetched.items():
                batches.setdefault(tp, []).extend(records)
                count += len(records)
            if remaining <= 0:
                break
        return batches

    async def _apply(self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, Any]) -> None:
        async with self._lock:
            await self._store(batches)
        # Outside the lock: a commit can wait for a rebalance whose listener waits for the lock.
        # A lost commit only means replays, which ClickHouse's own record skips.
        try:
            await consumer.commit()
        except KafkaError as exc:
            log.info("offset commit skipped (%s); replays will be recognised", exc)

    async def _store(self, batches: dict[TopicPartition, Any]) -> None:
        started = time.monotonic()
        await self._store_batch(batches)
        BATCH_SECONDS.observe(time.monotonic() - started)
        stored_ms = time.time() * 1000
        for records in batches.values():
            for record in records:
                STORED_DELAY.observe(max(0.0, stored_ms - record.timestamp) / 1000)

    async def _store_batch(self, batches: dict[TopicPartition, Any]) -> None:
        newest: dict[str, dict[int, int]] = {target.table: {} for target in self.targets}
        sites: set[str] = set()
        for records in batches.values():
            for record in records:
                try:
                    output = decode_output(record.value)
                except Exception:
                    BAD_MESSAGES.inc()
                    log.exception("undecodable output %s/%s", record.partition, record.offset)
                    continue
                p, o = output.src_partition, output.src_offset
                sites.update(output.sites)
                sites.update(row["site"] for row in output.sessions)
                taken: set[str] = set()
                for target in self.targets:
                    seen = newest[target.table]
                    if o <= max(target.applied.get(p, -1), seen.get(p, -1)):
                        REPLAYS_SKIPPED.labels(target.table).inc()
                        continue
                    target.sink.add(target.extract(output), p, o)
                    seen[p] = o
                    taken.add(target.table)
                if "sessions" in taken and SESSION_ROLLUP not in taken:
                    # Counted in session_hour, not yet in sessions (a crash between the two):
                    # the batch's deltas must see these as the stored versions.
                    sink = self.session_rollup.sink
                    assert isinstance(sink, SessionRollupSink)
                    sink.counted_elsewhere(output.sessions)
        try:
            for target in self.targets:
                rows = await self._flush(target)
                ROWS_WRITTEN.labels(target.table).inc(rows)
                for partition, offset in newest[target.table].items():
                    target.applied[partition] = offset
                    APPLIED_OFFSET.labels(target.table, str(partition)).set(offset)
            if time.monotonic() >= self._coarse_due:
                await self.derive_coarse(sites)
            else:
                # Every batch costs a derive per level it feeds, and the week, month and quarter
                # levels cost as much as the rest: they wait (see store_coarse_levels_seconds).
                await self.derive_levels(coarse=False)
                self._coarse_sites |= sites
        finally:
            # Even a failed batch may have left rows: no cached answer may outlive it.
            self._touched(sites)

    async def derive_coarse(self, sites: set[str] | None = None) -> None:
        """Every level, the coarse ones included; then the sites whose rows reached them."""
        await self.derive_levels()
        self._coarse_due = time.monotonic() + self.settings.store_coarse_levels_seconds
        waited, self._coarse_sites = self._coarse_sites, set()
        self._touched(waited - (sites or set()))

    async def _flush(self, target: Target) -> int:
        for attempt in range(3):
            try:
                return await target.sink.flush()
            except Exception:
                INSERT_FAILURES.labels(target.table).inc()
                if attempt == 2:
                    raise  # uncommitted: the consumer restarts and Kafka delivers these again
                INSERT_RETRIES.labels(target.table).inc()
                await asyncio.sleep(0.5 * (attempt + 1))
        return 0


def rebuild_session_rollup(store: Store) -> None:
    """session_hour from `sessions`, for a store built in bulk (the benchmarks): what the
    writer's start-up catch-up would do. Then finalize_closed_days."""
    store.command_sync(f"TRUNCATE TABLE {SESSION_ROLLUP}")
    store.command_sync(rebuild_session_rollup_sql())


def finalize_closed_days(store: Store, now: datetime) -> None:
    """Finalize every closed day of a store built in bulk, and its spans, from scratch."""
    before = day_totals.closed_before(now)
    for table in (day_totals.TABLE, spans.TABLE):
        store.command_sync(f"TRUNCATE TABLE {table}")
    # A month at a time: a span lies in one month, and one statement for a year of 50,000
    # pageviews a day held every span's sketches at once (over 21 GiB).
    site_months: dict[date, set[tuple[str, date]]] = {}
    for site, month in store.query_sync(
        "SELECT DISTINCT site, toStartOfMonth(day) FROM rollup_day "
        f"WHERE day < toDate('{before.isoformat()}')"
    ):
        site_months.setdefault(month, set()).add((str(site), month))
    for month in sorted(site_months):
        store.command_sync(spans.build_sql(1, before=before, site_months=site_months[month]))
    for sql in spans.year_build_by_month_sql(1, site_months, before):
        store.command_sync(sql)
    store.command_sync(day_totals.finalize_sql(1, before=before))
