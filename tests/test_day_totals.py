"""When a local day counts as closed (engine/store/day_totals.py): pure, fixed UTC times."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from engine.store.day_totals import closed_before

# Every UTC offset in use, from UTC-12 (Baker Island) to UTC+14 (Kiribati).
OFFSETS = [timedelta(minutes=m) for m in range(-12 * 60, 14 * 60 + 1, 15)]
GRACE = timedelta(hours=1)


def local_end(day: date, offset: timedelta) -> datetime:
    """When `day` ends at this UTC offset, in UTC."""
    midnight = datetime.combine(day + timedelta(days=1), datetime.min.time())
    return midnight.replace(tzinfo=timezone(offset)).astimezone(UTC)


def test_fixed_times() -> None:
    # Nov 9 ends at UTC-12 on Nov 10 at 12:00 UTC; an hour of grace: closed at 13:00.
    assert closed_before(datetime(2026, 11, 10, 12, 59, 59, tzinfo=UTC)) == date(2026, 11, 9)
    assert closed_before(datetime(2026, 11, 10, 13, 0, tzinfo=UTC)) == date(2026, 11, 10)
    # A zone-aware `now` means the same instant.
    berlin = timezone(timedelta(hours=1))
    assert closed_before(datetime(2026, 11, 10, 14, 0, tzinfo=berlin)) == date(2026, 11, 10)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)))
def test_closed_days_are_over_everywhere_and_the_next_is_not(naive: datetime) -> None:
    now = naive.replace(tzinfo=UTC)
    before = closed_before(now)
    last_closed = before - timedelta(days=1)
    assert all(local_end(last_closed, offset) + GRACE <= now for offset in OFFSETS)
    # The first day not closed is still going on (or in its grace hour) somewhere.
    assert any(local_end(before, offset) + GRACE > now for offset in OFFSETS)
