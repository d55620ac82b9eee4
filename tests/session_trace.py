"""A trace for sessions: visitors with sessions of one and many events over several hours
around a UTC midnight, gaps just under and just over 30 minutes, out-of-order hits; and an
independent sessionizer that computes the exact answers from it."""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from dataclasses import dataclass, field

from tests.trace import ADDRESSES, REFERRERS, USER_AGENTS, TraceHit

TIMEOUT = 30 * 60


@dataclass
class Session:
    hits: list[TraceHit] = field(default_factory=list)  # counted hits, in time order
    end: float = 0.0  # includes engagement

    @property
    def first(self) -> TraceHit:
        return self.hits[0]

    @property
    def start(self) -> float:
        return self.first.ts

    @property
    def pageviews(self) -> int:
        return sum(1 for h in self.hits if h.name == "pageview")

    @property
    def interactive(self) -> int:
        return sum(1 for h in self.hits if h.interactive)

    @property
    def bounce(self) -> bool:
        return self.interactive <= 1

    @property
    def duration(self) -> float:
        return 0.0 if self.bounce else self.end - self.start

    @property
    def exit_page(self) -> str:
        views = [h for h in self.hits if h.name == "pageview"]
        return (views[-1] if views else self.first).page


def sessionize(hits: list[TraceHit]) -> list[Session]:
    by_visitor: dict[tuple[str, str, str], list[TraceHit]] = defaultdict(list)
    for h in hits:
        by_visitor[(h.site, h.ua, h.ip)].append(h)
    sessions: list[Session] = []
    for visitor_hits in by_visitor.values():
        current: Session | None = None
        for h in sorted(visitor_hits, key=lambda h: h.ts):
            joins = current is not None and h.ts - current.end <= TIMEOUT
            if h.name in ("engagement", "pageleave"):
                if joins and current is not None:
                    current.end = h.ts
                continue
            if not joins or current is None:
                current = Session()
                sessions.append(current)
            current.hits.append(h)
            current.end = h.ts
    return sessions


def generate_sessions(site: str, midnight: float, until: float, seed: int = 11) -> list[TraceHit]:
    """Hits in file order (mostly time order, some swapped neighbours)."""
    rng = random.Random(seed)
    agents, addresses = list(USER_AGENTS), list(ADDRESSES)
    lines: list[TraceHit] = []
    for visitor in range(120):
        ua, ip = agents[visitor % len(agents)], addresses[(visitor // len(agents)) % len(addresses)]
        if (ua, ip) in {(h.ua, h.ip) for h in lines}:
            continue
        ts = midnight - rng.uniform(4 * 3600, 600)
        visitor_hits: list[TraceHit] = []
        for _session in range(rng.randint(1, 3)):
            referrer = list(REFERRERS)[rng.randrange(len(REFERRERS))]
            for position in range(rng.choice([1, 1, 2, 3, 5])):
                roll = rng.random()
                name = "pageview" if roll < 0.75 else ("Signup" if roll < 0.9 else "engagement")
                if position == 0 and name == "engagement":
                    name = "pageview"
                interactive = not (name == "Signup" and rng.random() < 0.5)
                visitor_hits.append(
                    TraceHit(site=site, ts=round(ts, 3), name=name,
                             page=rng.choice(["/", "/a", "/b", "/blog/x", "/pricing"]),
                             hostname=site, ua=ua, ip=ip, referrer_url=referrer, utm=None,
                             props={}, interactive=interactive)
                )  # fmt: skip
                ts += rng.choice([5.0, 60.0, 600.0, TIMEOUT - 1.0, TIMEOUT])
            ts += rng.choice([TIMEOUT + 1.0, TIMEOUT + 60.0, 3 * 3600.0])
        visitor_hits = [h for h in visitor_hits if h.ts <= until]
        # Out of order: swap a few neighbours that are less than 5 minutes apart.
        for i in range(len(visitor_hits) - 1):
            a, b = visitor_hits[i], visitor_hits[i + 1]
            both_same_day = _day(a.ts) == _day(b.ts)
            if b.ts - a.ts < 300 and both_same_day and rng.random() < 0.3:
                visitor_hits[i], visitor_hits[i + 1] = b, a
        lines.extend(visitor_hits)
    return lines


def _day(ts: float) -> dt.date:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date()
