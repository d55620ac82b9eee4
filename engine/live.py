"""Reads the live counters for the realtime endpoints (written by sinks/redis_live.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from redis.asyncio import Redis

from engine.live_keys import (
    PER_MINUTE_ENTRIES,
    REALTIME_MINUTES,
    pages_key,
    pageviews_key,
    recent_minutes,
    visitors_key,
)


async def realtime_visitors(redis: Redis, site: str, now: float) -> int:
    keys = [visitors_key(site, m) for m in recent_minutes(now, REALTIME_MINUTES)]
    return int(await redis.pfcount(*keys))


async def live_summary(redis: Redis, site: str, now: float, top: int = 10) -> dict[str, Any]:
    minutes = recent_minutes(now, PER_MINUTE_ENTRIES)
    recent = recent_minutes(now, REALTIME_MINUTES)
    pipe: Any = redis.pipeline(transaction=False)
    pipe.pfcount(*[visitors_key(site, m) for m in recent])
    pipe.mget([pageviews_key(site, m) for m in minutes])
    for minute in recent:
        pipe.zrange(pages_key(site, minute), 0, -1, withscores=True)
    visitors, per_minute, *page_lists = await pipe.execute()
    page_totals: dict[str, int] = {}
    for pages in page_lists:
        for page, score in pages:
            name = page.decode() if isinstance(page, bytes) else str(page)
            page_totals[name] = page_totals.get(name, 0) + int(score)
    top_pages = sorted(page_totals.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return {
        "visitors": int(visitors),
        "pageviews_per_minute": [
            [dt.datetime.fromtimestamp(m, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), int(v or 0)]
            for m, v in zip(minutes, per_minute, strict=True)
        ],
        "top_pages": [[page, count] for page, count in top_pages],
    }
