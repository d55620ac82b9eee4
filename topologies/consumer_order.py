"""Two fixes to Faust's consumer that keep each hits partition read in order, from its commit.

Found by the long chaos run, which lost whole stretches of hits when a worker took over
partitions under load; the store had seen later offsets first and took the older ones, arriving
after, for replays.

1. Faust hands its consumer thread the live set of partitions it may read, and aiokafka's
   `fetched_records(partitions)` reads an empty set as "every partition". When table recovery
   pauses its last changelog partition while a fetch is waiting, that fetch drains the buffered
   records of the paused hits partitions too: aiokafka moves their positions past them and Faust
   drops them as not active. We fetch with a snapshot of the set, and not at all when it is empty.
2. After recovery Faust resumes the stream partitions first and seeks them to their committed
   offsets second, so records fetched at a drifted position can be processed before the seek
   rewinds. We seek while the partitions are still paused; Faust's own seek then changes nothing.
3. Faust commits what its streams acknowledged, and fills offsets it never delivered into that
   ("gaps", meant for compacted topics). An app can cap each partition's commit at the offset
   up to which it read every message (`cap_commits`), so no commit passes a skipped message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from faust.tables import recovery as faust_recovery
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from prometheus_client import Counter

from engine.continuity import OffsetContinuity, Verdict
from engine.errors import OffsetGapError

log = logging.getLogger(__name__)

RESEEK_SECONDS = 1.0
RESYNC_SECONDS = 60.0

OFFSET_GAPS = Counter(
    "rollup_worker_offset_gaps_total",
    "Skipped hits messages found and read again (where: start of an assignment or stream), "
    "or found deleted by retention before anyone read them",
    ["where", "outcome"],
)

_PATCHED = "_rollup_consumer_order"
_COMMIT_CAP = "_rollup_commit_cap"

CommitCap = Callable[[Any], int | None]


async def fetch_active(
    self: Any,
    consumer: Any,
    active_partitions: set[Any] | None,
    timeout: float | None = None,
    max_records: int | None = None,
) -> dict[Any, Any]:
    """`AIOKafkaConsumerThread._fetch_records` that never drains partitions outside the set."""
    if not self.consumer.flow_active:
        return {}
    partitions = None if active_partitions is None else set(active_partitions)
    if partitions is not None and not partitions:
        return {}
    fetcher = consumer._fetcher
    if consumer._closed or fetcher._closed:
        from aiokafka.errors import ConsumerStoppedError

        raise ConsumerStoppedError()
    with fetcher._subscriptions.fetch_context():
        records: dict[Any, Any] = await fetcher.fetched_records(
            partitions, timeout=timeout, max_records=max_records
        )
        return records


def seek_before_resume(
    original: Callable[..., Awaitable[None]],
) -> Callable[..., Awaitable[None]]:
    async def _resume_streams(self: Any, generation_id: int = 0) -> None:
        consumer = self.app.consumer
        if self.app.consumer_generation_id == generation_id and consumer.assignment():
            await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
        await original(self, generation_id=generation_id)

    return _resume_streams


def cap_commits(app: Any, cap: CommitCap) -> None:
    """Never commit a partition past `cap(tp)` (None: no cap) in this app."""
    setattr(app, _COMMIT_CAP, cap)


def capped_offsets(
    original: Callable[[Any, Any], dict[Any, int]],
) -> Callable[[Any, Any], dict[Any, int]]:
    def _filter_committable_offsets(self: Any, tps: Any) -> dict[Any, int]:
        offsets = original(self, tps)
        cap: CommitCap | None = getattr(self.app, _COMMIT_CAP, None)
        if cap is None:
            return offsets
        capped = {}
        for tp, offset in offsets.items():
            limit = cap(tp)
            if limit is not None and offset > limit:
                offset = limit
            if self._should_commit(tp, offset):
                capped[tp] = offset
        return capped

    return _filter_committable_offsets


def install() -> None:
    """Patch Faust's classes once per process (every app built afterwards is covered)."""
    thread_cls: Any = faust_aiokafka.AIOKafkaConsumerThread
    recovery_cls: Any = faust_recovery.Recovery
    if getattr(thread_cls, _PATCHED, False):
        return
    consumer_cls: Any = faust_consumer.Consumer
    thread_cls._fetch_records = fetch_active
    recovery_cls._resume_streams = seek_before_resume(recovery_cls._resume_streams)
    consumer_cls._filter_committable_offsets = capped_offsets(
        consumer_cls._filter_committable_offsets
    )
    setattr(thread_cls, _PATCHED, True)


class InOrder:
    """Lets the agent process each partition's messages only in order from its commit: on a
    gap it seeks back and sets aside what came past it, and commits never pass the gap."""

    def __init__(self, app: Any, topic: str) -> None:
        self._app = app
        self._topic = topic
        self._continuity = OffsetContinuity()
        # partition -> (when its gap was found, when it was last sought back)
        self._resync: dict[int, tuple[float, float]] = {}
        cap_commits(app, self._commit_cap)
        app.on_partitions_revoked.connect(self._forget)

    def _commit_cap(self, tp: Any) -> int | None:
        if tp.topic != self._topic:
            return None
        return self._continuity.frontier(tp.partition)

    def _forget(self, _app: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        revoked: set[Any] = args[0]
        partitions = {tp.partition for tp in revoked if tp.topic == self._topic}
        self._continuity.forget(partitions)
        for partition in partitions:
            self._resync.pop(partition, None)

    async def admit(self, message: Any) -> bool:
        """Whether to process `message` now (False: it comes again after the seek back)."""
        partition = message.partition
        if not self._continuity.tracks(partition):
            committed = getattr(self._app.consumer, "_committed_offset", {}).get(message.tp)
            self._continuity.expect(partition, committed)
            log.info(
                "%s partition %d: first offset %d (committed %s)",
                self._topic,
                partition,
                message.offset,
                committed,
            )
        verdict, gap = self._continuity.admit(partition, message.offset)
        if verdict is Verdict.PROCESS:
            self._resync.pop(partition, None)
            return True
        now = time.monotonic()
        if gap is None:  # still waiting for the expected offset
            started, sought = self._resync[partition]
            if now - started > RESYNC_SECONDS:
                raise OffsetGapError(
                    f"{self._topic} partition {partition}: offset "
                    f"{self._continuity.frontier(partition)} not read again in "
                    f"{RESYNC_SECONDS:.0f} s"
                )
            # Records fetched before a seek can move Faust's read offset past the expected
            # one again (it then drops the re-read); a later seek gets through.
            if now - sought > RESEEK_SECONDS:
                self._resync[partition] = (started, now)
                await self._app.consumer.seek(message.tp, self._continuity.frontier(partition))
            return False
        where = "start" if gap.at_start else "stream"
        if gap.at_start:
            earliest = (await self._app.consumer.earliest_offsets(message.tp)).get(message.tp)
            if earliest is not None and earliest > gap.expected:
                OFFSET_GAPS.labels(where, "deleted").inc()
                log.error("%s deleted by retention before anyone read them: %s", self._topic, gap)
                self._continuity.accept(partition, message.offset)
                return True
        OFFSET_GAPS.labels(where, "read_again").inc()
        log.warning("%s skipped by the consumer, seeking back: %s", self._topic, gap)
        self._resync[partition] = (now, now)
        await self._app.consumer.seek(message.tp, gap.expected)
        return False
