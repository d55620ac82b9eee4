"""Test helpers for engine.query: generated hits, a chDB store holding them, a Python oracle.

The oracle is written independently of the planner: it filters, groups, labels and sorts the
generated hits in plain Python, from the raw JSON filters of the request body.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from engine.dimensions import FIELD_OF, SESSION_ONLY_EVENTS, empty_label
from engine.event_rows import EVENT_TEXT_COLUMNS
from engine.hits import VITALS
from engine.query import QueryPlan, plan_query, sql
from engine.query.sql import Statement
from engine.rollup_rows import ROLLUP_COLUMNS
from engine.store import day_totals, session_rollup, spans
from engine.store.schema import ROLLUP_LEVELS, SESSION_ROLLUP, ddl, derive_sql

NOW = datetime(2026, 11, 10, 12, 34, 56, tzinfo=UTC)
BIG_SITE = "big.test"  # many distinct visitors: uniqCombined64 is approximate there

SITES: dict[str, str] = {
    "utc.test": "UTC",
    "berlin.test": "Europe/Berlin",
    "ny.test": "America/New_York",
    "kolkata.test": "Asia/Kolkata",
}
RANKED_SITE = "ranked.test"  # many pages, visitors falling off with the rank as on real sites
TIMEZONE_OF: dict[str, str] = {**SITES, BIG_SITE: "Europe/Berlin", RANKED_SITE: "UTC"}

# Text columns of an event row, then the rest, in insert order.
HIT_TEXT_COLUMNS = [c for c in EVENT_TEXT_COLUMNS if c != "name"]
EVENT_COLUMNS = [
    "site",
    "ts",
    "name",
    "vid",
    *HIT_TEXT_COLUMNS,
    "props",
    "interactive",
    "src_partition",
    "src_offset",
]
ROLLUP_LOG_COLUMNS = [
    *(c for c in ROLLUP_COLUMNS if c not in VITALS),
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


def generate_ranked_site(seed: int = 13, pages: int = 40) -> list[Hit]:
    """Page i (of `pages`) viewed by about 600 / (i + 1) visitors over 20 days before NOW,
    some of them twice."""
    rng = random.Random(seed)
    hits = []
    for i in range(pages):
        for _ in range(600 // (i + 1)):
            vid = rng.getrandbits(64)
            fields = {col: options[1] for col, options in CHOICES.items()}
            fields["page"] = f"/p{i}"
            for _ in range(rng.choice([1, 1, 2])):
                ts = NOW - timedelta(seconds=rng.uniform(3600, 20 * 86400))
                hits.append(Hit(RANKED_SITE, ts, "pageview", vid, fields))
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
                *(f[c] for c in HIT_TEXT_COLUMNS),
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


def open_store(path: Path, hits: list[Hit], sessions: list[Session] | None = None) -> Any:
    """A chDB store holding `hits` (events and rollups) and, when given, `sessions` (written
    with stale versions, replays and deleted ids: see session_insert_batches)."""
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
    # The store writer folds the log into the levels; do the same for the whole log.
    for level in ROLLUP_LEVELS.values():
        client.command(derive_sql(level, None))
    # And finalizes the days closed at NOW, with their month spans and year prefixes: a range
    # ending at NOW reads both kinds of day.
    client.command(spans.build_sql(1, before=day_totals.closed_before(NOW)))
    client.command(spans.year_build_sql(1, before=day_totals.closed_before(NOW)))
    client.command(day_totals.finalize_sql(1, before=day_totals.closed_before(NOW)))
    if sessions is not None:
        for offset, batch in enumerate(session_insert_batches(sessions)):
            # As the store writer does: session_hour deltas against what `sessions` holds
            # before the batch, then the batch.
            new: dict[int, dict[str, Any]] = {}
            for row in batch:
                sid = int(row["session_id"])
                if sid not in new or row["version"] >= new[sid]["version"]:
                    new[sid] = {**row, "start": row["start"].timestamp()}
            lookup = session_rollup.stored_versions_statement(new.values())
            stored = client.query(lookup.sql, parameters=lookup.params).result_rows
            old = session_rollup.parse_stored([tuple(r) for r in stored])
            deltas = session_rollup.deltas(old, new, {0: offset})
            lines = (json.dumps(row, default=_json_default) for row in deltas)
            client.command(f"INSERT INTO {SESSION_ROLLUP} FORMAT JSONEachRow\n" + "\n".join(lines))
            lines = (json.dumps(row, default=_json_default) for row in batch)
            client.command("INSERT INTO sessions FORMAT JSONEachRow\n" + "\n".join(lines))
    return client


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    raise TypeError(type(value))


PLACEHOLDER = re.compile(r"\{(p\d+):([^}]+)\}")


def inlined(statement: Statement) -> str:
    """The statement's text with each placeholder written as a literal of its value, for
    asserting on the shape of the SQL (fails on a placeholder without a value)."""

    def literal(match: re.Match[str]) -> str:
        value = statement.params[match.group(1)]
        return sql.string(value) if isinstance(value, str) else f"[{sql.string_list(value)}]"

    return PLACEHOLDER.sub(literal, statement.sql)


def run(client: Any, plan: QueryPlan) -> dict[str, Any]:
    rows = [client.query(s.sql, parameters=s.params).result_rows for s in plan.statements]
    for index, again in plan.recheck(rows).items():
        rows[index] = client.query(again.sql, parameters=again.params).result_rows
    return plan.render(rows)


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
        plan = plan_query(body, table=table, **kwargs)
        yield plan
        # Session metrics read session_hour when it can answer: compare with sessions FINAL too.
        if table.endswith("sessions") and any(SESSION_ROLLUP in s.sql for s in plan.statements):
            yield plan_query(body, table=table, session_table="sessions", **kwargs)


# --- the oracle ----------------------------------------------------------------------------


def matches(flt: list[Any], hit: Hit) -> bool:
    return matches_with(flt, hit.value)


def matches_with(flt: list[Any], value_of: Callable[[str], str]) -> bool:
    """A filter tree on one value per dimension (`value_of(dimension)`)."""
    op = flt[0]
    if op == "and":
        return all(matches_with(f, value_of) for f in flt[1])
    if op == "or":
        return any(matches_with(f, value_of) for f in flt[1])
    if op == "not":
        return not matches_with(flt[1], value_of)
    dimension, values = flt[1], [str(v) for v in flt[2]]
    sensitive = flt[3].get("case_sensitive", True) if len(flt) == 4 else True
    value = value_of(dimension)
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


# --- sessions --------------------------------------------------------------------------------

SESSION_GAP = timedelta(minutes=30)
ENTRY_EXIT = {"visit:entry_page": "entry_page", "visit:exit_page": "exit_page"}
EVENT_METRICS = {"visitors", "pageviews", "events", "percentage"}
SESSION_METRICS = {"visits", "bounce_rate", "visit_duration", "views_per_visit"}


@dataclass
class Session:
    """One session as the oracle sees it: its hits in time order (engagement included)."""

    site: str
    vid: int
    session_id: int
    hits: list[Hit]

    @property
    def counted(self) -> list[Hit]:
        return [h for h in self.hits if h.counted]

    @property
    def start(self) -> datetime:
        return self.hits[0].ts

    @property
    def end(self) -> datetime:
        return self.hits[-1].ts

    @property
    def duration(self) -> int:
        return int((self.end - self.start).total_seconds())

    @property
    def pageviews(self) -> int:
        return sum(1 for h in self.counted if h.name == "pageview")

    @property
    def is_bounce(self) -> bool:
        return len(self.counted) <= 1  # every generated hit is interactive

    def value(self, dimension: str) -> str:
        """A visit dimension: the first event's value (entry / exit page)."""
        if dimension == "visit:entry_page":
            return self.hits[0].fields["page"]
        if dimension == "visit:exit_page":
            pages = [h.fields["page"] for h in self.hits if h.name == "pageview"]
            return pages[-1] if pages else ""
        assert not dimension.startswith("event:"), dimension
        return self.hits[0].value(dimension)

    def values(self, dimension: str) -> list[str]:
        """An event dimension: the distinct values of the counted events ([''] when none)."""
        if dimension.startswith("event:props:"):
            key = dimension[len("event:props:") :]
            found = {h.props[key] for h in self.counted if key in h.props}
        else:
            found = {h.value(dimension) for h in self.counted}
        return sorted(found) or [""]


