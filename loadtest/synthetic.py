"""Deterministic synthetic hits, shaped like the ingest's output, for the worker benchmarks.

Skewed like real traffic: a few sites, pages, sources and countries take most hits. Each site's
visitors scale with its traffic: a visitor makes a few hits (HITS_PER_VISITOR on average) close
together, so a busy site has many visitors rather than a few that hit it thousands of times.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from engine.hits import Hit

PAGES = ["/", "/pricing", "/docs", "/blog", "/about", "/signup", "/login", "/contact"]
SOURCES = ["", "Google", "Bing", "Twitter", "Hacker News", "DuckDuckGo", "Reddit"]
COUNTRIES = ["US", "DE", "FR", "GB", "IN", "BR", "JP", "CA", "NL", "SE"]
DEVICES = [
    ("Desktop", "Chrome", "Windows"),
    ("Mobile", "Safari", "iOS"),
    ("Tablet", "Chrome", "Android"),
]


HITS_PER_VISITOR = 4
# Visitors of a site that are mid-visit at any time; each hit goes to one of them or a new one.
ACTIVE_VISITORS = 16


def _skewed(rng: random.Random, items: list[str], long_tail: int = 0) -> str:
    # Zipf-ish: index i with weight 1/(i+1); an optional long tail of generated names.
    if long_tail and rng.random() < 0.2:
        return f"{items[0]}tail/{rng.randrange(long_tail)}"
    r = rng.random() * sum(1 / (i + 1) for i in range(len(items)))
    for i, item in enumerate(items):
        r -= 1 / (i + 1)
        if r <= 0:
            return item
    return items[-1]


def site_names(count: int) -> list[str]:
    return [f"site{i}.bench.test" for i in range(count)]


def hits_stream(
    count: int, sites: list[str], start: float, seconds: float, seed: int = 7
) -> Iterator[Hit]:
    """`count` hits spread evenly over [start, start + seconds), in time order."""
    rng = random.Random(seed)
    active: dict[str, list[int]] = {}
    step = seconds / max(1, count)
    for i in range(count):
        site = sites[int(rng.paretovariate(1.2)) % len(sites)] if len(sites) > 1 else sites[0]
        visitors = active.setdefault(site, [])
        if not visitors or rng.random() < 1 / HITS_PER_VISITOR:
            vid = rng.getrandbits(48) + 1
            visitors.append(vid)
            if len(visitors) > ACTIVE_VISITORS:
                visitors.pop(0)
        else:
            vid = rng.choice(visitors)
        device, browser, os_name = DEVICES[vid % len(DEVICES)]
        source = _skewed(rng, SOURCES)
        yield Hit(
            ts=round(start + i * step, 3),
            site=site,
            tz="UTC",
            name="pageview" if rng.random() < 0.9 else "signup",
            vid=vid,
            vid_prev=0,
            hostname=site,
            page=_skewed(rng, PAGES, long_tail=200),
            referrer=f"https://{source.lower().replace(' ', '')}.com/" if source else "",
            source=source,
            utm_source="",
            utm_medium="",
            utm_campaign="",
            utm_content="",
            utm_term="",
            device=device,
            browser=browser,
            browser_version="120.0",
            os=os_name,
            os_version="",
            country=COUNTRIES[vid % len(COUNTRIES)],
            props={},
            interactive=True,
            revenue=None,
            vitals=None,
        )


def messages(hits: Iterator[Hit], per_message: int) -> Iterator[tuple[str, list[Hit]]]:
    """Group hits into Kafka messages keyed by site, as the ingest's group commit does."""
    pending: dict[str, list[Hit]] = {}
    for hit in hits:
        batch = pending.setdefault(hit["site"], [])
        batch.append(hit)
        if len(batch) >= per_message:
            yield hit["site"], pending.pop(hit["site"])
    yield from pending.items()
