"""A result cache for the Stats API, exact by construction.

An answer is a pure function of the planned statements, text and bound values (the values hold
the site, the filters and the resolved date range, so relative ranges like `30d` change key when
the day does, though the text does not), and of the data the store holds. The key is (site,
statements with their values, the site's data version): the store writer bumps a site's
version after every batch it applied for that site, so an answer is never served after new
data for its site became visible. Only valid while this process is the only writer of the store
(embedded chDB: one process per directory); the caller decides.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

from engine.query.sql import Statement


class ResultCache:
    """LRU of rendered answers."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(
        site: str, statements: Sequence[Statement], version: Hashable, render: Hashable
    ) -> Hashable:
        """`render`: whatever besides the rows shapes the answer (the echoed query)."""
        return (site, tuple(_frozen(s) for s in statements), version, render)

    def get(self, key: Hashable) -> Any | None:
        if self.entries <= 0:
            return None
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Hashable, value: Any) -> None:
        if self.entries <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.entries:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def _frozen(statement: Statement) -> Hashable:
    """The text and every bound value, hashable (an Array value as a tuple)."""
    values = (
        (name, value if isinstance(value, str) else tuple(value))
        for name, value in sorted(statement.params.items())
    )
    return (statement.sql, tuple(values))
