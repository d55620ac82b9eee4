"""Test helpers for engine.query: generated hits, a chDB store holding them, a Python oracle.

The oracle is written independently of the planner: it filters, groups, labels and sorts the
generated hits in plain Python, from the raw JSON filters of the request body.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from engine.dimensions import FIELD_OF, SESSION_ONLY_EVENTS, empty_label
from engine.query import QueryPlan, plan_query
from engine.store.schema import ddl

NOW = datetime(2026, 11, 10, 12, 34, 56, tzinfo=UTC)
BIG_SITE = "big.test"  # many distinct visitors: uniqCombined64 is approximate there

SITES: dict[str, str] = {
    "utc.test": "UTC",
    "berlin.test": "Europe/Berlin",
    "ny.test": "America/New_York",
    "kolkata.test": "Asia/Kolkata",
}
TIMEZONE_OF: dict[str, str] = {**SITES, BIG_SITE: "Europe/Berlin"}

EVENT_COLUMNS = [
    "site",
    "ts",
    "name",
    "vid",
    "hostname",
    "page",
    "referrer",
    "source",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_content",
    "utm_term",
    "device",
    "browser",
    "browser_version",
    "os",
    "os_version",
    "country",
    "props",
    "interactive",
    "src_partition",
    "src_offset",
]
ROLLUP_LOG_COLUMNS = [
    "site",
    "minute",
    "tz_offset",
    "dim",
    "value",
    "pageviews",
    "events",
    "hashes",
    "src_partition",
    "src_offset",
]

CHOICES: dict[str, list[str]] = {
    "hostname": ["", "www.example", "blog.example"],
    "page": ["/", "/blog", "/blog/it's", "/Blog/Post\\2", "/line\nbreak", "/pricing", ""],
    "referrer": ["", "https://news.example/a", "https://t.co/x"],
    "source": ["", "Google", "Twitter", "Newsletter"],
    "utm_source": ["", "news", "ads"],
    "utm_medium": ["", "email", "cpc"],
    "utm_campaign": ["", "spring", "fall 'sale'"],
    "utm_content": ["", "banner"],
    "utm_term": ["", "shoes"],
    "device": ["", "Desktop", "Mobile", "Tablet"],
    "browser": ["", "Chrome", "Firefox", "Safari"],
    "browser_version": ["", "120.0", "121.1"],
    "os": ["", "Windows", "macOS", "Android"],
    "os_version": ["", "10", "14.2"],
    "country": ["", "DE", "US", "IN", "FR"],
}
NAMES = ["pageview"] * 14 + ["signup", "signup", "click", "engagement", "engagement", "pageleave"]
PROPS = [{}, {}, {"plan": "free"}, {"plan": "Pro"}, {"plan": "pro", "author": "o'neil"}]


@dataclass
class Hit:
    site: str
    ts: datetime  # aware UTC
    name: str
    vid: int
    fields: dict[str, str]
    props: dict[str, str] = field(default_factory=dict)

    def value(self, dimension: str) -> str:
        if dimension.startswith("event:props:"):
            return self.props.get(dimension[len("event:props:") :], "")
        return self.name if dimension == "event:name" else self.fields[FIELD_OF[dimension]]

    @property
    def counted(self) -> bool:
        return self.name not in SESSION_ONLY_EVENTS


def generate_hits(seed: int = 7, per_site: int = 1500) -> list[Hit]:
    """Hits over the 15 months before NOW, denser in the last two days and last 30 minutes."""
    rng = random.Random(seed)
    hits: list[Hit] = []
    for site in SITES:
        visitors = [rng.getrandbits(64) for _ in range(120)]
        for _ in range(per_site):
            r = rng.random()
            if r < 0.06:  # around Berlin's and New York's autumn clock changes
                base = rng.choice(
                    [datetime(2026, 10, 25, 2, tzinfo=UTC), datetime(2026, 11, 1, 6, tzinfo=UTC)]
                )
                ago = NOW - base + timedelta(seconds=rng.uniform(-7200, 7200))
            elif r < 0.1:
                ago = timedelta(seconds=rng.uniform(0, 1800))
            elif r < 0.5:
                ago = timedelta(seconds=rng.uniform(0, 2 * 86400))
            elif r < 0.75:
                ago = timedelta(seconds=rng.uniform(0, 40 * 86400))
            else:
                ago = timedelta(seconds=rng.uniform(0, 450 * 86400))
            ts = (NOW - ago).replace(microsecond=rng.randrange(0, 1000) * 1000)
            fields = {col: rng.choice(options) for col, options in CHOICES.items()}
            hits.append(
                Hit(
                    site=site,
                    ts=ts,
                    name=rng.choice(NAMES),
                    vid=rng.choice(visitors),
                    fields=fields,
                    props=dict(rng.choice(PROPS)),
                )
            )
    return hits


def generate_big_site(seed: int = 11, count: int = 30_000) -> list[Hit]:
    """One pageview per distinct visitor, 9 Nov 2026 10:00-12:00 UTC, few distinct values."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 9, 10, tzinfo=UTC)
    hits = []
    for _ in range(count):
        fields = {col: options[0] for col, options in CHOICES.items()}
        fields["country"] = rng.choice(["DE", "US", "IN"])
        fields["page"] = rng.choice(["/", "/blog"])
        ts = start + timedelta(seconds=rng.uniform(0, 7200))
        hits.append(Hit(BIG_SITE, ts, "pageview", rng.getrandbits(64), fields))
    return hits


