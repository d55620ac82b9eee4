"""Date ranges, time buckets and labels in several timezones (pure)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import QueryError
from engine.query.dates import (
    PERIODS,
    DateRange,
    DayLevel,
    day_cover,
    granularity,
    is_aligned,
    is_day_boundary,
    offsets_are_multiples,
    resolve_date_range,
    time_labels,
    zone,
)

UTC_Z = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")
NOW = datetime(2026, 11, 10, 12, 34, 56, tzinfo=UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def rng(raw: str | tuple[str, str], tz: ZoneInfo = UTC_Z, now: datetime = NOW) -> DateRange:
    return resolve_date_range(raw, tz, now, None)


@pytest.mark.parametrize(
    ("period", "start", "end"),
    [
        ("day", utc(2026, 11, 10), utc(2026, 11, 11)),
        ("24h", utc(2026, 11, 9, 12, 35), utc(2026, 11, 10, 12, 35)),
        ("30m", utc(2026, 11, 10, 12, 5), utc(2026, 11, 10, 12, 35)),
        ("realtime", utc(2026, 11, 10, 12, 30), utc(2026, 11, 10, 12, 35)),
        ("7d", utc(2026, 11, 3), utc(2026, 11, 10)),
        ("28d", utc(2026, 10, 13), utc(2026, 11, 10)),
        ("30d", utc(2026, 10, 11), utc(2026, 11, 10)),
        ("91d", utc(2026, 8, 11), utc(2026, 11, 10)),
        ("month", utc(2026, 11, 1), utc(2026, 12, 1)),
        ("year", utc(2026, 1, 1), utc(2027, 1, 1)),
        ("6mo", utc(2026, 5, 1), utc(2026, 11, 1)),
        ("12mo", utc(2025, 11, 1), utc(2026, 11, 1)),
        ("all", utc(2026, 11, 10), utc(2026, 11, 11)),
    ],
)
def test_periods_in_utc(period: str, start: datetime, end: datetime) -> None:
    dr = rng(period)
    assert (dr.start, dr.end) == (start, end)


def test_echo_form() -> None:
    assert rng("7d").echo() == ["2026-11-03T00:00:00+00:00", "2026-11-09T23:59:59+00:00"]
    assert rng("realtime").echo() == ["2026-11-10T12:30:00+00:00", "2026-11-10T12:34:59+00:00"]


def test_all_starts_on_the_first_day() -> None:
    dr = resolve_date_range("all", BERLIN, NOW, date(2025, 3, 1))
    assert dr.start == utc(2025, 2, 28, 23)
    assert dr.end == utc(2026, 11, 10, 23)
    # a first day in the future (clock skew) falls back to today
    dr = resolve_date_range("all", UTC_Z, NOW, date(2027, 1, 1))
    assert (dr.start, dr.end) == (utc(2026, 11, 10), utc(2026, 11, 11))


def test_berlin_across_the_autumn_change() -> None:
    now = utc(2026, 10, 26, 10)  # Monday after the change on Sunday 25 October
    dr = rng("7d", BERLIN, now)
    assert dr.start == utc(2026, 10, 18, 22)  # 19 Oct 00:00 +02:00
    assert dr.end == utc(2026, 10, 25, 23)  # 26 Oct 00:00 +01:00
    assert dr.echo() == ["2026-10-19T00:00:00+02:00", "2026-10-25T23:59:59+01:00"]
    day = rng("day", BERLIN, utc(2026, 10, 25, 12))
    assert day.end - day.start == timedelta(hours=25)
    labels = time_labels(day, "hour")
    assert len(labels) == 24  # 02:00 happens twice, one label
    assert labels[:4] == [
        "2026-10-25 00:00:00",
        "2026-10-25 01:00:00",
        "2026-10-25 02:00:00",
        "2026-10-25 03:00:00",
    ]
    assert labels[-1] == "2026-10-25 23:00:00"


def test_berlin_spring_day_has_23_hours() -> None:
    day = rng("day", BERLIN, utc(2026, 3, 29, 12))
    assert day.end - day.start == timedelta(hours=23)
    labels = time_labels(day, "hour")
    assert len(labels) == 23
    assert "2026-03-29 02:00:00" not in labels


def test_new_york_today_is_local() -> None:
    now = utc(2026, 11, 10, 3)  # 9 Nov 22:00 in New York
    dr = rng("day", NEW_YORK, now)
    assert (dr.start, dr.end) == (utc(2026, 11, 9, 5), utc(2026, 11, 10, 5))
    assert dr.echo() == ["2026-11-09T00:00:00-05:00", "2026-11-09T23:59:59-05:00"]
    month = rng("month", NEW_YORK, now)
    assert month.start == utc(2026, 11, 1, 4)  # 1 Nov 00:00 EDT, the change is at 02:00
    assert month.end == utc(2026, 12, 1, 5)


def test_kolkata_half_hour_offset() -> None:
    now = utc(2026, 11, 10, 20)  # 11 Nov 01:30 local
    dr = rng("day", KOLKATA, now)
    assert (dr.start, dr.end) == (utc(2026, 11, 10, 18, 30), utc(2026, 11, 11, 18, 30))
    assert dr.echo() == ["2026-11-11T00:00:00+05:30", "2026-11-11T23:59:59+05:30"]
    assert not is_aligned(dr.start, 3600)
    assert is_day_boundary(dr.start, KOLKATA)
    assert not offsets_are_multiples(KOLKATA, dr.start, dr.end, 3600)
    assert offsets_are_multiples(KOLKATA, dr.start, dr.end, 60)
    custom = rng(("2026-11-10T10:00:00Z", "2026-11-10T11:59:59Z"), KOLKATA)
    assert time_labels(custom, "hour") == [
        "2026-11-10 15:00:00",
        "2026-11-10 16:00:00",
        "2026-11-10 17:00:00",
    ]


def test_custom_dates_are_inclusive_local_days() -> None:
    dr = rng(("2026-01-01", "2026-01-31"), BERLIN)
    assert (dr.start, dr.end) == (utc(2025, 12, 31, 23), utc(2026, 1, 31, 23))
    assert dr.echo() == ["2026-01-01T00:00:00+01:00", "2026-01-31T23:59:59+01:00"]
    assert dr.custom_days == 31


def test_custom_datetimes_end_inclusive_to_the_second() -> None:
    dr = rng(("2026-01-01T10:00:00+02:00", "2026-01-01T11:59:59+02:00"), BERLIN)
    assert (dr.start, dr.end) == (utc(2026, 1, 1, 8), utc(2026, 1, 1, 10))
    assert dr.echo() == ["2026-01-01T09:00:00+01:00", "2026-01-01T10:59:59+01:00"]
    odd = rng(("2026-01-01T10:00:07Z", "2026-01-01T10:00:07.900Z"))
    assert (odd.start, odd.end) == (utc(2026, 1, 1, 10, 0, 7), utc(2026, 1, 1, 10, 0, 8))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("5d", "unknown period '5d'"),
        (("2026-02-01", "2026-01-01"), "first date is after"),
        (("2026-01-01", "2026-13-01"), "not dates"),
        (("2026-01-01T00:00:00", "2026-01-02T00:00:00"), "UTC offset"),
        (("2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z"), "start is after"),
        (("yesterday", "today"), "two dates or two ISO 8601"),
        (("1960-01-01", "1960-01-02"), "between"),
        (("2026-01-01", "2026-01-02T00:00:00Z"), "two dates or two ISO 8601"),
    ],
)
def test_bad_ranges(raw: str | tuple[str, str], message: str) -> None:
    with pytest.raises(QueryError) as err:
        rng(raw)
    assert message in str(err.value)


def test_unknown_timezone() -> None:
    with pytest.raises(QueryError, match="timezone"):
        zone("Mars/Olympus")


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        resolve_date_range("7d", UTC_Z, datetime(2026, 1, 1), None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("30m", "minute"),
        ("realtime", "minute"),
        ("day", "hour"),
        ("24h", "hour"),
        ("7d", "day"),
        ("28d", "day"),
        ("30d", "day"),
        ("91d", "day"),
        ("month", "day"),
        ("6mo", "month"),
        ("12mo", "month"),
        ("year", "month"),
        ("all", "month"),
        (("2026-01-01", "2026-01-01"), "hour"),
        (("2026-01-01", "2026-02-09"), "day"),
        (("2026-01-01", "2026-02-10"), "month"),
        (("2026-01-01T00:00:00Z", "2026-01-01T23:59:59Z"), "hour"),
        (("2026-01-01T00:00:00Z", "2026-01-20T00:00:00Z"), "day"),
        (("2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z"), "month"),
    ],
)
def test_time_resolves_from_the_range(raw: str | tuple[str, str], expected: str) -> None:
    assert granularity("time", rng(raw)) == expected


def test_explicit_granularity_and_bucket_limit() -> None:
    assert granularity("time:week", rng("7d")) == "week"
    assert granularity("time:minute", rng("7d")) == "minute"
    with pytest.raises(QueryError, match="coarser"):
        granularity("time:minute", rng("91d"))


def test_labels_week_month_minute() -> None:
    assert time_labels(rng("month"), "week") == [
        "2026-10-26",
        "2026-11-02",
        "2026-11-09",
        "2026-11-16",
        "2026-11-23",
        "2026-11-30",
    ]
    assert time_labels(rng("6mo"), "month") == [f"2026-{m:02d}-01" for m in range(5, 11)]
    assert time_labels(rng("realtime"), "minute") == [
        f"2026-11-10 12:{m}:00" for m in range(30, 35)
    ]
    assert len(time_labels(rng("24h"), "minute")) == 1440
    assert len(time_labels(rng("24h"), "hour")) == 25  # two partial hours at the edges
    assert time_labels(rng("7d", KOLKATA), "day")[0] == "2026-11-03"


TIMEZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]


@settings(max_examples=300, deadline=None)
@given(
    now=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1)),
    tz_name=st.sampled_from(TIMEZONES),
    period=st.sampled_from(PERIODS),
    first=st.one_of(st.none(), st.dates(min_value=date(1980, 1, 1), max_value=date(2090, 1, 1))),
)
def test_every_period_is_a_well_formed_range(
    now: datetime, tz_name: str, period: str, first: date | None
) -> None:
    tz = ZoneInfo(tz_name)
    dr = resolve_date_range(period, tz, now.replace(tzinfo=UTC), first)
    assert dr.start < dr.end
    assert dr.start.tzinfo is not None
    assert is_aligned(dr.start, 60)
    assert is_aligned(dr.end, 60)
    if period not in ("24h", "30m", "realtime"):
        assert is_day_boundary(dr.start, tz)
        assert is_day_boundary(dr.end, tz)
    start_echo, end_echo = dr.echo()
    assert datetime.fromisoformat(start_echo) == dr.start
    assert datetime.fromisoformat(end_echo) + timedelta(seconds=1) == dr.end
    # the echo form, given back as a custom range, means the same range
    again = resolve_date_range((start_echo, end_echo), tz, now.replace(tzinfo=UTC), None)
    assert (again.start, again.end) == (dr.start, dr.end)


@settings(max_examples=300)
@given(
    first=st.dates(min_value=date(2020, 1, 1), max_value=date(2030, 1, 1)),
    days=st.integers(min_value=0, max_value=800),
    levels=st.sampled_from(
        [(), ("week",), ("month",), ("month", "week"), ("quarter",), ("quarter", "month", "week")]
    ),
)
def test_day_cover_spans_every_date_once(
    first: date, days: int, levels: tuple[DayLevel, ...]
) -> None:
    end = first + timedelta(days=days)
    spans = day_cover(first, end, levels)
    covered: list[date] = []
    for level, a, b in spans:
        assert a < b
        assert level == "day" or level in levels
        if level == "week":
            assert a.weekday() == 0 and (b - a).days % 7 == 0
        if level == "month":
            assert a.day == 1 and b.day == 1
        if level == "quarter":
            assert a.day == b.day == 1 and a.month % 3 == b.month % 3 == 1
        covered += [a + timedelta(days=i) for i in range((b - a).days)]
    assert covered == [first + timedelta(days=i) for i in range(days)]
    # Days only at the edges: no whole week of the range is read day by day.
    for level, a, b in spans:
        if level == "day" and "week" in levels:
            monday = a + timedelta(days=(7 - a.weekday()) % 7)
            assert monday + timedelta(days=7) > b


def test_day_cover_of_a_year_and_of_thirty_days() -> None:
    assert day_cover(date(2026, 10, 28), date(2026, 11, 27)) == [
        ("day", date(2026, 10, 28), date(2026, 11, 2)),
        ("week", date(2026, 11, 2), date(2026, 11, 23)),
        ("day", date(2026, 11, 23), date(2026, 11, 27)),
    ]
    spans = day_cover(date(2025, 11, 27), date(2026, 11, 27))
    assert spans[1:4] == [
        ("month", date(2025, 12, 1), date(2026, 1, 1)),
        ("quarter", date(2026, 1, 1), date(2026, 10, 1)),
        ("month", date(2026, 10, 1), date(2026, 11, 1)),
    ]
    assert [level for level, _, _ in spans] == [
        "day",
        "month",
        "quarter",
        "month",
        "day",
        "week",
        "day",
    ]
    months = day_cover(date(2025, 11, 27), date(2026, 11, 27), ("month", "week"))
    assert [level for level, _, _ in months] == ["day", "month", "day", "week", "day"]
    assert day_cover(date(2026, 3, 4), date(2026, 3, 4)) == []
