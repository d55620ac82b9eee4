"""Faust consumer fixes (topologies/consumer_order.py): on the real embedded broker, a fetch for
no active partition drains nothing, where aiokafka's own call would drain every partition;
recovery seeks the stream partitions before it resumes them; a skipped offset is sought back
and read again, and no commit passes it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from engine.errors import OffsetGapError
from topologies import consumer_order
from topologies.consumer_order import (
    InOrder,
    cap_commits,
    capped_offsets,
    fetch_active,
    seek_before_resume,
)

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


# -- InOrder and the commit cap, with a stand-in for Faust's app (the logic, not Faust) --------


class _Signal:
    def __init__(self) -> None:
        self.receivers: list[Any] = []

    def connect(self, fn: Any) -> Any:
        self.receivers.append(fn)
        return fn

    def send(self, *args: Any) -> None:
        for fn in self.receivers:
            fn(None, *args, signal=self)


class _Consumer:
    def __init__(self, committed: dict[Any, int], earliest: int = 0) -> None:
        self._committed_offset = committed
        self.earliest = earliest
        self.seeks: list[tuple[Any, int]] = []

    async def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
        return {tp: self.earliest for tp in tps}


def _app(committed: dict[Any, int], earliest: int = 0) -> Any:
    return SimpleNamespace(consumer=_Consumer(committed, earliest), on_partitions_revoked=_Signal())


HITS0 = TopicPartition("hits", 0)


def _message(offset: int, tp: TopicPartition = HITS0) -> Any:
    return SimpleNamespace(tp=tp, partition=tp.partition, offset=offset)


def _cap(app: Any) -> Any:
    return app._rollup_commit_cap


async def test_a_gap_is_sought_back_and_read_again() -> None:
    app = _app({HITS0: 10})
    in_order = InOrder(app, "hits")
    assert [await in_order.admit(_message(o)) for o in (10, 11)] == [True, True]
    assert await in_order.admit(_message(15)) is False
    assert app.consumer.seeks == [(HITS0, 12)]
    assert await in_order.admit(_message(16)) is False
    assert app.consumer.seeks == [(HITS0, 12)]  # one seek, not one per message
    assert _cap(app)(HITS0) == 12  # commits stop before the gap
    assert _cap(app)(TopicPartition("other", 0)) is None
    assert [await in_order.admit(_message(o)) for o in (12, 13, 14, 15, 16)] == [True] * 5
    assert _cap(app)(HITS0) == 17


async def test_a_seek_overtaken_by_fetched_records_is_repeated(monkeypatch: Any) -> None:
    app = _app({HITS0: 0})
    in_order = InOrder(app, "hits")
    clock = [1000.0]
    monkeypatch.setattr(consumer_order.time, "monotonic", lambda: clock[0])
    assert await in_order.admit(_message(0)) is True
    assert await in_order.admit(_message(5)) is False
    clock[0] += consumer_order.RESEEK_SECONDS + 0.1
    assert await in_order.admit(_message(6)) is False
    assert app.consumer.seeks == [(HITS0, 1), (HITS0, 1)]
    clock[0] += consumer_order.RESYNC_SECONDS
    with pytest.raises(OffsetGapError, match="hits partition 0: offset 1 not read again"):
        await in_order.admit(_message(7))


async def test_a_gap_at_the_commit_is_read_again_unless_retention_deleted_it() -> None:
    app = _app({HITS0: 5}, earliest=0)
    in_order = InOrder(app, "hits")
    assert await in_order.admit(_message(9)) is False
    assert app.consumer.seeks == [(HITS0, 5)]

    deleted = _app({HITS0: 5}, earliest=8)
    in_order = InOrder(deleted, "hits")
    assert await in_order.admit(_message(8)) is True  # 5..7 no longer exist: go on
    assert deleted.consumer.seeks == []
    assert _cap(deleted)(HITS0) == 9


async def test_revoked_partitions_start_afresh() -> None:
    app = _app({HITS0: 0})
    in_order = InOrder(app, "hits")
    assert await in_order.admit(_message(0)) is True
    app.on_partitions_revoked.send({HITS0})
    app.consumer._committed_offset[HITS0] = 40  # another worker went on meanwhile
    assert await in_order.admit(_message(40)) is True
    assert app.consumer.seeks == []


def test_commits_are_capped_at_the_frontier() -> None:
    def faust_offsets(self: Any, tps: Any) -> dict[Any, int]:
        return {tp: 100 for tp in tps}

    committed = {HITS0: 20, TopicPartition("hits", 1): 50}
    consumer = SimpleNamespace(
        app=SimpleNamespace(),
        _should_commit=lambda tp, offset: offset > committed[tp],
    )
    filtered = capped_offsets(faust_offsets)
    tps = list(committed)
    assert filtered(consumer, tps) == {tp: 100 for tp in tps}  # no cap installed
    cap_commits(consumer.app, lambda tp: {0: 30, 1: 40}[tp.partition])
    # Partition 1's cap is below its commit: nothing to commit there.
    assert filtered(consumer, tps) == {HITS0: 30}
