"""Ingest backpressure: a bounded buffer and an unhealthy broker give 503s, never 202s."""

from __future__ import annotations

import pytest

from config import load_settings
from engine.errors import UnavailableError
from engine.hits import Hit
from engine.kafka import HitProducer


def hits(n: int) -> list[Hit]:
    return [
        Hit(
            ts=0.0,
            site="b.test",
            tz="UTC",
            name="pageview",
            vid=i,
            vid_prev=0,
            hostname="b.test",
            page="/",
            referrer="",
            source="",
            utm_source="",
            utm_medium="",
            utm_campaign="",
            utm_content="",
            utm_term="",
            device="",
            browser="",
            browser_version="",
            os="",
            os_version="",
            country="",
            props={},
            interactive=True,
            revenue=None,
            vitals=None,
        )
        for i in range(n)
    ]


async def test_full_buffer_refuses_instead_of_growing() -> None:
    producer = HitProducer(load_settings(max_pending_hits=3))
    producer._healthy = True
    with pytest.raises(UnavailableError) as refused:
        await producer.submit(hits(4))
    assert refused.value.retry_after >= 1
    assert producer._pending_count == 0


async def test_unacknowledging_broker_refuses() -> None:
    producer = HitProducer(load_settings())
    assert not producer.healthy  # never connected
    with pytest.raises(UnavailableError):
        await producer.submit(hits(1))
