"""One counter for everything refused or dropped at the edge, by endpoint and reason, so that
an operator (and the fuzz tests) can account for every request that did not become a hit."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter

from engine.errors import InputError

REJECTIONS: Final = Counter(
    "rollup_rejected_total",
    "Requests (import: lines) refused or events dropped, by endpoint and reason",
    ["endpoint", "reason"],
)

# The fields the parsers name; anything else is "other", to keep the label set closed.
KNOWN_FIELDS: Final[frozenset[str]] = frozenset(
    {"body", "user_agent", "name", "url", "domain", "referrer", "props", "interactive"}
    | {"revenue", "vitals", "timestamp", "ip"}
)


def reason_of(error: InputError) -> str:
    """`too_large` for 413, else `invalid_<first field at fault>` (the first one reported)."""
    if error.status == 413:
        return "too_large"
    field = next(iter(error.errors), "other")
    return f"invalid_{field if field in KNOWN_FIELDS else 'other'}"


def reject(endpoint: str, reason: str, count: int = 1) -> None:
    REJECTIONS.labels(endpoint, reason).inc(count)
