"""A deterministic analytics data set, generated inside ClickHouse, for the query benchmarks.

Generating millions of hits through HTTP and the worker is far too slow for a benchmark, so the
hits are made with ClickHouse SQL (numbers(), sipHash64 of a seed for every random choice) and
the engine's tables are filled straight from them, exactly as the worker and the store writer
would have filled them from those hits: `events`, `rollup_log` (one worker message per minute of
hits, src_offset = the minute's number) and from it the rollup levels by the engine's own
`derive_sql`, and `sessions` (the final version of every session). `verify_equivalence` proves
that on a small set: it replays the generated hits through the engine's own functions
(`build_rollup_rows`, `VisitorSessions`) and compares every row.

Shape of the data: sessions of 1-10 pageviews (mean 3.6) spread over the days; 80% of a day's
visitors have one session, 20% a second one 12 hours later (same visitor id: the daily salt
makes a visitor's id change every day, so ids are per day); pages, sources, browsers, OSes and
countries follow Zipf-like skews; every hit carries its session's visit attributes, as the
worker's session stage gives them. Only pageviews (interactive), one hostname, no props.
`raw_events` is the baseline table: the same hits in a plain MergeTree with their session id,
as Plausible's design stores them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.dimensions import FIELD_OF
from engine.hits import Hit
from engine.query import sql
from engine.rollup_rows import build_rollup_rows
from engine.sessions import SESSION_COLUMNS, SessionEvent, VisitorSessions
from engine.store.schema import ROLLUP_LEVELS, derive_sql

Exec = Callable[[str], None]
Query = Callable[[str], list[tuple[Any, ...]]]

MEAN_SESSION_PAGEVIEWS = 3.6  # of the session-length table below
SESSION_LENGTHS = [1, 1, 1, 2, 2, 3, 4, 5, 7, 10]
PAGES = 2000
SOURCES = [
    "",
    "Google",
    "Bing",
    "DuckDuckGo",
    "Twitter",
    "Facebook",
    "Reddit",
    "Hacker News",
    "LinkedIn",
    "GitHub",
    "Newsletter",
    "Yandex",
    "Ecosia",
    "Instagram",
    "YouTube",
    *(f"blog{i}.example" for i in range(45)),
]
BROWSERS = ["Chrome", "Safari", "Firefox", "Edge", "Samsung Internet", "Opera"]
OSES = ["Windows", "Mac", "iOS", "Android", "GNU/Linux", "Chrome OS"]
COUNTRIES = [
    "US",
    "DE",
    "GB",
    "FR",
    "IN",
    "CA",
    "NL",
    "BR",
    "ES",
    "IT",
    "PL",
    "SE",
    "AU",
    "JP",
    "CH",
    "AT",
    "BE",
    "RU",
    "MX",
    "TR",
    "DK",
    "NO",
    "FI",
    "IE",
    "PT",
    "CZ",
    "UA",
    "RO",
    "HU",
    "GR",
    "IL",
    "AR",
    "ZA",
    "SG",
    "KR",
    "NZ",
    "ID",
    "VN",
    "PH",
    "TH",
    "MY",
    "CL",
    "CO",
    "PE",
    "EG",
    "NG",
    "KE",
    "PK",
    "BD",
    "IR",
    "SA",
    "AE",
    "HK",
    "TW",
    "CN",
    "SK",
    "SI",
    "HR",
    "RS",
    "BG",
    "LT",
    "LV",
    "EE",
    "IS",
    "LU",
    "MT",
    "CY",
    "BY",
    "KZ",
    "UZ",
    "GE",
    "AM",
    "AZ",
    "MA",
    "TN",
    "DZ",
    "GH",
    "ET",
    "TZ",
    "UG",
    "CM",
    "CI",
    "SN",
    "VE",
    "EC",
    "BO",
    "PY",
    "UY",
    "CR",
    "PA",
    "DO",
    "GT",
    "HN",
    "SV",
    "NI",
    "JM",
    "TT",
]
SITE = "bench.test"
RAW_TABLE = "raw_events"
# Pageviews of log folded into the levels by one derive statement while building.
DERIVE_PAGEVIEWS = 500_000


@dataclass(frozen=True)
class DataSet:
    pageviews: int  # asked for; the generated count is about this (session lengths are drawn)
    days: int
    last_day: dt.date  # the data covers [last_day - days + 1, last_day] in the site's zone
    seed: int = 1
    site: str = SITE
    timezone: str = "UTC"

    @property
    def first_day(self) -> dt.date:
        return self.last_day - dt.timedelta(days=self.days - 1)

    @property
    def sessions(self) -> int:
        return max(self.days, round(self.pageviews / MEAN_SESSION_PAGEVIEWS))


def _h(seed: int, *parts: str) -> str:
    """A deterministic 64-bit hash of the seed and SQL expressions."""
    return f"sipHash64({int(seed)}, {', '.join(parts)})"


def _zipf(seed: int, tag: str, values: list[str], *key: str) -> str:
    """One of `values`, index i drawn with weight 1/(i+1)."""
    u = f"({_h(seed, sql.string(tag), *key)} % 1000000000) / 1e9"
    index = f"least(toUInt32(floor(exp({u} * log({len(values) + 1})))), {len(values)})"
    return f"arrayElement([{sql.string_list(values)}], {index})"


def _session_sql(ds: DataSet) -> str:
    s = ds.seed
    per_day = math.ceil(ds.sessions / ds.days)
    first_visitors = math.ceil(per_day * 0.8)
    tz = sql.string(ds.timezone)
    lengths = ", ".join(str(k) for k in SESSION_LENGTHS)
    page_hash = _h(s, "'page'", "idx", "n")
    page_u = f"({page_hash} % 1000000000) / 1e9"
    page_rank = f"least(toUInt32(floor(exp({page_u} * log({PAGES + 1})))) - 1, {PAGES - 1})"
    return f"""
    SELECT idx, vid, start_ms, k, offsets, pages, source, referrer, utm_source, utm_medium,
           utm_campaign, device, browser, browser_version, os, os_version, country
    FROM (
        SELECT number AS idx,
               number % {ds.days} AS day_index,
               intDiv(number, {ds.days}) AS i,
               i >= {first_visitors} AS second,
               {_h(s, "'vid'", "day_index", f"i % {first_visitors}")} AS vid,
               -- the local day's midnight in UTC, then a start within the first or second half
               toUInt64(toUnixTimestamp(toDateTime(toDate({sql.string(ds.first_day.isoformat())})
                   + day_index, {tz})) * 1000)
                 + second * 43200000 + {_h(s, "'start'", "idx")} % 36000000 AS start_ms,
               arrayElement([{lengths}], {_h(s, "'k'", "idx")} % {len(SESSION_LENGTHS)} + 1) AS k,
               arrayCumSum(arrayMap(n -> if(n = 0, 0, 5000 + {_h(s, "'gap'", "idx", "n")} % 595000),
                                    range(k))) AS offsets,
               arrayMap(n -> if({page_rank} = 0, '/', concat('/page/', toString({page_rank}))),
                        range(k)) AS pages,
               {_zipf(s, "source", SOURCES, "idx")} AS source,
               if(source = '', '', concat('https://', lower(replaceAll(source, ' ', '')),
                  if(position(source, '.') > 0, '', '.com'), '/')) AS referrer,
               if({_h(s, "'utm'", "idx")} % 10 = 0, 'newsletter', '') AS utm_source,
               if(utm_source = '', '', 'email') AS utm_medium,
               if(utm_source = '', '', if({_h(s, "'camp'", "idx")} % 2 = 0, 'spring', 'fall'))
                   AS utm_campaign,
               multiIf({_h(s, "'dev'", "idx")} % 100 < 55, 'Desktop',
                       {_h(s, "'dev'", "idx")} % 100 < 95, 'Mobile', 'Tablet') AS device,
               {_zipf(s, "browser", BROWSERS, "idx")} AS browser,
               concat(toString(100 + {_h(s, "'bv'", "idx")} % 25), '.0') AS browser_version,
               {_zipf(s, "os", OSES, "idx")} AS os,
               toString(10 + {_h(s, "'osv'", "idx")} % 8) AS os_version,
               {_zipf(s, "country", COUNTRIES, "idx")} AS country
        FROM numbers({ds.sessions})
    )
    """


RAW_DDL = f"""
CREATE TABLE IF NOT EXISTS {RAW_TABLE} (
    site LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    name LowCardinality(String),
    vid UInt64,
    session_id UInt64,
    hostname LowCardinality(String),
    page String,
    referrer String,
    source LowCardinality(String),
    utm_source String,
    utm_medium String,
    utm_campaign String,
    utm_content String,
    utm_term String,
    device LowCardinality(String),
    browser LowCardinality(String),
    browser_version LowCardinality(String),
    os LowCardinality(String),
    os_version LowCardinality(String),
    country LowCardinality(String),
    interactive UInt8
) ENGINE = MergeTree
ORDER BY (site, toDate(ts), name, vid, ts)
"""

# The columns the engine's rollup rows key on: (dim, hit field) as the worker folds them.
_DIMS = [("", "''"), *((dim, field) for dim, field in FIELD_OF.items())]


def session_ids(vids: np.ndarray, starts_ms: np.ndarray, site: str) -> np.ndarray:
    """engine.sessions.session_id, for arrays (same bytes hashed)."""
    out = np.empty(len(vids), dtype=np.uint64)
    blake = hashlib.blake2b
    prefix = f"{site}|"
    for i, (vid, start) in enumerate(zip(vids.tolist(), starts_ms.tolist(), strict=True)):
        digest = blake(f"{prefix}{vid}|{start}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") >> 1
    return out


def generate(ds: DataSet, execute: Exec, query_np: Callable[[str], Any], scratch: Path) -> None:
    """Fill `raw_events` and the engine's tables (already migrated) with the data set."""
    execute("DROP TABLE IF EXISTS gen_sessions")
    execute("CREATE TABLE gen_sessions ENGINE = MergeTree ORDER BY idx AS " + _session_sql(ds))
    # Session ids are blake2b, which ClickHouse lacks: computed here, loaded back as a file.
    vids, starts = query_np("SELECT vid, start_ms FROM gen_sessions ORDER BY idx")
    ids = np.zeros(len(vids), dtype=[("idx", "<u8"), ("sid", "<u8")])
    ids["idx"] = np.arange(len(vids), dtype=np.uint64)
    ids["sid"] = session_ids(vids, starts, ds.site)
    ids_path = scratch / "session_ids.bin"
    ids.tofile(ids_path)
    execute("DROP TABLE IF EXISTS gen_ids")
    execute(
        "CREATE TABLE gen_ids ENGINE = MergeTree ORDER BY idx AS SELECT * FROM "
        f"file({sql.string(str(ids_path))}, 'RowBinary', 'idx UInt64, sid UInt64')"
    )
    execute(RAW_DDL)
    site, tz = sql.string(ds.site), sql.string(ds.timezone)
    execute(f"""
        INSERT INTO {RAW_TABLE}
        SELECT {site}, fromUnixTimestamp64Milli(toInt64(start_ms + off), 'UTC'), 'pageview', vid,
               sid, {site}, page, referrer, source, utm_source, utm_medium, utm_campaign, '', '',
               device, browser, browser_version, os, os_version, country, 1
        FROM gen_sessions AS g INNER JOIN gen_ids AS i ON g.idx = i.idx
        ARRAY JOIN offsets AS off, pages AS page
        """)
    days = [ds.first_day + dt.timedelta(days=d) for d in range(ds.days)]
    # The worker's message of a hit: one per minute, numbered by the minute.
    offset = "intDiv(toUnixTimestamp(ts), 60)"
    text = ", ".join(f"{c}" for c in ("referrer", "utm_source", "utm_medium", "utm_campaign"))
    for day in days:
        # UTC days: messages (minutes) never straddle two chunks.
        where = f"toDate(ts) = toDate({sql.string(day.isoformat())})"
        execute(f"""
            INSERT INTO events (site, ts, name, vid, hostname, page, {text}, utm_content,
                utm_term, source, device, browser, browser_version, os, os_version, country,
                props, interactive, src_partition, src_offset)
            SELECT site, ts, name, vid, hostname, page, {text}, utm_content, utm_term, source,
                   device, browser, browser_version, os, os_version, country, map(), interactive,
                   0, {offset}
            FROM {RAW_TABLE} WHERE {where}
            """)
        pairs = ", ".join(f"({sql.string(d)}, toString({f}))" for d, f in _DIMS)
        execute(f"""
            INSERT INTO rollup_log (site, minute, tz_offset, dim, value, pageviews, events,
                                    hashes, src_partition, src_offset)
            SELECT site, toStartOfMinute(ts) AS m, timeZoneOffset(toDateTime(m, {tz})),
                   d.1 AS dim, d.2 AS value, countIf(name = 'pageview'), count(),
                   arraySort(groupUniqArray(vid)), 0, any({offset})
            FROM {RAW_TABLE} ARRAY JOIN [{pairs}] AS d
            WHERE {where}
            GROUP BY site, m, dim, value
            """)
    # The levels, by the store writer's own derive, a few days of messages at a time (about
    # DERIVE_PAGEVIEWS each): each derive is a part in every level for ClickHouse to merge, and
    # a day at a time the 365-day set had reached day 68 after 20 minutes, slowing down.
    step = max(1, DERIVE_PAGEVIEWS * ds.days // max(ds.pageviews, 1))
    low = -1
    for last in (days[min(i + step, len(days)) - 1] for i in range(0, len(days), step)):
        high = int(dt.datetime.combine(last, dt.time(23, 59), dt.UTC).timestamp()) // 60
        for table in ROLLUP_LEVELS.values():
            execute(derive_sql(table, {0: (low, high)}))
        low = high
    execute(f"""
        INSERT INTO sessions ({", ".join(SESSION_COLUMNS)})
        SELECT {site}, sid, vid, fromUnixTimestamp64Milli(toInt64(start_ms), 'UTC'),
               fromUnixTimestamp64Milli(toInt64(start_ms + offsets[-1]), 'UTC'),
               intDiv(offsets[-1], 1000), k, k, k, k <= 1, pages[1], pages[-1], {site},
               source, referrer, utm_source, utm_medium, utm_campaign, '', '', device, browser,
               browser_version, os, os_version, country, arraySort(arrayDistinct(pages)),
               ['pageview'], [{site}], [], [],
               intDiv(intDiv(start_ms + offsets[-1], 1000), 60) AS last_message, 0, 0,
               last_message
        FROM gen_sessions AS g INNER JOIN gen_ids AS i ON g.idx = i.idx
        """)
    execute("DROP TABLE gen_sessions")
    execute("DROP TABLE gen_ids")


# --- Equivalence with the engine's own code, on a small set -------------------------------------

_HIT_COLUMNS = (
    "ts",
    "vid",
    "page",
    "referrer",
    "source",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "device",
    "browser",
    "browser_version",
    "os",
    "os_version",
    "country",
)


def hits_of(ds: DataSet, query: Query) -> list[Hit]:
    """The generated hits as the engine's enriched hits, in time order."""
    rows = query(
        f"SELECT toUnixTimestamp64Milli(ts), {', '.join(_HIT_COLUMNS[1:])} FROM {RAW_TABLE} "
        "ORDER BY ts, vid"
    )
    hits: list[Hit] = []
    for row in rows:
        fields = dict(zip(_HIT_COLUMNS, row, strict=True))
        fields["ts"] = int(row[0]) / 1000
        hit: dict[str, Any] = {
            "site": ds.site,
            "tz": ds.timezone,
            "name": "pageview",
            "vid_prev": 0,
            "hostname": ds.site,
            "utm_content": "",
            "utm_term": "",
            "props": {},
            "interactive": True,
            "revenue": None,
            "vitals": None,
            **fields,
        }
        hits.append(hit)  # type: ignore[arg-type]
    return hits


def verify_equivalence(ds: DataSet, query: Query) -> dict[str, int]:
    """Replay the generated hits through the engine's worker functions, one message per minute,
    and compare with what `generate` stored. Raises AssertionError on the first difference."""
    hits = hits_of(ds, query)
    messages: dict[int, list[Hit]] = defaultdict(list)
    for hit in hits:
        messages[int(hit["ts"] // 60)].append(hit)
    expected_rollups: set[tuple[Any, ...]] = set()
    states: dict[int, VisitorSessions] = {}
    session_rows: dict[int, dict[str, Any]] = {}
    for offset in sorted(messages):
        batch = build_rollup_rows(messages[offset])
        for row in zip(*(batch.columns[c] for c in batch.columns), strict=True):
            site, minute, tz_offset, dim, value, pageviews, events, hashes = row[:8]
            expected_rollups.add(
                (site, minute, tz_offset, dim, value, pageviews, events, tuple(hashes), offset)
            )
        by_visitor: dict[int, list[Hit]] = defaultdict(list)
        for hit in messages[offset]:
            by_visitor[hit["vid"]].append(hit)
        for vid, visitor_hits in by_visitor.items():
            state = states.setdefault(vid, VisitorSessions.new(ds.site, vid))
            events = [SessionEvent.from_hit(h, state.take_seq()) for h in visitor_hits]
            outcome = state.apply(events, offset << 16, 600.0)
            assert not outcome.deleted and not outcome.late_events, "generator sessions overlap"
            for srow in outcome.upserts:
                session_rows[srow.session_id] = srow.as_columns(ds.site, offset, 0, offset)
    stored_rollups = {
        (r[0], int(r[1]), r[2], r[3], r[4], r[5], r[6], tuple(r[7]), r[8])
        for r in query(
            "SELECT site, toUnixTimestamp(minute), tz_offset, dim, value, pageviews, events, "
            "hashes, src_offset FROM rollup_log"
        )
    }
    assert stored_rollups == expected_rollups, (
        f"rollup_log differs: {len(stored_rollups - expected_rollups)} stored rows not expected, "
        f"{len(expected_rollups - stored_rollups)} expected rows missing"
    )
    columns = [c for c in SESSION_COLUMNS]
    stored_sessions = {}
    for r in query(
        f"SELECT {', '.join(columns[:3])}, toUnixTimestamp64Milli(start), "
        f"toUnixTimestamp64Milli(end), {', '.join(columns[5:])} FROM sessions FINAL"
    ):
        row = dict(zip(columns, r, strict=True))
        row["start"], row["end"] = row["start"] / 1000, row["end"] / 1000
        for key in ("pages", "names", "hostnames", "prop_keys", "prop_values"):
            row[key] = list(row[key])
        stored_sessions[row["session_id"]] = row
    assert stored_sessions.keys() == session_rows.keys(), "session ids differ"
    for sid, want in session_rows.items():
        got = stored_sessions[sid]
        diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
        assert not diff, f"session {sid} differs: {diff}"
    return {"hits": len(hits), "rollup_rows": len(expected_rollups), "sessions": len(session_rows)}


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="rollup-query-bench-"))
