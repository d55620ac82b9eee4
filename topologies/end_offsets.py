"""Correct changelog end offsets before Faust recovers tables from them.

Tansu (the embedded broker) answers ListOffsets(latest) with the base offset of the last record
batch plus one, not the last offset plus one: with a last batch of 31 records at 54..84 it
reports 55 instead of 85. Faust reads a changelog only up to that end, so a worker taking
over a partition would restore its table without the newest records. We ask the broker for the
records at the reported end minus one: a fetch returns whole batches, so the last record
returned gives the true end. On a broker that reports ends correctly this reads one record per
partition and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger(__name__)

_PROBE_SECONDS = 10.0


async def true_end_offsets(bootstrap: str, reported: Mapping[Any, int | None]) -> dict[Any, Any]:
    """End offsets (last offset + 1) for partitions whose reported end may be too low."""
    ends: dict[Any, Any] = dict(reported)
    wanted = {
        TopicPartition(tp.topic, tp.partition): tp
        for tp, end in reported.items()
        if end and end > 0
    }
    if not wanted:
        return ends
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        await probe.start()
        probe.assign(list(wanted))
        for tp, original in wanted.items():
            probe.seek(tp, int(reported[original] or 0) - 1)
        pending = set(wanted)
        deadline = asyncio.get_running_loop().time() + _PROBE_SECONDS
        while pending and asyncio.get_running_loop().time() < deadline:
            fetched = await probe.getmany(*pending, timeout_ms=500)
            for tp, records in fetched.items():
                if records:
                    original = wanted[tp]
                    ends[original] = max(int(ends[original] or 0), records[-1].offset + 1)
                    pending.discard(tp)
        if pending:
            log.warning("end offsets not confirmed for %s", sorted(map(str, pending)))
    except KafkaError as exc:  # fall back to what the broker reported
        log.warning("end offset probe failed: %s", exc)
    finally:
        await probe.stop()
    return ends


def install(bootstrap: str) -> None:
    """Route Faust's highwater lookups (used by table recovery) through `true_end_offsets`."""
    thread_cls: Any = faust_aiokafka.AIOKafkaConsumerThread
    original: Callable[[Any, Any], Awaitable[Mapping[Any, int]]] = getattr(
        thread_cls, "_reported_highwaters", thread_cls._highwaters
    )

    async def _highwaters(self: Any, partitions: Any) -> Mapping[Any, int]:
        reported = await original(self, partitions)
        if self.consumer.in_transaction:
            return reported
        return await true_end_offsets(bootstrap, reported)

    thread_cls._reported_highwaters = original
    thread_cls._highwaters = _highwaters