def sessionize(hits: Iterable[Hit], seed: int = 5) -> list[Session]:
    """Per site and visitor, by time: a new session after more than 30 minutes without an
    event; engagement / pageleave only extend a live session (else they are dropped)."""
    rng = random.Random(seed)
    by_visitor: dict[tuple[str, int], list[Hit]] = defaultdict(list)
    for h in hits:
        by_visitor[(h.site, h.vid)].append(h)
    out: list[Session] = []
    for (site, vid), members in sorted(by_visitor.items()):
        current: Session | None = None
        for h in sorted(members, key=lambda x: x.ts):
            if current is not None and h.ts - current.end <= SESSION_GAP:
                current.hits.append(h)
            elif h.counted:
                current = Session(site, vid, rng.getrandbits(63), [h])
                out.append(current)
    return out


def generate_session_hits(seed: int = 23, visits_per_site: int = 400) -> list[Hit]:
    """Visits of several events minutes apart (some gaps just over 30 minutes, which start a
    new session), on the sites of SITES, over the same 15 months as generate_hits."""
    rng = random.Random(seed)
    hits: list[Hit] = []
    for site in SITES:
        visitors = [rng.getrandbits(64) for _ in range(60)]
        for _ in range(visits_per_site):
            r = rng.random()
            if r < 0.4:
                ago = timedelta(seconds=rng.uniform(0, 2 * 86400))
            elif r < 0.5:
                ago = timedelta(seconds=rng.uniform(0, 3600))
            elif r < 0.75:
                ago = timedelta(seconds=rng.uniform(0, 40 * 86400))
            else:
                ago = timedelta(seconds=rng.uniform(0, 450 * 86400))
            ts = (NOW - ago).replace(microsecond=rng.randrange(0, 1000) * 1000)
            vid = rng.choice(visitors)
            visit_fields = {col: rng.choice(options) for col, options in CHOICES.items()}
            visit: list[Hit] = []
            for i in range(rng.choice([1, 1, 2, 3, 4, 6])):
                if i:
                    ts += timedelta(seconds=rng.choice([5, 40, 300, 1200, 1799, 1801, 2400]))
                fields = dict(visit_fields)
                fields["page"] = rng.choice(CHOICES["page"])
                fields["hostname"] = rng.choice(CHOICES["hostname"])
                if rng.random() < 0.2:  # a later event with other visit attributes
                    fields["country"] = rng.choice(CHOICES["country"])
                    fields["source"] = rng.choice(CHOICES["source"])
                name = "pageview" if i == 0 and rng.random() < 0.8 else rng.choice(NAMES)
                visit.append(Hit(site, ts, name, vid, fields, dict(rng.choice(PROPS))))
            if len(visit) > 1 and rng.random() < 0.15:
                # a landing pageview whose source no later event has: a visit:source row with
                # visits but no visitors once filtered on a later event
                visit[0].name = "pageview"
                visit[0].fields["source"] = "Landing"
                for h in visit[1:]:
                    h.fields["source"] = rng.choice(CHOICES["source"])
            hits.extend(visit)
    return [h for h in hits if h.ts < NOW]


