"""Filter trees to ClickHouse boolean expressions.

A condition compares the column behind its dimension; a value equal to the dimension's empty
label ("(not set)", "Direct / None") also matches the empty value. `is_not` and
`contains_not` are the negations of `is` and `contains`. `case_sensitive: false` compares
lower-cased UTF-8 text on both sides. Values are bound parameters (engine/query/sql.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from engine.dimensions import empty_label
from engine.query.model import And, Condition, Filter, Not, Or
from engine.query.sql import Params

_MAX_NEEDLES = 255  # ClickHouse's multiSearch* functions take at most 255 needles

# dimension -> SQL expression of its (String) value
ColumnOf = Callable[[str], str]


def compile_filters(filters: Sequence[Filter], column_of: ColumnOf, params: Params) -> str | None:
    """The AND of the top-level filters, or None when there are none."""
    if not filters:
        return None
    return join_sql("AND", [compile_filter(f, column_of, params) for f in filters])


def compile_filter(node: Filter, column_of: ColumnOf, params: Params) -> str:
    if isinstance(node, And):
        return join_sql("AND", [compile_filter(c, column_of, params) for c in node.children])
    if isinstance(node, Or):
        return join_sql("OR", [compile_filter(c, column_of, params) for c in node.children])
    if isinstance(node, Not):
        return f"NOT ({compile_filter(node.child, column_of, params)})"
    return condition_sql(node, column_of(node.dimension), params)


def join_sql(op: str, parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return "(" + f" {op} ".join(f"({p})" for p in parts) + ")"


def matches_empty(cond: Condition) -> bool:
    """True when one of the values is the dimension's empty label."""
    lab = empty_label(cond.dimension)
    if cond.case_sensitive:
        return lab in cond.values
    return lab.lower() in (v.lower() for v in cond.values)


def condition_sql(cond: Condition, column: str, params: Params) -> str:
    """One condition on the String expression `column`."""
    values = cond.values
    if cond.op in ("is", "is_not"):
        if cond.case_sensitive:
            positive = f"{column} IN {params.strings(values)}"
        else:
            # Lower-cased by ClickHouse on both sides: Python's lower() differs (e.g. 'İ').
            lowered = f"arrayMap(v -> lowerUTF8(v), {params.strings(values)})"
            positive = f"lowerUTF8({column}) IN {lowered}"
    elif "" in values:  # contains: every string contains "" (multiSearchAny says no for '')
        positive = "1"
    else:  # contains, contains_not
        fn = "multiSearchAny" if cond.case_sensitive else "multiSearchAnyCaseInsensitiveUTF8"
        chunks = [values[i : i + _MAX_NEEDLES] for i in range(0, len(values), _MAX_NEEDLES)]
        positive = " OR ".join(f"{fn}({column}, {params.strings(c)})" for c in chunks)
        if len(chunks) > 1:
            positive = f"({positive})"
    if matches_empty(cond):
        positive = f"({positive} OR {column} = '')"
    if cond.op in ("is_not", "contains_not"):
        return f"NOT ({positive})"
    return positive
