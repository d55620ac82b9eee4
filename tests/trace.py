"""A generated trace of hits and the exact answers computed from it, independently of the engine.

The oracle knows each user agent's expected browser/OS/device and each address's country from
fixed tables written by hand, not from the engine's enrichment.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

# user agent -> (browser, browser_version, os, os_version, device)
USER_AGENTS: dict[str, tuple[str, str, str, str, str]] = {
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36": ("Chrome", "120.0", "Windows", "10", "Desktop"),
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.1 Mobile/15E148 Safari/604.1": ("Safari", "17.1", "iOS", "17.1", "Mobile"),
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0": (
        "Firefox",
        "121.0",
        "Linux",
        "",
        "Desktop",
    ),
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/16.6 Mobile/15E148 Safari/604.1": ("Safari", "16.6", "iOS", "16.6", "Tablet"),
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.144 Mobile Safari/537.36": ("Chrome", "120.0", "Android", "14", "Mobile"),
}
BOT_AGENTS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
]
# address -> ISO country
ADDRESSES: dict[str, str] = {
    "8.8.8.8": "US",
    "193.0.6.139": "NL",
    "81.2.69.160": "GB",
    "133.242.0.1": "JP",
    "200.160.2.3": "BR",
    "195.113.0.1": "CZ",
    "203.0.113.5": "",  # documentation range: no country
}
# referrer URL -> (source, referrer as shown)
REFERRERS: dict[str, tuple[str, str]] = {
    "": ("", ""),
    "https://www.google.com/": ("Google", "google.com"),
    "https://news.ycombinator.com/item?id=42": ("Hacker News", "news.ycombinator.com/item"),
    "https://t.co/abc": ("Twitter", "t.co/abc"),
    "https://blog.example.org/post/1?x=1": ("blog.example.org", "blog.example.org/post/1"),
}
PAGES = ["/", "/pricing", "/blog/hello", "/blog/world", "/docs/start", "/caf\u00e9"]
UTM_CAMPAIGNS = [None, ("newsletter", "email", "winter"), ("reddit", "social", "launch")]


@dataclass(frozen=True)
class TraceHit:
    site: str
    ts: float
    name: str
    page: str
    hostname: str
    ua: str
    ip: str
    referrer_url: str
    utm: tuple[str, str, str] | None
    props: dict[str, str]
    interactive: bool = True

    @property
    def url(self) -> str:
        url = f"https://{self.hostname}{quote(self.page)}"
        if self.utm:
            url += f"?utm_source={self.utm[0]}&utm_medium={self.utm[1]}&utm_campaign={self.utm[2]}"
        return url

    def body(self, domain: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "url": self.url, "domain": domain or self.site}
        if self.referrer_url:
            body["referrer"] = self.referrer_url
        if self.props:
            body["props"] = self.props
        if not self.interactive:
            body["interactive"] = False
        return body

    def import_line(self) -> dict[str, Any]:
        line = self.body()
        line.update(timestamp=self.ts, ip=self.ip, user_agent=self.ua)
        return line


@dataclass
class Trace:
    live: list[TraceHit] = field(default_factory=list)  # sent to /api/event now
    imported: list[TraceHit] = field(default_factory=list)  # sent to /api/import
    bots: list[TraceHit] = field(default_factory=list)
    unknown_site: list[TraceHit] = field(default_factory=list)

    @property
    def counted(self) -> list[TraceHit]:
        return [h for h in self.live + self.imported if h.name not in ("engagement", "pageleave")]


def generate(sites: list[str], now: float, live: int, imported: int, seed: int = 7) -> Trace:
    rng = random.Random(seed)
    trace = Trace()
    agents = list(USER_AGENTS)
    addresses = list(ADDRESSES)

    def hit(ts: float, site: str | None = None, ua: str | None = None) -> TraceHit:
        roll = rng.random()
        name = "pageview" if roll < 0.8 else ("Signup" if roll < 0.92 else "engagement")
        props = {"plan": rng.choice(["free", "pro"])} if name == "Signup" else {}
        site = site or rng.choice(sites)
        ua = ua or rng.choice(agents)
        ip = rng.choice(addresses)
        visitor_rng = random.Random(f"{ua}|{ip}")
        return TraceHit(
            site=site,
            ts=ts,
            name=name,
            page=rng.choice(PAGES),
            hostname=rng.choice([site, f"www.{site}", f"shop.{site}"]),
            ua=ua,
            ip=ip,
            # Visit attributes are the session's first hit's: keep them fixed per visitor so
            # the oracle does not depend on which concurrent request arrives first.
            referrer_url=list(REFERRERS)[visitor_rng.randrange(len(REFERRERS))],
            utm=UTM_CAMPAIGNS[visitor_rng.randrange(len(UTM_CAMPAIGNS))],
            props=props,
        )

    for _ in range(live):
        trace.live.append(hit(now))
    today = dt.datetime.fromtimestamp(now, dt.UTC).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    for _ in range(imported):
        # Whole days before today: each day gets its own salt, as in production.
        day = rng.randint(1, 5)
        ts = (today - dt.timedelta(days=day)).timestamp() + rng.randint(0, 86399)
        trace.imported.append(hit(float(ts)))
    for _ in range(max(5, live // 20)):
        trace.bots.append(hit(now, ua=rng.choice(BOT_AGENTS)))
    for _ in range(5):
        trace.unknown_site.append(hit(now, site="unknown-site.test"))
    return trace


# The oracle: dimension -> value of a hit as the API shows it.
def _source(h: TraceHit) -> str:
    if h.utm:
        return {"reddit": "Reddit"}.get(h.utm[0], h.utm[0])
    return REFERRERS[h.referrer_url][0]


DIMENSION_VALUE: dict[str, Callable[[TraceHit], str]] = {
    "event:page": lambda h: h.page,
    "event:name": lambda h: h.name,
    "event:hostname": lambda h: h.hostname.removeprefix("www."),
    "visit:source": _source,
    "visit:referrer": lambda h: REFERRERS[h.referrer_url][1],
    "visit:utm_source": lambda h: h.utm[0] if h.utm else "",
    "visit:utm_medium": lambda h: h.utm[1] if h.utm else "",
    "visit:utm_campaign": lambda h: h.utm[2] if h.utm else "",
    "visit:utm_content": lambda h: "",
    "visit:utm_term": lambda h: "",
    "visit:device": lambda h: USER_AGENTS[h.ua][4],
    "visit:browser": lambda h: USER_AGENTS[h.ua][0],
    "visit:browser_version": lambda h: USER_AGENTS[h.ua][1],
    "visit:os": lambda h: USER_AGENTS[h.ua][2],
    "visit:os_version": lambda h: USER_AGENTS[h.ua][3],
    "visit:country": lambda h: ADDRESSES[h.ip],
    "event:props:plan": lambda h: h.props.get("plan", ""),
}
EMPTY = {"visit:source": "Direct / None", "visit:referrer": "Direct / None"}


def shown(dimension: str, value: str) -> str:
    return value or EMPTY.get(dimension, "(not set)")


def visitor_key(h: TraceHit) -> tuple[str, str, str, str]:
    # One salt per UTC day: the same person on two days is two visitor ids.
    day = dt.datetime.fromtimestamp(h.ts, dt.UTC).date().isoformat()
    return (h.ua, h.ip, h.site, day)


def local_day(h: TraceHit, tz: str) -> str:
    return dt.datetime.fromtimestamp(h.ts, ZoneInfo(tz)).date().isoformat()


def breakdown(
    hits: Iterable[TraceHit], key: Callable[[TraceHit], Any]
) -> dict[Any, dict[str, float]]:
    groups: dict[Any, list[TraceHit]] = defaultdict(list)
    for h in hits:
        groups[key(h)].append(h)
    return {k: totals(v) for k, v in groups.items()}


def totals(hits: Iterable[TraceHit]) -> dict[str, float]:
    hits = list(hits)
    return {
        "visitors": len({visitor_key(h) for h in hits}),
        "pageviews": sum(1 for h in hits if h.name == "pageview"),
        "events": len(hits),
    }
