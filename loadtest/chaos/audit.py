"""The chaos harness's audit: what ClickHouse and Redis hold against the driver's 202 tallies."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from loadtest.chaos.cluster import QUARANTINE_PAGE, iso, minute_from_label, minute_label, minute_of
from loadtest.chaos.traffic import StatsClient, Tally

# ---------------------------------------------------------------------------------------------
# Audit


def match_minutes(
    certain: Counter[int], ambiguous: Counter[tuple[int, int]], got: Counter[int]
) -> tuple[int, int, list[str]]:
    """Can `got` (per minute) be explained by the certain hits plus each ambiguous hit counted
    once in a minute of its [first, last] window? Earliest deadline first is optimal here.
    Returns (missing, surplus, mismatching minutes)."""
    minutes = set(certain) | set(got)
    for lo, hi in ambiguous:
        minutes.update(range(lo, hi + 60, 60))
    if not minutes:
        return 0, 0, []
    starts: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for (lo, hi), n in ambiguous.items():
        starts[lo].append((hi, n))
    pool: list[list[int]] = []  # heap of [deadline, count]
    missing = surplus = 0
    bad: list[str] = []
    for m in range(min(minutes), max(minutes) + 60, 60):
        for hi, n in starts.get(m, []):
            heapq.heappush(pool, [hi, n])
        need = got[m] - certain[m]
        m_missing = m_surplus = 0
        if need < 0:
            m_missing += -need
            need = 0
        while need and pool:
            take = min(need, pool[0][1])
            pool[0][1] -= take
            need -= take
            if not pool[0][1]:
                heapq.heappop(pool)
        m_surplus += need
        while pool and pool[0][0] <= m:
            m_missing += heapq.heappop(pool)[1]
        if m_missing or m_surplus:
            bad.append(
                f"{minute_label(m)}: got {got[m]}, 202s {certain[m]} certain"
                f" (+ straddling){f', missing {m_missing}' if m_missing else ''}"
                f"{f', surplus {m_surplus}' if m_surplus else ''}"
            )
        missing += m_missing
        surplus += m_surplus
    return missing, surplus, bad


@dataclass
class Audit:
    table: str
    counted: int = 0
    lost: int = 0  # answered 202, not counted (per site, page, kind and minute)
    double: int = 0  # counted more often than answered 202
    unknown_counted: int = 0  # quarantine hits counted beyond their 202s
    problems: list[str] = field(default_factory=list)
    tables_used: Counter[str] = field(default_factory=Counter)


def audit_counts(
    tally: Tally,
    results: dict[str, dict[tuple[int, str], tuple[int, int]]],
    table: str,
    tables_used: Counter[str],
) -> Audit:
    """`results[site][(minute, page)] = (pageviews, events)` against the driver's tallies."""
    audit = Audit(table, tables_used=tables_used)
    expected: dict[tuple[str, str, str], tuple[Counter[int], Counter[tuple[int, int]]]] = (
        defaultdict(lambda: (Counter(), Counter()))
    )
    unknown: Counter[tuple[str, str, str]] = Counter()
    for (site, page, kind, lo, hi), n in tally.acked.items():
        certain, ambiguous = expected[(site, page, kind)]
        if lo == hi:
            certain[lo] += n
        else:
            ambiguous[(lo, hi)] += n
    for (site, page, kind, _lo, _hi), n in tally.unknown.items():
        unknown[(site, page, kind)] += n
    got_series: dict[tuple[str, str, str], Counter[int]] = defaultdict(Counter)
    for site, rows in results.items():
        for (minute, page), (pageviews, events) in rows.items():
            got_series[(site, page, "pageview")][minute] += pageviews
            got_series[(site, page, "custom")][minute] += events - pageviews
    for key in sorted(set(expected) | set(got_series)):
        site, page, kind = key
        certain, ambiguous = expected[key]
        got = got_series[key]
        audit.counted += sum(got.values())
        acked = sum(certain.values()) + sum(ambiguous.values())
        total = sum(got.values())
        if unknown[key]:
            # Unknown outcomes: anywhere between the 202s and the 202s plus the unknowns.
            if total < acked:
                audit.lost += acked - total
                audit.problems.append(f"{table} {site} {page} {kind}: {total} < {acked} 202s")
            elif total > acked + unknown[key]:
                audit.double += total - acked - unknown[key]
                audit.problems.append(
                    f"{table} {site} {page} {kind}: {total} > {acked} 202s + {unknown[key]} unknown"
                )
            else:
                audit.unknown_counted += total - acked
            if page != QUARANTINE_PAGE:
                audit.problems.append(
                    f"note: {unknown[key]} unknown outcome(s) on exact page {site}{page}"
                )
            continue
        missing, surplus, bad = match_minutes(certain, ambiguous, got)
        audit.lost += missing
        audit.double += surplus
        for line in bad[:5]:
            audit.problems.append(f"{table} {site} {page} {kind} {line}")
    return audit


