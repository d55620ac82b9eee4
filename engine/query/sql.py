"""SQL literals for ClickHouse: every value that reaches a statement goes through here.

Statements are built with literals (not bound parameters): a string literal escapes the
backslash and the quote, and writes every control character as a `\\xHH` escape, so that
no input can end the literal or change the statement around it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

_ESCAPES: dict[int, str] = {ord("\\"): "\\\\", ord("'"): "\\'"}
_ESCAPES.update({c: f"\\x{c:02X}" for c in (*range(0x20), 0x7F)})


def string(value: str) -> str:
    """A ClickHouse string literal for `value` (any Python str that encodes as UTF-8)."""
    value.encode("utf-8")  # a lone surrogate cannot be sent: fail here, loudly
    return "'" + value.translate(_ESCAPES) + "'"


def string_list(values: tuple[str, ...] | list[str]) -> str:
    """An array/tuple body: `'a', 'b'` (no brackets)."""
    return ", ".join(string(v) for v in values)


def date_literal(day: date) -> str:
    return f"toDate({string(day.isoformat())})"


def datetime_literal(moment: datetime, *, precision: int | None = None) -> str:
    """A UTC DateTime (or DateTime64 with `precision`) for an aware datetime."""
    if moment.tzinfo is None:
        raise ValueError("datetime_literal needs an aware datetime")
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%d %H:%M:%S")
    if precision is None:
        return f"toDateTime({string(text)}, 'UTC')"
    if utc.microsecond:
        text += f".{utc.microsecond:06d}"
    return f"toDateTime64({string(text)}, {int(precision)}, 'UTC')"
