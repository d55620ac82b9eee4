"""The typed Stats API v2 query, and the parser that validates a request body into it.

Pure: no clock, no I/O. Every error is a QueryError whose message names the field at fault.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from engine.dimensions import FIELD_OF, TIME_DIMENSIONS
from engine.errors import QueryError

# Metrics read from the events table or a rollup ("event metrics") and from the sessions table.
# Web vitals: the 75th percentile of each vital's samples (a DDSketch, within 0.5%); read
# where the event metrics are. metric -> the vital's column.
VITAL_METRICS: Final[dict[str, str]] = {
    "lcp_p75": "lcp",
    "inp_p75": "inp",
    "ttfb_p75": "ttfb",
    "fcp_p75": "fcp",
    "cls_p75": "cls",
}
EVENT_METRICS: Final[tuple[str, ...]] = (
    "visitors",
    "pageviews",
    "events",
    "percentage",
    *VITAL_METRICS,
)
SESSION_METRICS: Final[tuple[str, ...]] = (
    "visits",
    "bounce_rate",
    "visit_duration",
    "views_per_visit",
)
SUPPORTED_METRICS: Final[tuple[str, ...]] = EVENT_METRICS + SESSION_METRICS
PENDING_METRICS: Final[tuple[str, ...]] = ()
# Dimensions only the sessions table knows: API name -> its column there.
SESSION_DIMENSIONS: Final[dict[str, str]] = {
    "visit:entry_page": "entry_page",
    "visit:exit_page": "exit_page",
}
PENDING_DIMENSIONS: Final[tuple[str, ...]] = ()
PROPS_PREFIX: Final[str] = "event:props:"
FILTER_OPS: Final[tuple[str, ...]] = ("is", "is_not", "contains", "contains_not")
LOGICAL_OPS: Final[tuple[str, ...]] = ("and", "or", "not")
MAX_LIMIT: Final[int] = 10_000
MAX_FILTER_DEPTH: Final[int] = 12
MAX_FILTER_CONDITIONS: Final[int] = 200
MAX_PROP_KEY_BYTES: Final[int] = 300
MAX_VALUE_BYTES: Final[int] = 2_000

_BODY_KEYS: Final[frozenset[str]] = frozenset(
    {"site_id", "metrics", "date_range", "dimensions", "filters", "order_by", "include"}
    | {"pagination"}
)
_INCLUDE_KEYS: Final[frozenset[str]] = frozenset({"total_rows", "time_labels"})
_PAGINATION_KEYS: Final[frozenset[str]] = frozenset({"limit", "offset"})

Direction: TypeAlias = Literal["asc", "desc"]


@dataclass(frozen=True)
class Condition:
    """`[op, dimension, values]`: op in FILTER_OPS; dimension a FIELD_OF or SESSION_DIMENSIONS
    key, or event:props:*."""

    op: str
    dimension: str
    values: tuple[str, ...]
    case_sensitive: bool = True


@dataclass(frozen=True)
class And:
    children: tuple[Filter, ...]


@dataclass(frozen=True)
class Or:
    children: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    child: Filter


Filter: TypeAlias = Condition | And | Or | Not


@dataclass(frozen=True)
class Query:
    site_id: str
    metrics: tuple[str, ...]
    date_range: str | tuple[str, str]
    dimensions: tuple[str, ...]
    filters: tuple[Filter, ...]  # top level: all must hold
    order_by: tuple[tuple[str, Direction], ...] | None  # None: the default order
    total_rows: bool
    time_labels: bool
    limit: int
    offset: int
    include: dict[str, bool]  # as given, for the echo
    filters_echo: list[Any]  # as given (validated), for the echo

    @property
    def time_dimension(self) -> str | None:
        return next((d for d in self.dimensions if d in TIME_DIMENSIONS), None)

    @property
    def plain_dimensions(self) -> tuple[str, ...]:
        return tuple(d for d in self.dimensions if d not in TIME_DIMENSIONS)


def is_props(dimension: str) -> bool:
    return dimension.startswith(PROPS_PREFIX)


def prop_key(dimension: str) -> str:
    return dimension[len(PROPS_PREFIX) :]


def is_event_dimension(dimension: str) -> bool:
    """event:page, event:name, event:hostname, event:props:* (a session holds a set of each)."""
    return dimension.startswith("event:")


def filter_dimensions(filters: Sequence[Filter]) -> set[str]:
    """Every dimension a filter tree mentions."""
    found: set[str] = set()
    stack: list[Filter] = list(filters)
    while stack:
        node = stack.pop()
        if isinstance(node, Condition):
            found.add(node.dimension)
        elif isinstance(node, Not):
            stack.append(node.child)
        else:
            stack.extend(node.children)
    return found


# --- parsing -------------------------------------------------------------------------------


def parse_query(body: Mapping[str, Any]) -> Query:
    if not isinstance(body, Mapping):
        raise QueryError("the query must be a JSON object")
    unknown = sorted(str(k) for k in body if k not in _BODY_KEYS)
    if unknown:
        raise QueryError(f"unknown key(s) in query: {', '.join(unknown)}")
    site_id = body.get("site_id")
    if not isinstance(site_id, str) or not site_id:
        raise QueryError("site_id: required, a non-empty string")
    metrics = _parse_metrics(body.get("metrics"))
    date_range = _parse_date_range_shape(body.get("date_range"))
    dimensions = _parse_dimensions(body.get("dimensions", []))
    filters_raw = body.get("filters", [])
    if not isinstance(filters_raw, list):
        raise QueryError("filters: must be a list of filters")
    counter = [0]
    filters = tuple(
        _parse_filter(f, f"filters[{i}]", 1, counter) for i, f in enumerate(filters_raw)
    )
    include, total_rows, time_labels = _parse_include(body.get("include", {}))
    limit, offset = _parse_pagination(body.get("pagination", {}))
    order_by = _parse_order_by(body.get("order_by"), metrics, dimensions)

    if "percentage" in metrics and not any(d not in TIME_DIMENSIONS for d in dimensions):
        raise QueryError("metric percentage: needs a non-time dimension")
    vitals = [m for m in metrics if m in VITAL_METRICS]
    session_dims = [
        d for d in (*dimensions, *filter_dimensions(filters)) if d in SESSION_DIMENSIONS
    ]
    if vitals and session_dims:
        # Only the sessions table knows entry and exit pages, and it holds no vitals.
        raise QueryError(f"metric {vitals[0]}: cannot be combined with {session_dims[0]}")
    if time_labels and not any(d in TIME_DIMENSIONS for d in dimensions):
        raise QueryError("include.time_labels: needs a time dimension")
    return Query(
        site_id=site_id,
        metrics=metrics,
        date_range=date_range,
        dimensions=dimensions,
        filters=filters,
        order_by=order_by,
        total_rows=total_rows,
        time_labels=time_labels,
        limit=limit,
        offset=offset,
        include=include,
        filters_echo=[_echo_filter(f) for f in filters_raw],
    )


def _parse_metrics(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        raise QueryError("metrics: required, a non-empty list of metric names")
    seen: list[str] = []
    for i, m in enumerate(raw):
        if not isinstance(m, str):
            raise QueryError(f"metrics[{i}]: must be a string")
        if m in PENDING_METRICS:
            raise QueryError(f"metric {m!r} is not supported yet")
        if m not in SUPPORTED_METRICS:
            raise QueryError(f"unknown metric {m!r}")
        if m in seen:
            raise QueryError(f"metrics: {m!r} is listed twice")
        seen.append(m)
    return tuple(seen)


def _parse_date_range_shape(raw: Any) -> str | tuple[str, str]:
    """Shape only; dates.resolve_date_range gives it meaning."""
    if isinstance(raw, str) and raw:
        return raw
    if isinstance(raw, list) and len(raw) == 2 and all(isinstance(x, str) and x for x in raw):
        return (raw[0], raw[1])
    raise QueryError(
        "date_range: required, a period name (e.g. '7d') or a list of two dates or datetimes"
    )


def check_dimension(name: Any, where: str, *, allow_time: bool) -> str:
    if not isinstance(name, str):
        raise QueryError(f"{where}: must be a string")
    if name in PENDING_DIMENSIONS:
        raise QueryError(f"dimension {name!r} is not supported yet")
    if name in FIELD_OF or name in SESSION_DIMENSIONS:
        return name
    if name in TIME_DIMENSIONS:
        if not allow_time:
            raise QueryError(f"{where}: cannot filter on {name!r}; use date_range")
        return name
    if is_props(name):
        key = prop_key(name)
        if not key:
            raise QueryError(f"{where}: {name!r} needs a property name after 'event:props:'")
        _check_text(key, where, MAX_PROP_KEY_BYTES)
        return name
    raise QueryError(f"unknown dimension {name!r}")


def _parse_dimensions(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise QueryError("dimensions: must be a list of dimension names")
    dims: list[str] = []
    for i, d in enumerate(raw):
        name = check_dimension(d, f"dimensions[{i}]", allow_time=True)
        if name in dims:
            raise QueryError(f"dimensions: {name!r} is listed twice")
        dims.append(name)
    if sum(1 for d in dims if d in TIME_DIMENSIONS) > 1:
        raise QueryError("dimensions: at most one time dimension")
    return tuple(dims)


def _check_text(value: str, where: str, max_bytes: int) -> None:
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise QueryError(f"{where}: not valid Unicode text") from None
    if size > max_bytes:
        raise QueryError(f"{where}: longer than {max_bytes} bytes")


def _parse_filter(raw: Any, where: str, depth: int, counter: list[int]) -> Filter:
    if depth > MAX_FILTER_DEPTH:
        raise QueryError(f"{where}: filters nested deeper than {MAX_FILTER_DEPTH} levels")
    if not isinstance(raw, list) or not raw or not isinstance(raw[0], str):
        raise QueryError(f"{where}: a filter is a list starting with an operator")
    op = raw[0]
    if op in ("and", "or"):
        if len(raw) != 2 or not isinstance(raw[1], list) or not raw[1]:
            raise QueryError(f"{where}: [{op!r}, [filters...]] needs a non-empty list")
        children = tuple(
            _parse_filter(c, f"{where}[1][{i}]", depth + 1, counter) for i, c in enumerate(raw[1])
        )
        return And(children) if op == "and" else Or(children)
    if op == "not":
        if len(raw) != 2:
            raise QueryError(f"{where}: ['not', filter] takes exactly one filter")
        return Not(_parse_filter(raw[1], f"{where}[1]", depth + 1, counter))
    if op not in FILTER_OPS:
        raise QueryError(f"{where}: unknown filter operator {op!r}")
    if len(raw) not in (3, 4):
        raise QueryError(f"{where}: [{op!r}, dimension, [values...]] (plus optional modifiers)")
    dimension = check_dimension(raw[1], f"{where}[1]", allow_time=False)
    values_raw = raw[2]
    if not isinstance(values_raw, list) or not values_raw:
        raise QueryError(f"{where}[2]: a non-empty list of values")
    values: list[str] = []
    for i, v in enumerate(values_raw):
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise QueryError(f"{where}[2][{i}]: must be a string")
        text = str(v)
        _check_text(text, f"{where}[2][{i}]", MAX_VALUE_BYTES)
        values.append(text)
    case_sensitive = True
    if len(raw) == 4:
        mods = raw[3]
        if not isinstance(mods, dict) or any(k != "case_sensitive" for k in mods):
            raise QueryError(f"{where}[3]: modifiers may only hold 'case_sensitive'")
        cs = mods.get("case_sensitive", True)
        if not isinstance(cs, bool):
            raise QueryError(f"{where}[3]: case_sensitive must be true or false")
        case_sensitive = cs
    counter[0] += 1
    if counter[0] > MAX_FILTER_CONDITIONS:
        raise QueryError(f"filters: more than {MAX_FILTER_CONDITIONS} conditions")
    return Condition(op, dimension, tuple(values), case_sensitive)


def _echo_filter(raw: Any) -> Any:
    """The validated filter as JSON (lists copied, integer values kept as given)."""
    if isinstance(raw, list):
        return [_echo_filter(x) for x in raw]
    if isinstance(raw, dict):
        return dict(raw)
    return raw


def _parse_include(raw: Any) -> tuple[dict[str, bool], bool, bool]:
    if not isinstance(raw, dict):
        raise QueryError("include: must be an object")
    unknown = sorted(str(k) for k in raw if k not in _INCLUDE_KEYS)
    if unknown:
        raise QueryError(f"include: unknown option(s) {', '.join(unknown)}")
    for k, v in raw.items():
        if not isinstance(v, bool):
            raise QueryError(f"include.{k}: must be true or false")
    return dict(raw), bool(raw.get("total_rows", False)), bool(raw.get("time_labels", False))


def _parse_pagination(raw: Any) -> tuple[int, int]:
    if not isinstance(raw, dict):
        raise QueryError("pagination: must be an object")
    unknown = sorted(str(k) for k in raw if k not in _PAGINATION_KEYS)
    if unknown:
        raise QueryError(f"pagination: unknown option(s) {', '.join(unknown)}")
    limit = raw.get("limit", MAX_LIMIT)
    offset = raw.get("offset", 0)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"pagination.limit: an integer from 1 to {MAX_LIMIT}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise QueryError("pagination.offset: an integer of at least 0")
    return limit, offset


def _parse_order_by(
    raw: Any, metrics: tuple[str, ...], dimensions: tuple[str, ...]
) -> tuple[tuple[str, Direction], ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise QueryError("order_by: a non-empty list of [metric or dimension, 'asc' | 'desc']")
    out: list[tuple[str, Direction]] = []
    for i, item in enumerate(raw):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise QueryError(f"order_by[{i}]: must be [metric or dimension, 'asc' | 'desc']")
        name, direction = item
        if name not in metrics and name not in dimensions:
            raise QueryError(
                f"order_by[{i}]: {name!r} is not one of the query's metrics or dimensions"
            )
        if direction not in ("asc", "desc"):
            raise QueryError(f"order_by[{i}]: direction must be 'asc' or 'desc'")
        if any(name == n for n, _ in out):
            raise QueryError(f"order_by: {name!r} is listed twice")
        out.append((name, "asc" if direction == "asc" else "desc"))
    return tuple(out)
