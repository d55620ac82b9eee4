"""Date ranges in the site's timezone, time buckets and their labels.

Pure: `now` is passed in (an aware datetime), never read from the clock. A range is a
half-open [start, end) of aware UTC datetimes; the echo form shows it in the site's offset
with the end inclusive to the second, as Plausible does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Final, Literal, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.errors import QueryError

Granularity: TypeAlias = Literal["minute", "hour", "day", "week", "month"]

LAST_N_DAYS: Final[dict[str, int]] = {"7d": 7, "28d": 28, "30d": 30, "91d": 91}
LAST_N_MONTHS: Final[dict[str, int]] = {"6mo": 6, "12mo": 12}
LAST_N_MINUTES: Final[dict[str, int]] = {"30m": 30, "realtime": 5}
PERIODS: Final[tuple[str, ...]] = (
    "day",
    "24h",
    *LAST_N_DAYS,
    "month",
    "year",
    *LAST_N_MONTHS,
    "all",
    *LAST_N_MINUTES,
)
CUSTOM: Final[str] = "custom"
MAX_DAY_BUCKET_DAYS: Final[int] = 40  # `time` reads by day up to this many days, then by month
MAX_TIME_BUCKETS: Final[int] = 100_000
MIN_DATE: Final[date] = date(1970, 1, 2)
MAX_DATE: Final[date] = date(2100, 12, 31)
_SECOND: Final[timedelta] = timedelta(seconds=1)
_MINUTE: Final[timedelta] = timedelta(minutes=1)
_BUCKET_SECONDS: Final[dict[str, int]] = {
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
    "month": 28 * 86400,
}


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise QueryError(f"unknown timezone {name!r}") from None


@dataclass(frozen=True)
class DateRange:
    start: datetime  # aware, UTC
    end: datetime  # aware, UTC, exclusive
    period: str  # a PERIODS name, or CUSTOM
    tz: ZoneInfo
    custom_days: int | None = None  # for a custom range of dates: how many local days

    def echo(self) -> list[str]:
        return [
            self.start.astimezone(self.tz).isoformat(),
            (self.end - _SECOND).astimezone(self.tz).isoformat(),
        ]

    @property
    def local_start_date(self) -> date:
        return self.start.astimezone(self.tz).date()

    @property
    def local_end_date(self) -> date:
        """The local date of `end` (exclusive when `end` is a day boundary)."""
        return self.end.astimezone(self.tz).date()


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The first instant of local `day`, in UTC (a midnight skipped by DST: the moment after)."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def is_day_boundary(moment: datetime, tz: ZoneInfo) -> bool:
    """True when `moment` (whole seconds) is the first second of its local date."""
    return (moment - _SECOND).astimezone(tz).date() != moment.astimezone(tz).date()


def is_aligned(moment: datetime, unit_seconds: int) -> bool:
    return moment.microsecond == 0 and int(moment.timestamp()) % unit_seconds == 0


def offsets_are_multiples(tz: ZoneInfo, start: datetime, end: datetime, unit_seconds: int) -> bool:
    """The site's UTC offset is a multiple of `unit_seconds` over [start, end) (daily samples)."""
    moment = start
    while True:
        offset = moment.astimezone(tz).utcoffset()
        if offset is None or int(offset.total_seconds()) % unit_seconds:
            return False
        if moment >= end - _SECOND:
            return True
        moment = min(moment + timedelta(days=1), end - _SECOND)


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def resolve_date_range(
    raw: str | tuple[str, str], tz: ZoneInfo, now: datetime, first_day: date | None
) -> DateRange:
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    now = now.astimezone(UTC)
    today = now.astimezone(tz).date()
    if isinstance(raw, tuple):
        return _custom(raw, tz)
    if raw == "day":
        return DateRange(
            local_midnight(today, tz), local_midnight(today + timedelta(days=1), tz), raw, tz
        )
    if raw in ("24h", *LAST_N_MINUTES):
        end = _floor_minute(now) + _MINUTE  # the current minute counts, as far as it has gone
        span = timedelta(hours=24) if raw == "24h" else timedelta(minutes=LAST_N_MINUTES[raw])
        return DateRange(end - span, end, raw, tz)
    if raw in LAST_N_DAYS:
        start_day = today - timedelta(days=LAST_N_DAYS[raw])
        return DateRange(local_midnight(start_day, tz), local_midnight(today, tz), raw, tz)
    if raw == "month":
        first = today.replace(day=1)
        return DateRange(
            local_midnight(first, tz), local_midnight(_add_months(first, 1), tz), raw, tz
        )
    if raw == "year":
        first = date(today.year, 1, 1)
        return DateRange(
            local_midnight(first, tz), local_midnight(date(today.year + 1, 1, 1), tz), raw, tz
        )
    if raw in LAST_N_MONTHS:
        this_month = today.replace(day=1)
        first = _add_months(this_month, -LAST_N_MONTHS[raw])
        return DateRange(local_midnight(first, tz), local_midnight(this_month, tz), raw, tz)
    if raw == "all":
        first = min(first_day or today, today)
        first = max(first, MIN_DATE)
        return DateRange(
            local_midnight(first, tz), local_midnight(today + timedelta(days=1), tz), raw, tz
        )
    raise QueryError(
        f"date_range: unknown period {raw!r}; use one of {', '.join(PERIODS)} "
        "or a list of two dates or datetimes"
    )


