"""The hit producer's group commit: a request returns once its hits are acknowledged, whether
they belong to one site (one future, the usual request) or to several (one per site)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from config import load_settings
from engine.errors import UnavailableError
from engine.hits import decode_hits
from engine.kafka import HitProducer
from tests.test_backpressure import hits


class FakeKafka:
    """Records what is sent; acknowledges (or fails) each send when told."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[bytes, list[Any]]] = []
        self.fail = fail

    async def send(self, topic: str, payload: bytes, key: bytes) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent.append((key, decode_hits(payload)))
        if self.fail:
            fut.set_exception(RuntimeError("not acknowledged"))
        else:
            fut.set_result(None)
        return fut


def producer_with(kafka: FakeKafka) -> tuple[HitProducer, asyncio.Task[None]]:
    producer = HitProducer(load_settings())
    producer._producer = kafka  # type: ignore[assignment]
    producer._healthy = True
    return producer, asyncio.create_task(producer._flush_loop())


def on_site(site: str, n: int) -> list[Any]:
    return [{**hit, "site": site} for hit in hits(n)]


async def test_one_site_requests_share_a_message() -> None:
    kafka = FakeKafka()
    producer, flusher = producer_with(kafka)
    try:
        await asyncio.wait_for(
            asyncio.gather(*(producer.submit(on_site("a.test", 2)) for _ in range(5))), 5
        )
    finally:
        flusher.cancel()
    assert sum(len(batch) for _, batch in kafka.sent) == 10
    assert {key for key, _ in kafka.sent} == {b"a.test"}
    assert len(kafka.sent) < 5  # group commit: requests submitted together leave together
    assert producer._pending_count == 0 and producer.hits_sent == 10


async def test_several_sites_each_keyed_and_all_acknowledged() -> None:
    kafka = FakeKafka()
    producer, flusher = producer_with(kafka)
    try:
        await asyncio.wait_for(
            producer.submit(on_site("a.test", 1) + on_site("b.test", 2) + on_site("a.test", 1)), 5
        )
    finally:
        flusher.cancel()
    by_key = {key: len(batch) for key, batch in kafka.sent}
    assert by_key == {b"a.test": 2, b"b.test": 2}
    assert all(hit["site"] == key.decode() for key, batch in kafka.sent for hit in batch)


@pytest.mark.parametrize("sites", [("a.test",), ("a.test", "b.test")])
async def test_unacknowledged_hits_raise_unavailable(sites: tuple[str, ...]) -> None:
    producer, flusher = producer_with(FakeKafka(fail=True))
    try:
        batch = [hit for site in sites for hit in on_site(site, 1)]
        with pytest.raises(UnavailableError):
            await asyncio.wait_for(producer.submit(batch), 5)
    finally:
        flusher.cancel()
    assert not producer.healthy
