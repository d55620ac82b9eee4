"""Wall-clock helpers for tests of the running engine around UTC midnight.

The engine salts visitor ids per UTC day and `"day"` ranges end at midnight, so a test whose hits or
queries straddle one sees two visitors or misses a hit. CI runs at any hour; these keep such tests
on one side of midnight.
"""

from __future__ import annotations

import datetime as dt
import time

DAY = 86_400


def day_start(ts: float) -> float:
    return ts // DAY * DAY


def one_day_anchor(newest: float, span: float) -> float:
    """`newest` if it and `span` seconds before it fall in one UTC day; else the last second of the
    day before, so a back-dated pair of hits shares its day (and its visitor salt)."""
    start = day_start(newest)
    return newest if newest - span >= start else start - 1


def day_of(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date().isoformat()


def seconds_to_midnight(now: float | None = None) -> float:
    now = time.time() if now is None else now
    return day_start(now) + DAY - now


def clear_of_midnight(margin: float) -> None:
    """Sleep past UTC midnight if it is less than `margin` seconds away."""
    left = seconds_to_midnight()
    if left < margin:
        time.sleep(left + 1)
