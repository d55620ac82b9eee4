"""The test clock helpers keep back-dated hit pairs on one UTC day."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.clock import (
    DAY,
    HOUR,
    day_of,
    day_start,
    one_day_anchor,
    seconds_to_boundary,
    seconds_to_midnight,
)

TIMES = st.floats(min_value=1.6e9, max_value=2.1e9)
SPANS = st.floats(min_value=0, max_value=DAY - 2)


@given(newest=TIMES, span=SPANS)
def test_anchor_and_span_before_it_share_a_day(newest: float, span: float) -> None:
    anchor = one_day_anchor(newest, span)
    assert anchor <= newest
    assert day_of(anchor) == day_of(anchor - span)
    # Moved only when it had to be, and then to the day before's last second.
    assert anchor == newest or anchor == day_start(newest) - 1


def test_fixed_times() -> None:
    midnight = 1_795_824_000.0  # 2026-11-28T00:00:00Z
    assert day_of(midnight) == "2026-11-28"
    assert one_day_anchor(midnight + 300, 1200) == midnight - 1
    assert one_day_anchor(midnight + 3600, 1200) == midnight + 3600
    assert seconds_to_midnight(midnight - 90) == 90


@given(now=TIMES, period=st.sampled_from([HOUR, DAY]))
def test_boundary_is_ahead_within_one_period(now: float, period: int) -> None:
    left = seconds_to_boundary(period, now)
    assert 0 < left <= period
    boundary = now + left
    assert abs(boundary - round(boundary / period) * period) < 1e-3


def test_hour_boundary() -> None:
    midnight = 1_795_824_000.0
    assert seconds_to_boundary(HOUR, midnight + 3 * HOUR - 60) == 60
    assert seconds_to_boundary(HOUR, midnight) == HOUR