def _custom(raw: tuple[str, str], tz: ZoneInfo) -> DateRange:
    first, last = raw
    if len(first) == 10 and len(last) == 10:
        try:
            a, b = date.fromisoformat(first), date.fromisoformat(last)
        except ValueError:
            raise QueryError(f"date_range: {list(raw)!r} are not dates (YYYY-MM-DD)") from None
        if not (MIN_DATE <= a <= MAX_DATE and MIN_DATE <= b <= MAX_DATE):
            raise QueryError(f"date_range: dates must lie between {MIN_DATE} and {MAX_DATE}")
        if a > b:
            raise QueryError("date_range: the first date is after the last")
        return DateRange(
            local_midnight(a, tz),
            local_midnight(b + timedelta(days=1), tz),
            CUSTOM,
            tz,
            custom_days=(b - a).days + 1,
        )
    if len(first) == 10 or len(last) == 10:
        raise QueryError(
            f"date_range: {list(raw)!r} must be two dates or two ISO 8601 datetimes, "
            "not one of each"
        )
    try:
        a_dt, b_dt = datetime.fromisoformat(first), datetime.fromisoformat(last)
    except ValueError:
        raise QueryError(
            f"date_range: {list(raw)!r} must be two dates or two ISO 8601 datetimes"
        ) from None
    if a_dt.tzinfo is None or b_dt.tzinfo is None:
        raise QueryError("date_range: datetimes need a UTC offset (e.g. +00:00 or Z)")
    start = a_dt.astimezone(UTC).replace(microsecond=0)
    end = b_dt.astimezone(UTC).replace(microsecond=0) + _SECOND  # the last second counts
    if not (
        MIN_DATE <= start.date() <= MAX_DATE and MIN_DATE <= (end - _SECOND).date() <= MAX_DATE
    ):
        raise QueryError(f"date_range: datetimes must lie between {MIN_DATE} and {MAX_DATE}")
    if start >= end:
        raise QueryError("date_range: the start is after the end")
    return DateRange(start, end, CUSTOM, tz)


def granularity(dimension: str, dr: DateRange) -> Granularity:
    """The bucket of a time dimension; `time` picks one from the range."""
    explicit: dict[str, Granularity] = {
        "time:minute": "minute",
        "time:hour": "hour",
        "time:day": "day",
        "time:week": "week",
        "time:month": "month",
    }
    if dimension in explicit:
        gran = explicit[dimension]
    elif dr.period in LAST_N_MINUTES:
        gran = "minute"
    elif dr.period in ("day", "24h"):
        gran = "hour"
    elif dr.period in LAST_N_DAYS or dr.period == "month":
        gran = "day"
    elif dr.period in LAST_N_MONTHS or dr.period in ("year", "all"):
        gran = "month"
    else:  # custom
        if dr.custom_days is not None:
            days = dr.custom_days
            gran = "hour" if days <= 1 else "day" if days <= MAX_DAY_BUCKET_DAYS else "month"
        else:
            span = dr.end - dr.start
            gran = (
                "hour"
                if span <= timedelta(hours=24)
                else "day"
                if span <= timedelta(days=MAX_DAY_BUCKET_DAYS)
                else "month"
            )
    buckets = (dr.end - dr.start).total_seconds() / _BUCKET_SECONDS[gran]
    if buckets > MAX_TIME_BUCKETS:
        raise QueryError(
            f"dimension {dimension!r}: about {int(buckets)} {gran} buckets in this date_range, "
            f"more than {MAX_TIME_BUCKETS}; choose a coarser time dimension or a shorter range"
        )
    return gran


def label(local: datetime, gran: Granularity) -> str:
    """The label of the bucket holding `local` (a datetime in the site's timezone)."""
    if gran == "minute":
        return local.strftime("%Y-%m-%d %H:%M:00")
    if gran == "hour":
        return local.strftime("%Y-%m-%d %H:00:00")
    return day_label(local.date(), gran)