class Auditor:
    def __init__(self, stats: StatsClient, tally: Tally, sites: list[str]) -> None:
        self.stats = stats
        self.tally = tally
        self.sites = sites

    def range_for(self, table: str) -> list[str]:
        minutes = [c[3] for c in self.tally.acked] + [c[4] for c in self.tally.acked]
        minutes += [c[4] for c in self.tally.unknown]
        start, end = min(minutes) - 60, max(minutes) + 120
        if table == "events":
            # A range that is not minute-aligned: only the raw events table can answer it.
            return [iso(start - 1), iso(end - 1)]
        return [iso(start), iso(end - 1)]

    async def per_minute(
        self, table: str
    ) -> tuple[dict[str, dict[tuple[int, str], tuple[int, int]]], Counter[str]]:
        results: dict[str, dict[tuple[int, str], tuple[int, int]]] = {}
        used: Counter[str] = Counter()
        for site in self.sites:
            got = await self.stats.query(
                site,
                {
                    "metrics": ["pageviews", "events"],
                    "date_range": self.range_for(table),
                    "dimensions": ["time:minute", "event:page"],
                    "pagination": {"limit": 10000},
                },
            )
            used[got["meta"].get("table", "?")] += 1
            rows: dict[tuple[int, str], tuple[int, int]] = {}
            for row in got["results"]:
                label, page = row["dimensions"]
                rows[(minute_from_label(label), page)] = (row["metrics"][0], row["metrics"][1])
            results[site] = rows
        return results, used

    async def totals(self, table: str) -> dict[str, tuple[int, int]]:
        out = {}
        for site in self.sites:
            got = await self.stats.query(
                site, {"metrics": ["pageviews", "events"], "date_range": self.range_for(table)}
            )
            pageviews, events = got["results"][0]["metrics"]
            out[site] = (int(pageviews), int(events))
        return out

    def expected_totals(self) -> dict[str, tuple[int, int, int, int]]:
        """Per site: pageviews and events answered 202, and the unknown outcomes of each."""
        out: dict[str, list[int]] = {site: [0, 0, 0, 0] for site in self.sites}
        for (site, _page, kind, _lo, _hi), n in self.tally.acked.items():
            out[site][0] += n if kind == "pageview" else 0
            out[site][1] += n
        for (site, _page, kind, _lo, _hi), n in self.tally.unknown.items():
            out[site][2] += n if kind == "pageview" else 0
            out[site][3] += n
        return {site: (v[0], v[1], v[2], v[3]) for site, v in out.items()}

    async def wait_drained(self, timeout: float) -> tuple[float, bool]:
        """Poll until every site's totals lie in [202s, 202s + unknown] in both the rollups and
        the events table, or stop changing for 20 s."""
        started = time.monotonic()
        expected = self.expected_totals()
        last: Any = None
        last_change = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                now = (await self.totals("rollup_minute"), await self.totals("events"))
            except (httpx.HTTPError, RuntimeError):
                await asyncio.sleep(1.0)
                continue
            done = all(
                pv_ok and ev_ok
                for got in now
                for site, (pv, ev) in got.items()
                for pv_ok, ev_ok in [
                    (
                        expected[site][0] <= pv <= expected[site][0] + expected[site][2],
                        expected[site][1] <= ev <= expected[site][1] + expected[site][3],
                    )
                ]
            )
            if done:
                return time.monotonic() - started, True
            if now != last:
                last, last_change = now, time.monotonic()
            elif time.monotonic() - last_change > 20:
                return time.monotonic() - started, False
            await asyncio.sleep(1.0)
        return time.monotonic() - started, False

    async def consistency(self) -> list[str]:
        """The total rows (dim '') per minute equal the sum of the page rows."""
        problems = []
        for site in self.sites:
            got = await self.stats.query(
                site,
                {
                    "metrics": ["pageviews", "events"],
                    "date_range": self.range_for("rollup_minute"),
                    "dimensions": ["time:minute"],
                },
            )
            pages, _ = await self.per_minute_site(site)
            for row in got["results"]:
                minute = minute_from_label(row["dimensions"][0])
                if tuple(row["metrics"]) != pages.get(minute, (0, 0)):
                    problems.append(
                        f"{site} {row['dimensions'][0]}: total row {row['metrics']} "
                        f"!= sum of page rows {pages.get(minute)}"
                    )
        return problems

    async def per_minute_site(self, site: str) -> tuple[dict[int, tuple[int, int]], str]:
        got = await self.stats.query(
            site,
            {
                "metrics": ["pageviews", "events"],
                "date_range": self.range_for("rollup_minute"),
                "dimensions": ["time:minute", "event:page"],
                "pagination": {"limit": 10000},
            },
        )
        sums: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for row in got["results"]:
            minute = minute_from_label(row["dimensions"][0])
            sums[minute][0] += row["metrics"][0]
            sums[minute][1] += row["metrics"][1]
        return {m: (v[0], v[1]) for m, v in sums.items()}, got["meta"].get("table", "?")

    async def visitors(self) -> tuple[list[str], list[str]]:
        """Unique visitors per site over exact pages (within 1%, exact below 100)."""
        lines, problems = [], []
        for site in self.sites:
            excluded = [QUARANTINE_PAGE]
            got = await self.stats.query(
                site,
                {
                    "metrics": ["visitors"],
                    "date_range": self.range_for("rollup_minute"),
                    "filters": [["is_not", "event:page", excluded]],
                },
            )
            counted = int(got["results"][0]["metrics"][0])
            expected = len(self.tally.visitors[site])
            if expected < 100:
                ok = counted == expected
            else:
                ok = abs(counted - expected) <= 0.01 * expected
            error = (counted - expected) / expected * 100 if expected else 0.0
            line = (
                f"{site}: {counted} counted, {expected} expected ({error:+.2f}%, "
                f"{got['meta'].get('table')})"
            )
            lines.append(line)
            if not ok:
                problems.append("visitors " + line)
        return lines, problems