def session_row(s: Session, version: int, *, is_deleted: bool = False) -> dict[str, Any]:
    """The sessions table row of `s`'s state (absolute, as the worker writes it)."""
    first = s.hits[0]
    pairs = sorted({(k, v) for h in s.counted for k, v in h.props.items()})
    return {
        "site": s.site,
        "session_id": s.session_id,
        "vid": s.vid,
        "start": s.start,
        "end": s.end,
        "duration": s.duration,
        "pageviews": s.pageviews,
        "events": len(s.counted),
        "interactive_events": len(s.counted),
        "is_bounce": int(s.is_bounce),
        "entry_page": s.value("visit:entry_page"),
        "exit_page": s.value("visit:exit_page"),
        **{c: first.fields[c] for c in HIT_TEXT_COLUMNS if c != "page"},
        "pages": sorted({h.fields["page"] for h in s.counted}),
        # as a worker might: engagement names too (the query must leave them out)
        "names": sorted({h.name for h in s.hits}),
        "hostnames": sorted({h.fields["hostname"] for h in s.counted}),
        "prop_keys": [k for k, _ in pairs],
        "prop_values": [v for _, v in pairs],
        "version": version,
        "is_deleted": int(is_deleted),
        "src_partition": 0,
        "src_offset": version,
    }