def day_label(day: date, gran: Granularity) -> str:
    if gran == "week":
        return (day - timedelta(days=day.weekday())).isoformat()
    if gran == "month":
        return day.replace(day=1).isoformat()
    return day.isoformat()


def time_labels(dr: DateRange, gran: Granularity) -> list[str]:
    """Every bucket label that [start, end) touches, in time order, each once."""
    labels: dict[str, None] = {}
    if gran in ("minute", "hour"):
        # Offsets are whole quarter hours, so a 15-minute step visits every local hour;
        # the last second is sampled too, for a partial last bucket.
        step = _MINUTE if gran == "minute" else timedelta(minutes=15)
        moment = dr.start
        while moment < dr.end:
            labels[label(moment.astimezone(dr.tz), gran)] = None
            moment += step
        labels[label((dr.end - _SECOND).astimezone(dr.tz), gran)] = None
        return list(labels)
    day = dr.local_start_date
    last = (dr.end - _SECOND).astimezone(dr.tz).date()
    while day <= last:
        labels[day_label(day, gran)] = None
        day += timedelta(days=1)
    return list(labels)


DayLevel: TypeAlias = Literal["day", "week", "month", "quarter"]
COARSE_DAY_LEVELS: Final[tuple[DayLevel, ...]] = ("quarter", "month", "week")


def day_cover(
    first: date, end: date, levels: tuple[DayLevel, ...] = COARSE_DAY_LEVELS
) -> list[tuple[DayLevel, date, date]]:
    """[first, end) of local dates as (level, first, end) spans: the whole calendar quarters
    inside it (when "quarter" is in `levels`), then the whole months inside what is left (when
    "month" is), then the whole weeks from Monday (when "week" is), then single days; in date
    order. Each date is in exactly one span."""
    spans: list[tuple[DayLevel, date, date]] = [("day", first, end)] if first < end else []
    for level in COARSE_DAY_LEVELS:
        if level not in levels:
            continue
        out: list[tuple[DayLevel, date, date]] = []
        for kind, a, b in spans:
            if kind != "day":
                out.append((kind, a, b))
                continue
            lo, hi = _whole_buckets(level, a, b)
            if lo >= hi:
                out.append((kind, a, b))
                continue
            if a < lo:
                out.append(("day", a, lo))
            out.append((level, lo, hi))
            if hi < b:
                out.append(("day", hi, b))
        spans = out
    return spans


def _whole_buckets(level: DayLevel, a: date, b: date) -> tuple[date, date]:
    """The first and end of the whole `level` buckets inside [a, b) (empty when lo >= hi)."""
    if level == "week":
        return a + timedelta(days=(7 - a.weekday()) % 7), b - timedelta(days=b.weekday())
    months = 3 if level == "quarter" else 1
    first_month = a if a.day == 1 else _add_months(a.replace(day=1), 1)
    lo = _add_months(first_month, -(first_month.month - 1) % months)  # onwards to a boundary
    end_month = b.replace(day=1)
    hi = _add_months(end_month, -((end_month.month - 1) % months))  # back to a boundary
    return lo, hi


MonthSpan: TypeAlias = Literal["prefix", "suffix"]
_DAY: Final[timedelta] = timedelta(days=1)


def month_span_cover(
    first: date, end: date, closed: date
) -> list[tuple[MonthSpan | None, date, date]]:
    """[first, end) of local dates as pieces in date order, using rollup_span's month spans of
    the days before `closed` (engine/store/spans.py) where one replaces two days or more: a
    suffix (from `first` to its month's end), a prefix (from the 1st of the last closed month
    in the range), and the stretches between (kind None) for the other levels. Empty when no
    span applies. A whole month is left to the month level."""
    pieces: list[tuple[MonthSpan | None, date, date]] = []
    cursor = first
    next_month = _add_months(first.replace(day=1), 1)
    if first.day != 1 and next_month <= min(end, closed) and next_month - first >= 2 * _DAY:
        pieces.append(("suffix", first, next_month))
        cursor = next_month
    closed_end = min(end, closed)
    if closed_end > cursor:
        month = (closed_end - _DAY).replace(day=1)
        whole = closed_end == _add_months(month, 1)
        if month >= cursor and closed_end - month >= 2 * _DAY and not whole:
            if cursor < month:
                pieces.append((None, cursor, month))
            pieces.append(("prefix", month, closed_end))
            cursor = closed_end
    if not pieces:
        return []
    if cursor < end:
        pieces.append((None, cursor, end))
    return pieces
