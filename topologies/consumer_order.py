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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from faust.tables import recovery as faust_recovery
from faust.transport.drivers import aiokafka as faust_aiokafka

_PATCHED = "_rollup_consumer_order"


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


def install() -> None:
    """Patch Faust's classes once per process (every app built afterwards is covered)."""
    thread_cls: Any = faust_aiokafka.AIOKafkaConsumerThread
    recovery_cls: Any = faust_recovery.Recovery
    if getattr(thread_cls, _PATCHED, False):
        return
    thread_cls._fetch_records = fetch_active
    recovery_cls._resume_streams = seek_before_resume(recovery_cls._resume_streams)
    setattr(thread_cls, _PATCHED, True)