def session_insert_batches(sessions: list[Session]) -> list[list[dict[str, Any]]]:
    """Inserts (separate parts) that FINAL and is_deleted must see through: every session's
    latest state; for some, older states (a prefix of its hits, with a stale country and entry
    page) written after the latest; replays of the latest; ids retired by a later deleted row."""
    rng = random.Random(17)
    latest, stale, replays, ghosts, retired = [], [], [], [], []
    for i, s in enumerate(sessions):
        version = 10 * len(s.hits)
        latest.append(session_row(s, version))
        if i % 3 == 0:
            prefix = Session(s.site, s.vid, s.session_id, s.hits[: max(1, len(s.hits) // 2)])
            row = session_row(prefix, version - 5)
            row.update(country="ZZ", entry_page="/stale", pages=["/stale"], names=["stale"])
            stale.append(row)
        if i % 5 == 0:
            replays.append(session_row(s, version))
        if i % 7 == 0:  # e.g. merged into another session by a late event
            ghost = Session(s.site, rng.getrandbits(63), rng.getrandbits(63), s.hits)
            ghosts.append(session_row(ghost, 1))
            retired.append({**session_row(ghost, 2, is_deleted=True), "country": "ZZ"})
    return [ghosts, latest, stale, retired, replays]


def _half_up(numerator: int, denominator: int) -> int:
    if not denominator:
        return 0
    return math.floor(Fraction(numerator, denominator) + Fraction(1, 2))


def _filter_dims(flt: list[Any]) -> set[str]:
    if flt[0] in ("and", "or"):
        return set().union(*(_filter_dims(f) for f in flt[1]))
    if flt[0] == "not":
        return _filter_dims(flt[1])
    return {flt[1]}


def session_matches(flt: list[Any], s: Session, bound: dict[str, str]) -> bool:
    """A filter tree on a session (engine/query/sessions.py states the rule): a subtree on one
    event dimension alone holds when one of the session's values satisfies it; `and` children
    on the same event dimension alone are tested together on one value."""
    dims = _filter_dims(flt)
    free = {d for d in dims if d.startswith("event:") and d not in bound}

    def scalar(dimension: str) -> str:
        return bound[dimension] if dimension in bound else s.value(dimension)

    if not free:
        return matches_with(flt, scalar)
    if len(dims) == 1:
        (dim,) = dims
        return any(matches_with(flt, lambda _d, v=v: v) for v in s.values(dim))
    op = flt[0]
    if op == "not":
        return not session_matches(flt[1], s, bound)
    if op == "or":
        return any(session_matches(f, s, bound) for f in flt[1])
    assert op == "and", flt
    alone: dict[str, list[Any]] = defaultdict(list)
    rest = []
    for child in flt[1]:
        child_dims = _filter_dims(child)
        (first, *more) = child_dims
        if not more and first in free:
            alone[first].append(child)
        else:
            rest.append(child)
    return all(session_matches(["and", group], s, bound) for group in alone.values()) and all(
        session_matches(f, s, bound) for f in rest
    )


def full_oracle(
    plan: QueryPlan, body: dict[str, Any], hits: list[Hit], sessions: list[Session]
) -> dict[str, Any]:
    """Like `oracle`, for any mix of event and session metrics (see engine/query/planner.py:
    one family per table, rows joined on the dimension values; entry / exit page anywhere
    reads every metric from the sessions)."""
    dr = plan.date_range
    site = body["site_id"]
    tz = ZoneInfo(TIMEZONE_OF[site])
    filters: list[Any] = body.get("filters", [])
    dims: list[str] = body.get("dimensions", [])
    metrics: list[str] = body["metrics"]
    entry_mode = any(d in ENTRY_EXIT for f in filters for d in _filter_dims(f)) or any(
        d in ENTRY_EXIT for d in dims
    )
    event_family = bool(EVENT_METRICS & set(metrics)) and not entry_mode
    session_family = bool(SESSION_METRICS & set(metrics)) or entry_mode

    def label(ts: datetime, d: str, value: str) -> str:
        if d.startswith("time"):
            assert plan.granularity is not None
            return time_label(ts, tz, plan.granularity)
        return value or empty_label(d)

    event_groups: dict[tuple[str, ...], dict[str, int]] = {}
    total_visitors = 0
    if event_family:
        selected = [
            h
            for h in hits
            if h.site == site
            and h.counted
            and dr.start <= h.ts < dr.end
            and all(matches(f, h) for f in filters)
        ]
        by_key: dict[tuple[str, ...], list[Hit]] = defaultdict(list)
        for h in selected:
            key = tuple(label(h.ts, d, "" if d.startswith("time") else h.value(d)) for d in dims)
            by_key[key].append(h)
        for key, members in by_key.items():
            event_groups[key] = {
                "visitors": len({h.vid for h in members}),
                "pageviews": sum(1 for h in members if h.name == "pageview"),
                "events": len(members),
            }
        total_visitors = len({h.vid for h in selected})

    session_groups: dict[tuple[str, ...], dict[str, int]] = {}
    if session_family:
        by_key_s: dict[tuple[str, ...], list[Session]] = defaultdict(list)
        matched_vids: set[int] = set()
        joined = [d for d in dims if d.startswith("event:")]
        for s in sessions:
            if s.site != site or not dr.start <= s.start < dr.end:
                continue
            for combo in itertools.product(*(s.values(d) for d in joined)):
                bound = dict(zip(joined, combo, strict=True))
                if filters and not session_matches(["and", filters], s, bound):
                    continue
                key = tuple(
                    label(s.start, d, "")
                    if d.startswith("time")
                    else label(s.start, d, bound[d] if d in bound else s.value(d))
                    for d in dims
                )
                by_key_s[key].append(s)
                matched_vids.add(s.vid)
        for key, group in by_key_s.items():
            session_groups[key] = {
                "visitors": len({s.vid for s in group}),
                "pageviews": sum(s.pageviews for s in group),
                "events": sum(len(s.counted) for s in group),
                "visits": len(group),
                "bounces": sum(1 for s in group if s.is_bounce),
                "duration": sum(0 if s.is_bounce else s.duration for s in group),
            }
        if entry_mode:
            event_groups = session_groups
            total_visitors = len(matched_vids)

    keys = set(event_groups) | set(session_groups)
    if not dims:
        keys = {()}
    zero = dict.fromkeys(["visitors", "pageviews", "events", "visits", "bounces", "duration"], 0)

    def value(metric: str, key: tuple[str, ...]) -> Any:
        ev = event_groups.get(key, zero)
        se = session_groups.get(key, zero)
        if metric == "percentage":
            return round(100 * ev["visitors"] / total_visitors, 1) if total_visitors else 0.0
        if metric in ("visitors", "pageviews", "events"):
            return ev[metric]
        if metric == "visits":
            return se["visits"]
        if metric == "bounce_rate":
            return _half_up(100 * se["bounces"], se["visits"])
        if metric == "visit_duration":
            return _half_up(se["duration"], se["visits"])
        assert metric == "views_per_visit", metric
        return _half_up(100 * se["pageviews"], se["visits"]) / 100

    rows = sorted(keys)
    order = list(plan.order_by)
    named = {n for n, _ in order}
    order += [(d, "asc") for d in dims if d not in named]
    for name, direction in reversed(order):  # stable sorts, least significant key first
        if name in dims:
            i = dims.index(name)
            rows.sort(key=lambda k, i=i: k[i], reverse=direction == "desc")
        else:
            m = "visitors" if name == "percentage" else name
            rows.sort(key=lambda k, m=m: value(m, k), reverse=direction == "desc")
    total_rows = len(rows)
    if dims:
        q = plan.query
        rows = rows[q.offset : q.offset + q.limit]
    return {
        "results": [
            {"metrics": [value(m, k) for m in metrics], "dimensions": list(k)} for k in rows
        ],
        "total_rows": total_rows,
    }
