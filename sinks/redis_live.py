"""Live counters in Redis, each written with the live state it derives from (topologies/live.py).

Writes are idempotent: the state and absolute pageview counts (SET), absolute per-page scores
(ZADD) and HyperLogLog adds (PFADD), so writing a batch again after a crash changes nothing.
Every key expires on its own, so Redis stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from engine.live_keys import (
    PAGES_TTL,
    PAGEVIEWS_TTL,
    VISITORS_TTL,
    pages_key,
    pageviews_key,
    state_key,
    visitors_key,
)
from engine.live_state import MinuteState
from sinks.base import Sink


@dataclass
class LiveUpdate:
    site: str
    minute: int
    state: MinuteState
    new_visitors: list[str]


class LiveCountersSink(Sink[LiveUpdate]):
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._latest: dict[tuple[str, int], MinuteState] = {}
        self._visitors: dict[tuple[str, int], set[str]] = {}

    def add(self, item: LiveUpdate, src_partition: int, src_offset: int) -> None:
        key = (item.site, item.minute)
        self._latest[key] = item.state
        self._visitors.setdefault(key, set()).update(item.new_visitors)

    def discard(self) -> None:
        self._latest.clear()
        self._visitors.clear()

    @property
    def pending(self) -> int:
        return len(self._latest)

    async def flush(self) -> int:
        if not self._latest:
            return 0
        pipe: Any = self._redis.pipeline(transaction=False)
        for (site, minute), state in self._latest.items():
            pipe.set(state_key(site, minute), state.to_bytes(), exat=minute + PAGEVIEWS_TTL)
            pipe.set(pageviews_key(site, minute), state.pageviews, exat=minute + PAGEVIEWS_TTL)
            if state.pages:
                pipe.zadd(pages_key(site, minute), state.pages)
                pipe.expireat(pages_key(site, minute), minute + PAGES_TTL)
            vids = self._visitors.get((site, minute))
            if vids:
                pipe.pfadd(visitors_key(site, minute), *vids)
                pipe.expireat(visitors_key(site, minute), minute + VISITORS_TTL)
        await pipe.execute()
        written = len(self._latest)
        self.discard()
        return written
