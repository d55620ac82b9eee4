"""Pure: Redis key names and time windows of the live counters."""

from __future__ import annotations

from typing import Final

VISITORS_TTL: Final[int] = 15 * 60
PAGEVIEWS_TTL: Final[int] = 65 * 60
PAGES_TTL: Final[int] = 15 * 60
# Hits older than this are not live news: they still reach ClickHouse, just not Redis.
LIVE_HORIZON: Final[int] = 60 * 60
REALTIME_MINUTES: Final[int] = 5
PER_MINUTE_ENTRIES: Final[int] = 30


def visitors_key(site: str, minute: int) -> str:
    return f"live:{{{site}}}:v:{minute}"


def pageviews_key(site: str, minute: int) -> str:
    return f"live:{{{site}}}:pv:{minute}"


def pages_key(site: str, minute: int) -> str:
    return f"live:{{{site}}}:pages:{minute}"


def state_key(site: str, minute: int) -> str:
    """The minute's live state (engine/live_state.py) the counters above derive from."""
    return f"live:{{{site}}}:state:{minute}"


def recent_minutes(now: float, count: int) -> list[int]:
    """The `count` minute buckets ending with the current one, oldest first."""
    current = int(now // 60) * 60
    return [current - 60 * i for i in range(count - 1, -1, -1)]
