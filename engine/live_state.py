"""Pure: the per-(site, minute) live state kept in the worker's RocksDB-backed table.

Counters (pageviews, per-page pageviews) and a unique-visitor sketch, plus the highest hits
offset applied, so a message replayed after a crash is not counted twice. Redis receives values
derived from this state (absolute counts, idempotent HLL adds), so Redis can be rebuilt from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine import codec
from engine.dimensions import SESSION_ONLY_EVENTS
from engine.hits import Hit
from engine.sketch import UniqueSketch

MAX_PAGES = 500  # per site-minute; the long tail is not "top pages"


@dataclass
class MinuteState:
    pageviews: int = 0
    pages: dict[str, int] = field(default_factory=dict)
    visitors: UniqueSketch = field(default_factory=UniqueSketch)
    applied_offset: int = -1

    def apply(self, hits: list[Hit], offset: int) -> list[str] | None:
        """Fold one hits message in; returns the visitor ids added, or None for a replay."""
        if offset <= self.applied_offset:
            return None
        self.applied_offset = offset
        vids = []
        for hit in hits:
            if hit["name"] in SESSION_ONLY_EVENTS:
                continue
            self.visitors.add(hit["vid"])
            vids.append(str(hit["vid"]))
            if hit["name"] == "pageview":
                self.pageviews += 1
                page = hit["page"]
                if page in self.pages or len(self.pages) < MAX_PAGES:
                    self.pages[page] = self.pages.get(page, 0) + 1
        return vids

    def to_bytes(self) -> bytes:
        body: Any = {
            "pv": self.pageviews,
            "pages": self.pages,
            "v": self.visitors.to_bytes(),
            "off": self.applied_offset,
        }
        return codec.pack(body)

    @classmethod
    def from_bytes(cls, data: bytes | None) -> MinuteState:
        if not data:
            return cls()
        body = codec.unpack(data)
        return cls(
            pageviews=int(body["pv"]),
            pages=dict(body["pages"]),
            visitors=UniqueSketch.from_bytes(body["v"]),
            applied_offset=int(body["off"]),
        )
