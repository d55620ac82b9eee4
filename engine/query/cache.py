"""A result cache for the Stats API, exact by construction.

An answer is a pure function of the planned statements (which already hold the resolved date
range, so relative ranges like `30d` change key when the day does) and of the data the store
holds. The key is (site, statements, the site's data version): the store writer bumps a site's
version after every batch it applied for that site, so an answer is never served after new
data for its site became visible. Only valid while this process is the only writer of the store
(embedded chDB: one process per directory); the caller decides.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class ResultCache:
    """LRU of rendered answers."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(site: str, statements: list[str], version: Hashable, render: Hashable) -> Hashable:
        """`render`: whatever besides the rows shapes the answer (the echoed query)."""
        return (site, tuple(statements), version, render)

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
