"""SQL for ClickHouse: statement text written by the code, values bound as parameters.

Every value that comes from a request (site, filter values, property keys, timezone, the dates
and datetimes of the range, labels) reaches ClickHouse as a server-side bound parameter:
`Params` hands out a placeholder such as `{p0:String}` or `{p1:DateTime64(3, 'UTC')}` and
records the value, and the statement text holds only what the code itself wrote. ClickHouse
parses each value as its declared type, apart from the statement, so no value can end a literal
or change the statement around it. Both backends take the values the same way:
clickhouse-connect formats them once and hands them to chDB as query parameters, or to a
ClickHouse server as `param_<name>` fields of the HTTP request.

`string` and `string_list` write escaped literals, for the code's own constants only (event
names it defines, format strings); never for text from a request.

    params = Params()
    where = f"site = {params.string(site)} AND ts >= {params.datetime(start, precision=3)}"
    statement = params.statement(f"SELECT count() FROM events WHERE {where}")
    rows = store.query_sync(statement.sql, statement.params)
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import NamedTuple

# A value of a placeholder: a list binds an Array(String). (clickhouse-connect writes a Python
# list as an Array and a tuple as a Tuple.)
ParamValue = str | list[str]

_ESCAPES: dict[int, str] = {ord("\\"): "\\\\", ord("'"): "\\'"}
_ESCAPES.update({c: f"\\x{c:02X}" for c in (*range(0x20), 0x7F)})


def string(value: str) -> str:
    """A ClickHouse string literal for a constant of the code (not for request text)."""
    return "'" + _text(value).translate(_ESCAPES) + "'"


def string_list(values: Iterable[str]) -> str:
    """An array/tuple body of constants: `'a', 'b'` (no brackets)."""
    return ", ".join(string(v) for v in values)


class Statement(NamedTuple):
    """A statement and the values of the placeholders in its text."""

    sql: str
    params: dict[str, ParamValue]


class Params:
    """The bound values of the statements built from one set of conditions; pure.

    Each method records a value and returns its placeholder for the statement text. An equal
    value of the same type gets the same placeholder, so a value used twice is sent once."""

    def __init__(self) -> None:
        self._values: dict[str, ParamValue] = {}
        self._names: dict[tuple[str, str | tuple[str, ...]], str] = {}

    def string(self, value: str) -> str:
        return self._bind("String", _text(value))

    def strings(self, values: Iterable[str]) -> str:
        return self._bind("Array(String)", [_text(v) for v in values])

    def date(self, day: date) -> str:
        return self._bind("Date", day.isoformat())

    def datetime(self, moment: datetime, *, precision: int | None = None) -> str:
        """A UTC DateTime (or DateTime64 with `precision`) for an aware datetime."""
        if moment.tzinfo is None:
            raise ValueError("Params.datetime needs an aware datetime")
        utc = moment.astimezone(UTC)
        # Sent as text, parsed by the server as the placeholder's type: no client-side
        # timezone conversion (clickhouse-connect's rules for datetimes vary by version).
        text = utc.strftime("%Y-%m-%d %H:%M:%S")
        if precision is None:
            return self._bind("DateTime('UTC')", text)
        if utc.microsecond:
            text += f".{utc.microsecond:06d}"
        return self._bind(f"DateTime64({int(precision)}, 'UTC')", text)

    def statement(self, sql: str) -> Statement:
        """`sql` with the values of the placeholders it holds (the statements of one query
        share their conditions, and so their Params, but not every placeholder)."""
        used = {n: v for n, v in self._values.items() if f"{{{n}:" in sql}
        return Statement(sql, used)

    def _bind(self, ch_type: str, value: ParamValue) -> str:
        key = (ch_type, value if isinstance(value, str) else tuple(value))
        name = self._names.get(key)
        if name is None:
            name = self._names[key] = f"p{len(self._values)}"
            self._values[name] = value
        return f"{{{name}:{ch_type}}}"


def _text(value: str) -> str:
    value.encode("utf-8")  # a lone surrogate cannot be sent: fail here, loudly
    return value
