"""Faust consumer fixes (topologies/consumer_order.py): on the real embedded broker, a fetch for
no active partition drains nothing, where aiokafka's own call would drain every partition; and
recovery seeks the stream partitions before it resumes them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from topologies.consumer_order import fetch_active, seek_before_resume

RECORDS = 12


async def _topic_with_records(broker: str, topic: str) -> tuple[TopicPartition, TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 2, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
    await producer.start()
    try:
        for i in range(RECORDS):
            for partition in (0, 1):
                await producer.send_and_wait(topic, f"{i}".encode(), partition=partition)
    finally:
        await producer.stop()
    return TopicPartition(topic, 0), TopicPartition(topic, 1)


async def _consumer_with_buffered_records(
    broker: str, changelog: TopicPartition, hits: TopicPartition
) -> AIOKafkaConsumer:
    """A consumer at offset 0 of both partitions, with records of both already prefetched."""
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
    await consumer.start()
    consumer.assign([changelog, hits])
    consumer.seek(changelog, 0)
    consumer.seek(hits, 0)
    fetcher: Any = consumer._fetcher
    for _ in range(100):
        if hits in fetcher._records and changelog in fetcher._records:
            return consumer
        await asyncio.sleep(0.05)
    raise AssertionError("the consumer never prefetched both partitions")


def _thread(flow_active: bool = True) -> Any:
    return SimpleNamespace(consumer=SimpleNamespace(flow_active=flow_active))


async def test_an_empty_active_set_drains_nothing(broker: str) -> None:
    changelog, hits = await _topic_with_records(broker, "order-empty")

    # What Faust does without the fix: the shared set is empty when the fetch runs.
    consumer = await _consumer_with_buffered_records(broker, changelog, hits)
    try:
        drained = await consumer._fetcher.fetched_records(set(), timeout=1.0)
        assert hits in drained  # aiokafka reads "no partitions" as "all partitions"
        assert await consumer.position(hits) > 0
    finally:
        await consumer.stop()

    consumer = await _consumer_with_buffered_records(broker, changelog, hits)
    try:
        assert await fetch_active(_thread(), consumer, set(), timeout=1.0) == {}
        assert await consumer.position(hits) == 0
        only_changelog = await fetch_active(_thread(), consumer, {changelog}, timeout=1.0)
        assert set(only_changelog) == {changelog}
        assert [r.offset for r in only_changelog[changelog]] == list(range(RECORDS))
        assert await consumer.position(hits) == 0
        assert await fetch_active(_thread(flow_active=False), consumer, {hits}) == {}
        assert await consumer.position(hits) == 0
        resumed = await fetch_active(_thread(), consumer, {hits}, timeout=1.0)
        assert [r.offset for r in resumed[hits]] == list(range(RECORDS))
    finally:
        await consumer.stop()


async def test_the_fetch_reads_a_snapshot_of_the_active_set(broker: str) -> None:
    changelog, hits = await _topic_with_records(broker, "order-snapshot")
    consumer = await _consumer_with_buffered_records(broker, changelog, hits)
    try:
        active = {changelog}
        fetch = asyncio.ensure_future(fetch_active(_thread(), consumer, active, timeout=1.0))
        active.clear()  # recovery pauses the changelog while the fetch is pending
        records = await fetch
        assert set(records) <= {changelog}
        assert await consumer.position(hits) == 0
    finally:
        await consumer.stop()


class _Recovery:
    def __init__(self, generation: int, assignment: set[str]) -> None:
        self.calls: list[str] = []
        consumer = SimpleNamespace(
            assignment=lambda: assignment, perform_seek=self._seek, resume=self.calls.append
        )
        self.app = SimpleNamespace(
            consumer=consumer,
            consumer_generation_id=generation,
            conf=SimpleNamespace(broker_request_timeout=5.0),
        )

    async def _seek(self) -> None:
        self.calls.append("seek")

    async def _wait(self, coro: Any, timeout: float) -> None:
        await asyncio.wait_for(coro, timeout)


async def _faust_resume(recovery: _Recovery, generation_id: int = 0) -> None:
    recovery.calls.append("resume")
    await recovery.app.consumer.perform_seek()


async def test_recovery_seeks_before_it_resumes_the_streams() -> None:
    resume_streams = seek_before_resume(_faust_resume)
    current = _Recovery(generation=7, assignment={"hits-1"})
    await resume_streams(current, generation_id=7)
    assert current.calls == ["seek", "resume", "seek"]

    stale = _Recovery(generation=8, assignment={"hits-1"})  # a newer rebalance began
    await resume_streams(stale, generation_id=7)
    assert stale.calls == ["resume", "seek"]

    empty = _Recovery(generation=7, assignment=set())
    await resume_streams(empty, generation_id=7)
    assert empty.calls == ["resume", "seek"]
