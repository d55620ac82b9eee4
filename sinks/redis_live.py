"""Live counters in Redis: per-minute visitor HyperLogLogs, pageview counters and top pages.

Keys expire on their own, so Redis stays bounded. The highest applied source offset per hits
partition is written in the same MULTI/EXEC as the counters, and messages at or below it are
skipped, so a worker restarted after a crash does not count a hit twice.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

from redis.asyncio import Redis

from engine.dimensions import SESSION_ONLY_EVENTS
from engine.hits import Hit
from engine.live_keys import (
    LIVE_HORIZON,
    PAGES_TTL,
    PAGEVIEWS_TTL,
    VISITORS_TTL,
    offset_key,
    pages_key,
    pageviews_key,
    visitors_key,
)
from engine.rollup_rows import minute_of
from sinks.base import Sink


class LiveCountersSink(Sink[list[Hit]]):
    def __init__(self, redis: Redis, topic: str) -> None:
        self._redis = redis
        self._topic = topic
        self._batches: list[tuple[int, int, list[Hit]]] = []

    def add(self, item: list[Hit], src_partition: int, src_offset: int) -> None:
        self._batches.append((src_partition, src_offset, item))

    def discard(self) -> None:
        self._batches.clear()

    @property
    def pending(self) -> int:
        return sum(len(hits) for _, _, hits in self._batches)

    async def flush(self) -> int:
        if not self._batches:
            return 0
        partitions = sorted({p for p, _, _ in self._batches})
        stored = await self._redis.mget([offset_key(self._topic, p) for p in partitions])
        applied = {p: int(v) if v is not None else -1 for p, v in zip(partitions, stored, strict=True)}
        visitors: dict[tuple[str, int], set[str]] = defaultdict(set)
        pageviews: Counter[tuple[str, int]] = Counter()
        pages: dict[tuple[str, int], Counter[str]] = defaultdict(Counter)
        newest: dict[int, int] = {}
        horizon = time.time() - LIVE_HORIZON
        counted = 0
        for partition, offset, hits in self._batches:
            if offset <= applied[partition]:
                continue
            newest[partition] = max(offset, newest.get(partition, -1))
            for hit in hits:
                if hit["ts"] < horizon or hit["name"] in SESSION_ONLY_EVENTS:
                    continue
                key = (hit["site"], minute_of(hit["ts"]))
                visitors[key].add(str(hit["vid"]))
                if hit["name"] == "pageview":
                    pageviews[key] += 1
                    pages[key][hit["page"]] += 1
                counted += 1
        pipe: Any = self._redis.pipeline(transaction=True)
        for (site, minute), vids in visitors.items():
            pipe.pfadd(visitors_key(site, minute), *vids)
            pipe.expireat(visitors_key(site, minute), minute + VISITORS_TTL)
        for (site, minute), count in pageviews.items():
            pipe.incrby(pageviews_key(site, minute), count)
            pipe.expireat(pageviews_key(site, minute), minute + PAGEVIEWS_TTL)
        for (site, minute), page_counts in pages.items():
            for page, count in page_counts.items():
                pipe.zincrby(pages_key(site, minute), count, page)
            pipe.expireat(pages_key(site, minute), minute + PAGES_TTL)
        for partition, offset in newest.items():
            pipe.set(offset_key(self._topic, partition), offset)
        await pipe.execute()
        self._batches.clear()
        return counted