def event_rows(hits: Iterable[Hit]) -> list[list[Any]]:
    rows = []
    for i, h in enumerate(hits):
        f = h.fields
        rows.append(
            [
                h.site,
                h.ts,
                h.name,
                h.vid,
                *(f[c] for c in EVENT_COLUMNS[4:19]),
                h.props,
                1,
                0,
                i,
            ]
        )
    return rows


def rollup_log_rows(hits: Iterable[Hit]) -> list[list[Any]]:
    """Rollup deltas as a worker would send them: per (site, minute, dim, value), counted hits."""
    groups: dict[tuple[str, datetime, str, str], list[Hit]] = defaultdict(list)
    for h in hits:
        if not h.counted:
            continue
        minute = h.ts.replace(second=0, microsecond=0)
        groups[(h.site, minute, "", "")].append(h)
        for dim in FIELD_OF:
            groups[(h.site, minute, dim, h.value(dim))].append(h)
    rows = []
    for i, ((site, minute, dim, value), members) in enumerate(groups.items()):
        offset = minute.astimezone(ZoneInfo(TIMEZONE_OF[site])).utcoffset()
        assert offset is not None
        rows.append(
            [
                site,
                minute,
                int(offset.total_seconds()),
                dim,
                value,
                sum(1 for h in members if h.name == "pageview"),
                len(members),
                sorted({h.vid for h in members}),
                1,
                i,
            ]
        )
    return rows


def open_store(path: Path, hits: list[Hit]) -> Any:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{path.resolve()}")
    for statement in ddl(events_retention_days=3650):
        client.command(statement)
    # JSONEachRow: clickhouse-connect's chDB insert of a Map column is very slow (~0.7 ms a row)
    lines = (
        json.dumps(dict(zip(EVENT_COLUMNS, row, strict=True)), default=_json_default)
        for row in event_rows(hits)
    )
    client.command("INSERT INTO events FORMAT JSONEachRow\n" + "\n".join(lines))
    rows = rollup_log_rows(hits)
    for start in range(0, len(rows), 50_000):
        client.insert("rollup_log", rows[start : start + 50_000], column_names=ROLLUP_LOG_COLUMNS)
    return client


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    raise TypeError(type(value))


def run(client: Any, plan: QueryPlan) -> dict[str, Any]:
    return plan.render([client.query(s).result_rows for s in plan.statements])