async def live_check(
    stats: StatsClient, tally: Tally, sites: list[str], since: float, load_end: float
) -> tuple[list[str], list[str]]:
    """The realtime endpoints answer, and Redis's pageviews over the whole minutes after Redis
    came back match the 202s. A live minute follows the broker's timestamp, which lies between
    the request's start and end, like the hit's own, so only requests straddling the window's
    edges (and unknown outcomes) may fall on either side: the sum must lie between the hits
    certainly inside the window and those plus the edge cases."""
    lines: list[str] = []
    problems: list[str] = []
    now = time.time()
    first = max(minute_of(since) + 60, minute_of(now) - 29 * 60)
    last = minute_of(load_end) - 60
    for site in sites:
        try:
            realtime = await stats.get("/api/v1/stats/realtime/visitors", site)
            live = await stats.get("/api/v1/stats/realtime/live", site)
        except (httpx.HTTPError, RuntimeError) as exc:
            problems.append(f"live {site}: {exc}")
            continue
        recent = sum(1 for t in tally.recent_visitors[site].values() if t >= now - 300)
        if not isinstance(realtime, int) or (recent and realtime <= 0):
            problems.append(f"live {site}: realtime visitors answered {realtime!r}")
        per_minute = {
            int(dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()): int(n)
            for ts, n in live["pageviews_per_minute"]
        }
        window = [m for m in range(first, last + 60, 60) if m in per_minute]
        if not window:
            lines.append(f"{site}: realtime visitors {realtime}; no whole minute to compare")
            continue
        lo_m, hi_m = window[0], window[-1]
        inside = edge = 0
        certain: Counter[int] = Counter()
        for counter, is_unknown in ((tally.acked, False), (tally.unknown, True)):
            for (cell_site, _page, kind, lo, hi), n in counter.items():
                if cell_site != site or kind != "pageview" or hi < lo_m or lo > hi_m:
                    continue
                if lo >= lo_m and hi <= hi_m and not is_unknown:
                    inside += n
                else:
                    edge += n
                if lo == hi and not is_unknown:
                    certain[lo] += n
        got = sum(per_minute[m] for m in window)
        for m in window:
            if certain[m] and not per_minute[m]:
                problems.append(f"live {site} {minute_label(m)}: 0 pageviews, {certain[m]} 202s")
        if not inside <= got <= inside + edge:
            problems.append(
                f"live {site}: {got} pageviews in {len(window)} whole minutes, 202s say "
                f"{inside}..{inside + edge}"
            )
        worst = max(abs(per_minute[m] - certain[m]) for m in window)
        lines.append(
            f"{site}: realtime visitors {realtime} (202'd visitors in the last 5 min: {recent}); "
            f"{len(window)} whole minutes after Redis came back: {got} pageviews, 202s "
            f"{inside}..{inside + edge}; largest per-minute gap {worst} (straddlers included)"
        )
    return lines, problems


async def scrape_metrics(port: int, prefixes: Iterable[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    except httpx.HTTPError:
        return out
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(tuple(prefixes)):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            if name.endswith("_created") or "_created{" in name:
                continue
            out[name] = float(value)
    return out
