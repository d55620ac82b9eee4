"""The dimensions the engine knows: API names, the hit field behind each, what is rolled up."""

from __future__ import annotations

from typing import Final

# API dimension -> field of an enriched hit (and column of the events table).
EVENT_DIMENSIONS: Final[dict[str, str]] = {
    "event:page": "page",
    "event:name": "name",
    "event:hostname": "hostname",
}
VISIT_DIMENSIONS: Final[dict[str, str]] = {
    "visit:source": "source",
    "visit:referrer": "referrer",
    "visit:utm_source": "utm_source",
    "visit:utm_medium": "utm_medium",
    "visit:utm_campaign": "utm_campaign",
    "visit:utm_content": "utm_content",
    "visit:utm_term": "utm_term",
    "visit:device": "device",
    "visit:browser": "browser",
    "visit:browser_version": "browser_version",
    "visit:os": "os",
    "visit:os_version": "os_version",
    "visit:country": "country",
}
FIELD_OF: Final[dict[str, str]] = {**EVENT_DIMENSIONS, **VISIT_DIMENSIONS}

# Every dimension above is rolled up (one rollup row per value per minute); `TOTAL` is the
# dimension name of the per-site totals row.
ROLLUP_DIMENSIONS: Final[tuple[str, ...]] = tuple(FIELD_OF)
TOTAL: Final[str] = ""

TIME_DIMENSIONS: Final[tuple[str, ...]] = (
    "time",
    "time:minute",
    "time:hour",
    "time:day",
    "time:week",
    "time:month",
)

# Events that only extend a live session: not counted as events, pageviews or visitors.
SESSION_ONLY_EVENTS: Final[frozenset[str]] = frozenset({"engagement", "pageleave"})

NOT_SET: Final[str] = "(not set)"
DIRECT: Final[str] = "Direct / None"
EMPTY_LABEL: Final[dict[str, str]] = {"visit:source": DIRECT, "visit:referrer": DIRECT}


def empty_label(dimension: str) -> str:
    return EMPTY_LABEL.get(dimension, NOT_SET)
