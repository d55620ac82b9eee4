"""Wall-clock helpers for tests of the running engine around UTC midnight and hour boundaries.

The engine salts visitor ids per UTC day and `"day"` ranges end at midnight, so a test whose hits or
queries straddle one sees two visitors or misses a hit. Live hits are stamped by the server when
they arrive, so an oracle that buckets them by the time they were generated is wrong for the few
that arrive after the next hour begins. CI runs at any hour; these keep such tests on one side.
"""

from __future__ import annotations

import datetime as dt
import time

HOUR = 3_600
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


def seconds_to_boundary(period: float, now: float | None = None) -> float:
    """Seconds until the next multiple of `period` seconds since the epoch (an UTC hour or day)."""
    now = time.time() if now is None else now
    return now // period * period + period - now


def seconds_to_midnight(now: float | None = None) -> float:
    return seconds_to_boundary(DAY, now)


def clear_of_boundary(period: float, margin: float) -> None:
    """Sleep past the next `period` boundary if it is less than `margin` seconds away."""
    left = seconds_to_boundary(period)
    if left < margin:
        time.sleep(left + 1)


def clear_of_midnight(margin: float) -> None:
    clear_of_boundary(DAY, margin)