def assert_results_match(
    got: list[dict[str, Any]], want: list[dict[str, Any]], metrics: list[str]
) -> None:
    """Exact, except visitors (and so percentage) above 1,000: within 1%."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g["dimensions"] == w["dimensions"]
        for name, gv, wv in zip(metrics, g["metrics"], w["metrics"], strict=True):
            if name == "visitors" and wv > 1000:
                assert abs(gv - wv) <= 0.01 * wv, (name, gv, wv)
            elif name == "percentage":
                assert abs(gv - wv) <= max(0.01 * wv, 0.1), (name, gv, wv)
            else:
                assert gv == wv, (name, gv, wv)


def first_day(hits: list[Hit], site: str) -> date:
    tz = ZoneInfo(TIMEZONE_OF[site])
    return min(h.ts.astimezone(tz).date() for h in hits if h.site == site)


def plans_for_every_table(body: dict[str, Any], hits: list[Hit]) -> Iterator[QueryPlan]:
    site = body["site_id"]
    kwargs: dict[str, Any] = {
        "timezone": TIMEZONE_OF[site],
        "now": NOW,
        "first_day": first_day(hits, site),
    }
    default = plan_query(body, **kwargs)
    for table in default.candidates:
        yield plan_query(body, table=table, **kwargs)


# --- the oracle ----------------------------------------------------------------------------


def matches(flt: list[Any], hit: Hit) -> bool:
    op = flt[0]
    if op == "and":
        return all(matches(f, hit) for f in flt[1])
    if op == "or":
        return any(matches(f, hit) for f in flt[1])
    if op == "not":
        return not matches(flt[1], hit)
    dimension, values = flt[1], [str(v) for v in flt[2]]
    sensitive = flt[3].get("case_sensitive", True) if len(flt) == 4 else True
    value = hit.value(dimension)
    label = empty_label(dimension)

    def fold(s: str) -> str:
        return s if sensitive else s.lower()

    if op in ("is", "is_not"):
        hit_ = any(
            fold(value) == fold(v) or (value == "" and fold(v) == fold(label)) for v in values
        )
    else:
        hit_ = any(
            fold(v) in fold(value) or (value == "" and fold(v) == fold(label)) for v in values
        )
    return hit_ if op in ("is", "contains") else not hit_


def time_label(ts: datetime, tz: ZoneInfo, gran: str) -> str:
    local = ts.astimezone(tz)
    if gran == "minute":
        return f"{local:%Y-%m-%d %H:%M}:00"
    if gran == "hour":
        return f"{local:%Y-%m-%d %H}:00:00"
    day = local.date()
    if gran == "week":
        day -= timedelta(days=day.weekday())
    elif gran == "month":
        day = day.replace(day=1)
    return day.isoformat()


def oracle(plan: QueryPlan, body: dict[str, Any], hits: list[Hit]) -> dict[str, Any]:
    """Expected results and total_rows for `body`, on the range and order the plan resolved."""
    dr = plan.date_range
    tz = ZoneInfo(TIMEZONE_OF[body["site_id"]])
    filters = body.get("filters", [])
    selected = [
        h
        for h in hits
        if h.site == body["site_id"]
        and h.counted
        and dr.start <= h.ts < dr.end
        and all(matches(f, h) for f in filters)
    ]
    dims: list[str] = body.get("dimensions", [])
    metrics: list[str] = body["metrics"]
    groups: dict[tuple[str, ...], list[Hit]] = defaultdict(list)
    for h in selected:
        labels: list[str] = []
        for d in dims:
            if d.startswith("time"):
                assert plan.granularity is not None
                labels.append(time_label(h.ts, tz, plan.granularity))
            else:
                labels.append(h.value(d) or empty_label(d))
        groups[tuple(labels)].append(h)
    if not dims and not groups:
        groups[()] = []
    total_visitors = len({h.vid for h in selected})

    Row = tuple[tuple[str, ...], list[Any], dict[str, int]]
    rows: list[Row] = []
    for key, members in groups.items():
        base = {
            "visitors": len({h.vid for h in members}),
            "pageviews": sum(1 for h in members if h.name == "pageview"),
            "events": len(members),
        }
        values = [
            (round(100 * base["visitors"] / total_visitors, 1) if total_visitors else 0.0)
            if m == "percentage"
            else base[m]
            for m in metrics
        ]
        rows.append((key, values, base))

    order = list(plan.order_by)
    named = {n for n, _ in order}
    order += [(d, "asc") for d in dims if d not in named]
    for name, direction in reversed(order):  # stable sorts, least significant key first
        desc = direction == "desc"
        if name in dims:
            i = dims.index(name)

            def by_label(r: Row, i: int = i) -> str:
                return r[0][i]

            rows.sort(key=by_label, reverse=desc)
        else:
            metric = "visitors" if name == "percentage" else name

            def by_metric(r: Row, m: str = metric) -> int:
                return r[2][m]

            rows.sort(key=by_metric, reverse=desc)
    total_rows = len(rows)
    if dims:
        q = plan.query
        rows = rows[q.offset : q.offset + q.limit]
    return {
        "results": [{"metrics": values, "dimensions": list(key)} for key, values, _ in rows],
        "total_rows": total_rows,
    }
