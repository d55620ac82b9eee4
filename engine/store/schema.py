"""ClickHouse schema: an events table, sessions, and minute/hour/day rollups fed from a log.

Workers send rollup deltas (counts plus the visitor hashes of each row); the store inserts
them into `rollup_log`, then folds each new stretch of the log into the AggregatingMergeTree
levels with one INSERT ... SELECT per level (`derive_sql`), so hour and day are derived inside
ClickHouse. Not materialized views: a crash between a log insert and its views' inserts would
leave the levels short with no way to tell. Each level records the highest source position
(hits partition, offset) it holds, so after a crash the writer derives exactly what is missing:
see engine/store/writer.py.
"""

from __future__ import annotations

import re

from engine.dimensions import TOTAL, VISIT_DIMENSIONS
from engine.hits import VITALS

ROLLUP_LEVELS: dict[str, str] = {
    # level -> table
    "minute": "rollup_minute",
    "hour": "rollup_hour",
    "day": "rollup_day",
    # Site-local weeks (from Monday), months and quarters: a long range of days reads its
    # whole quarters, months and weeks from here, a handful of rows instead of one per day
    # (engine/query/planner.py).
    "week": "rollup_week",
    "month": "rollup_month",
    "quarter": "rollup_quarter",
}
# The levels above the day, by their bucket of a local date (a `day` of rollup_day).
COARSE_LEVELS: dict[str, str] = {
    "rollup_week": "toMonday(day)",
    "rollup_month": "toStartOfMonth(day)",
    "rollup_quarter": "toStartOfQuarter(day)",
}


MAX_RETENTION_DAYS = 36_500
# Rows per granule of the day and coarser levels. A row may hold a 96 KiB unique-count
# sketch and a granule is decoded whole, so a query reading a few rows (one site's totals over
# a month: 30 of them; the top values of a ranking) decodes the sketches of every row of the
# granules it touches: ClickHouse's default (8,192 rows, or 10 MiB) made that thousands.
LEVEL_GRANULARITY = 32
# Month spans hold more full-size sketches (a month's worth of visitors each): reading a top
# 16 of a span (16 granules) took 37 ms with granules of 32 rows and 25 ms with 8 (or 2, 4).
SPAN_GRANULARITY = 8
# Parts of a thousand rows and more store each column in its own file ("wide"). ClickHouse
# sizes a part by an estimate that counts a sketch as a pointer, so even a 100 MB part of
# sketches was "compact", one file in which reading the counts decompressed the sketches too.
_WIDE_PARTS = "min_bytes_for_wide_part = 0, min_rows_for_wide_part = 1024"

# Web vitals: the log holds each row's samples, the levels a DDSketch quantile state per vital
# (relative accuracy 0.5%, mergeable across any range). The parameters are part of the state's
# type (spelled out in the DDL below): the Stats API reads it with the same ones.
VITALS_SKETCH_PARAMS = "(0.005, 0.75)"  # relative accuracy, quantile
_VITAL_LOG_TYPE = "Array(Float32) DEFAULT []"
_VITAL_STATE_TYPE = f"AggregateFunction(quantileDD{VITALS_SKETCH_PARAMS}, Float64)"
_SPAN_VITALS = ",\n            ".join(f"{v} {_VITAL_STATE_TYPE}" for v in VITALS)


def ddl(events_retention_days: int = 90, cluster: str | None = None) -> list[str]:
    """The schema, idempotent. With `cluster`, the ClickHouse cluster variant (see
    `cluster_ddl`); without, the single-node tables."""
    if cluster is not None:
        return cluster_ddl(events_retention_days, cluster)
    return _single_node_ddl(events_retention_days)


def _single_node_ddl(events_retention_days: int) -> list[str]:
    if not 1 <= events_retention_days <= MAX_RETENTION_DAYS:
        raise ValueError(f"events retention must be 1..{MAX_RETENTION_DAYS} days")
    rollup_cols = """
        site LowCardinality(String),
        {time_col},
        dim LowCardinality(String),
        value String,
        pageviews SimpleAggregateFunction(sum, UInt64),
        events SimpleAggregateFunction(sum, UInt64),
        visitors AggregateFunction(uniqCombined64, UInt64),
        src_partition SimpleAggregateFunction(any, UInt16),
        src_offset SimpleAggregateFunction(max, UInt64),
        ttfb AggregateFunction(quantileDD(0.005, 0.75), Float64),
        fcp AggregateFunction(quantileDD(0.005, 0.75), Float64),
        lcp AggregateFunction(quantileDD(0.005, 0.75), Float64),
        inp AggregateFunction(quantileDD(0.005, 0.75), Float64),
        cls AggregateFunction(quantileDD(0.005, 0.75), Float64)
    """
    return [
        f"""
        CREATE TABLE IF NOT EXISTS events (
            site LowCardinality(String),
            ts DateTime64(3, 'UTC'),
            name LowCardinality(String),
            vid UInt64,
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
            props Map(String, String),
            interactive UInt8,
            revenue_amount Nullable(Decimal64(3)),
            revenue_currency LowCardinality(String),
            ttfb Nullable(Float32),
            fcp Nullable(Float32),
            lcp Nullable(Float32),
            inp Nullable(Float32),
            cls Nullable(Float32),
            src_partition UInt16,
            src_offset UInt64
        ) ENGINE = MergeTree
        ORDER BY (site, toDate(ts), name, ts)
        TTL toDate(ts) + INTERVAL {int(events_retention_days)} DAY
        """,
        # One row per session version, written by the worker as absolute state (never deltas):
        # the highest `version` wins, `is_deleted` retires an id (e.g. two sessions merged by a
        # late event), so a replayed or duplicated row changes nothing. Query with FINAL.
        """
        CREATE TABLE IF NOT EXISTS sessions (
            site LowCardinality(String),
            session_id UInt64,
            vid UInt64,
            start DateTime64(3, 'UTC'),
            end DateTime64(3, 'UTC'),
            duration UInt32,
            pageviews UInt32,
            events UInt32,
            interactive_events UInt32,
            is_bounce UInt8,
            entry_page String,
            exit_page String,
            hostname LowCardinality(String),
            source LowCardinality(String),
            referrer String,
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
            pages Array(String),
            names Array(String),
            hostnames Array(String),
            prop_keys Array(String),
            prop_values Array(String),
            version UInt64,
            is_deleted UInt8,
            src_partition UInt16,
            src_offset UInt64
        ) ENGINE = ReplacingMergeTree(version, is_deleted)
        ORDER BY (site, toDate(start), session_id)
        """,
        """
        CREATE TABLE IF NOT EXISTS rollup_log (
            site LowCardinality(String),
            minute DateTime('UTC'),
            tz_offset Int32,
            dim LowCardinality(String),
            value String,
            pageviews UInt64,
            events UInt64,
            hashes Array(UInt64),
            ttfb Array(Float32) DEFAULT [],
            fcp Array(Float32) DEFAULT [],
            lcp Array(Float32) DEFAULT [],
            inp Array(Float32) DEFAULT [],
            cls Array(Float32) DEFAULT [],
            src_partition UInt16,
            src_offset UInt64,
            inserted_at DateTime('UTC') DEFAULT now()
        ) ENGINE = MergeTree
        ORDER BY (src_partition, src_offset)
        TTL inserted_at + INTERVAL 3 DAY
        """,
        "CREATE TABLE IF NOT EXISTS rollup_minute ("
        + rollup_cols.format(time_col="minute DateTime('UTC')")
        + ") ENGINE = AggregatingMergeTree ORDER BY (site, dim, minute, value)",
        "CREATE TABLE IF NOT EXISTS rollup_hour ("
        + rollup_cols.format(time_col="hour DateTime('UTC')")
        + ") ENGINE = AggregatingMergeTree ORDER BY (site, dim, hour, value)",
        *(level_ddl(table, rollup_cols) for table in ("rollup_day", *COARSE_LEVELS)),
        # Session metrics per UTC hour of the session's start, by visit dimension: reading
        # `sessions FINAL` over a month of a busy site is far too slow for a dashboard. Fed by
        # the store writer with signed deltas (the new version of a session minus the one
        # stored before), see engine/store/session_rollup.py; rows summing to 0 visits are
        # retracted values and are skipped by queries.
        """
        CREATE TABLE IF NOT EXISTS session_hour (
            site LowCardinality(String),
            hour DateTime('UTC'),
            dim LowCardinality(String),
            value String,
            visits SimpleAggregateFunction(sum, Int64),
            bounces SimpleAggregateFunction(sum, Int64),
            duration SimpleAggregateFunction(sum, Int64),
            pageviews SimpleAggregateFunction(sum, Int64),
            events SimpleAggregateFunction(sum, Int64),
            src_partition SimpleAggregateFunction(any, UInt16),
            src_offset SimpleAggregateFunction(max, UInt64)
        ) ENGINE = AggregatingMergeTree ORDER BY (site, dim, hour, value)
        """,
        # Per site and closed local day: rollup_day's totals row with its unique count
        # finalized (engine/store/day_totals.py), so a year of visitors by day reads 365
        # numbers, not 365 sketches. A day given data after it closed is retracted
        # (is_deleted) before rollup_day takes the data, and finalized again after.
        """
        CREATE TABLE IF NOT EXISTS day_totals (
            site LowCardinality(String),
            day Date,
            visitors UInt64,
            pageviews UInt64,
            events UInt64,
            version UInt64,
            is_deleted UInt8
        ) ENGINE = ReplacingMergeTree(version, is_deleted)
        ORDER BY (site, day)
        """,
        # Per site, dim and value, unions of rollup_day over the start or the end of a month
        # (engine/store/spans.py): a range across months reads two or three sketches a value.
        f"""
        CREATE TABLE IF NOT EXISTS rollup_span (
            site LowCardinality(String),
            kind UInt8,
            day Date,
            dim LowCardinality(String),
            value String,
            pageviews SimpleAggregateFunction(sum, UInt64),
            events SimpleAggregateFunction(sum, UInt64),
            visitors AggregateFunction(uniqCombined64, UInt64),
            {_SPAN_VITALS},
            version UInt64,
            is_deleted UInt8
        ) ENGINE = ReplacingMergeTree(version, is_deleted)
        ORDER BY (site, dim, kind, day, value)
        SETTINGS index_granularity = {SPAN_GRANULARITY}, {_WIDE_PARTS}
        """,
        # Earlier schema versions fed the levels by materialized views; see derive_sql.
        "DROP VIEW IF EXISTS rollup_minute_mv",
        "DROP VIEW IF EXISTS rollup_hour_mv",
        "DROP VIEW IF EXISTS rollup_day_mv",
        *(
            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column}"
            for table in ROLLUP_LEVELS.values()
            for column in (
                "src_partition SimpleAggregateFunction(any, UInt16)",
                "src_offset SimpleAggregateFunction(max, UInt64)",
            )
        ),
        # Stores made before the vitals columns existed.
        *(f"ALTER TABLE rollup_log ADD COLUMN IF NOT EXISTS {v} {_VITAL_LOG_TYPE}" for v in VITALS),
        *(
            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {v} {_VITAL_STATE_TYPE}"
            for table in ROLLUP_LEVELS.values()
            for v in VITALS
        ),
    ]


def level_ddl(table: str, columns: str, name: str | None = None) -> str:
    """CREATE of a level at or above the day (as `name`, default the level's own)."""
    time_col = LEVEL_COLUMNS[table]
    return (
        f"CREATE TABLE IF NOT EXISTS {name or table} ("
        + columns.format(time_col=f"{time_col} Date")
        + f") ENGINE = AggregatingMergeTree ORDER BY (site, dim, {time_col}, value)"
        + f" SETTINGS index_granularity = {LEVEL_GRANULARITY}, {_WIDE_PARTS}"
    )


def regranulate_sql(table: str, engine_full: str) -> list[str]:
    """Statements rebuilding a level created with larger granules (before LEVEL_GRANULARITY):
    a copy with the same rows (so the same source positions, the writer's record), swapped in
    atomically. Empty when `engine_full` (system.tables) already has them. Only while no
    writer runs: rows inserted during the copy would be lost."""
    if f"index_granularity = {LEVEL_GRANULARITY}" in engine_full:
        return []
    create = next(s for s in _single_node_ddl(90) if f"IF NOT EXISTS {table} (" in s)
    copy = f"{table}_regranulated"
    columns = ", ".join(c.split()[0] for c in _columns_of(create))
    return [
        f"DROP TABLE IF EXISTS {copy}",
        create.replace(f"IF NOT EXISTS {table} (", f"{copy} (", 1),
        f"INSERT INTO {copy} ({columns}) SELECT {columns} FROM {table}",
        f"EXCHANGE TABLES {table} AND {copy}",
        f"DROP TABLE {copy}",
    ]


def _columns_of(create: str) -> list[str]:
    body = create[create.index("(") + 1 : create.rindex(") ENGINE")]
    return [line.strip().rstrip(",") for line in body.strip().splitlines() if line.strip()]


# How rows spread over shards. Rows that ClickHouse must merge into one (a rollup key, a
# session's versions) must live on one shard, so the key covers the table's merge key.
SHARDING_KEYS: dict[str, str] = {
    "events": "cityHash64(site, vid)",
    "sessions": "cityHash64(site, session_id)",
    "rollup_log": "src_partition",
    "rollup_minute": "cityHash64(site, dim, value)",
    "rollup_hour": "cityHash64(site, dim, value)",
    "rollup_day": "cityHash64(site, dim, value)",
    "rollup_week": "cityHash64(site, dim, value)",
    "rollup_month": "cityHash64(site, dim, value)",
    "rollup_quarter": "cityHash64(site, dim, value)",
    "session_hour": "cityHash64(site, dim, value)",
    "day_totals": "cityHash64(site, day)",
    "rollup_span": "cityHash64(site, dim, value)",
}

_CREATE = re.compile(
    r"^\s*CREATE TABLE IF NOT EXISTS (?P<name>\w+) \((?P<columns>.*)\)\s*"
    r"ENGINE = (?P<engine>\w+)(?:\((?P<args>[^)]*)\))?(?P<tail>.*)$",
    re.DOTALL,
)
_CLUSTER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def cluster_ddl(events_retention_days: int, cluster: str) -> list[str]:
    """The cluster variant of the single-node schema, table by table: `<table>_local` is a
    Replicated*MergeTree created ON CLUSTER (same columns, keys and TTL, replicated through
    the `{shard}`/`{replica}` macros of each server), and `<table>` a Distributed table over it,
    so every query and insert of the engine keeps its table names. No legacy migrations: a
    cluster schema starts at the current version."""
    if not _CLUSTER_NAME.match(cluster):
        raise ValueError(f"invalid ClickHouse cluster name {cluster!r}")
    statements: list[str] = []
    for statement in _single_node_ddl(events_retention_days):
        match = _CREATE.match(statement)
        if match is None:
            continue  # DROP VIEW / ALTER ... ADD COLUMN upgrade earlier single-node versions
        name, engine, args = match["name"], match["engine"], match["args"]
        path = f"'/clickhouse/tables/{{shard}}/{{database}}/{name}_local', '{{replica}}'"
        engine_args = f"{path}, {args}" if args else path
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {name}_local ON CLUSTER {cluster} ("
            f"{match['columns']}) ENGINE = Replicated{engine}({engine_args}){match['tail']}"
        )
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {name} ON CLUSTER {cluster} AS {name}_local "
            f"ENGINE = Distributed({cluster}, currentDatabase(), {name}_local, "
            f"{SHARDING_KEYS[name]})"
        )
    return statements


def cluster_client_settings() -> dict[str, int]:
    """Session settings for a cluster: an insert into a Distributed table returns only once
    every shard has the rows, so the writer's "ClickHouse holds it" record (and the Kafka
    commit after it) is true when it is made."""
    return {"insert_distributed_sync": 1}


_LEVEL_KEYS: dict[str, str] = {
    "rollup_minute": "minute",
    "rollup_hour": "toStartOfHour(minute)",
    # The site's local day: the worker stamps each row with the site's UTC offset at that
    # minute, so DST changes land on the right day.
    "rollup_day": "toDate(minute + tz_offset)",
    "rollup_week": "toMonday(toDate(minute + tz_offset))",
    "rollup_month": "toStartOfMonth(toDate(minute + tz_offset))",
    "rollup_quarter": "toStartOfQuarter(toDate(minute + tz_offset))",
}
LEVEL_COLUMNS: dict[str, str] = {
    "rollup_minute": "minute",
    "rollup_hour": "hour",
    "rollup_day": "day",
    "rollup_week": "week",
    "rollup_month": "month",
    "rollup_quarter": "quarter",
}


# The SETTINGS of an INSERT ... SELECT that squash the whole result into one block, hence one
# part: a part is the unit ClickHouse commits atomically, so a crash can never leave a derive
# (or a span build, a retraction) half-applied.
_ONE_BLOCK = 1 << 50
ONE_PART_SELECT = (
    f"SETTINGS max_insert_threads = 1, min_insert_block_size_rows = {_ONE_BLOCK},"
    f" min_insert_block_size_bytes = {_ONE_BLOCK}"
)


def log_ranges_sql(ranges: dict[int, tuple[int, int]]) -> str:
    """The log rows of source positions in (low, high] per hits partition."""
    return " OR ".join(
        f"(src_partition = {int(p)} AND src_offset > {int(lo)} AND src_offset <= {int(hi)})"
        for p, (lo, hi) in sorted(ranges.items())
    )


def derive_sql(table: str, ranges: dict[int, tuple[int, int]] | None) -> str:
    """Fold the log rows of source positions in (low, high] per hits partition into `table`
    (all of the log when `ranges` is None)."""
    if ranges is not None and not ranges:
        raise ValueError("no ranges to derive")
    where = "1" if ranges is None else log_ranges_sql(ranges)
    time_col = LEVEL_COLUMNS[table]
    # Each log row's samples become one sketch state (Float64: the state's argument type).
    p = VITALS_SKETCH_PARAMS
    vital_states = "".join(
        f",\n               quantileDDMergeState{p}(arrayReduce('quantileDDState{p}', "
        f"arrayMap(x -> toFloat64(x), {v})))"
        for v in VITALS
    )
    return f"""
        INSERT INTO {table}
            (site, {time_col}, dim, value, pageviews, events, visitors, src_partition, src_offset,
             {", ".join(VITALS)})
        SELECT site, {_LEVEL_KEYS[table]} AS bucket, dim, value, sum(pageviews), sum(events),
               uniqCombined64MergeState(arrayReduce('uniqCombined64State', hashes)),
               any(src_partition), max(src_offset){vital_states}
        FROM rollup_log
        WHERE {where}
        GROUP BY site, bucket, dim, value
        {ONE_PART_SELECT}
    """


def coarse_from_day_sql(table: str) -> str:
    """Fill a coarse level (week, month) from rollup_day, in one part: for a store made before
    the level existed, whose log no longer holds the older days. The rows keep their source
    positions, so the level then records exactly what rollup_day records, and the writer's
    catch-up derives the rest from the log as for any level."""
    time_col = LEVEL_COLUMNS[table]
    p = VITALS_SKETCH_PARAMS
    vital_states = "".join(f", quantileDDMergeState{p}({v})" for v in VITALS)
    return f"""
        INSERT INTO {table}
            (site, {time_col}, dim, value, pageviews, events, visitors, src_partition, src_offset,
             {", ".join(VITALS)})
        SELECT site, {COARSE_LEVELS[table]} AS bucket, dim, value, sum(pageviews), sum(events),
               uniqCombined64MergeState(visitors), src_partition, max(src_offset){vital_states}
        FROM rollup_day
        GROUP BY site, bucket, dim, value, src_partition
        {ONE_PART_SELECT}
    """


SESSION_ROLLUP: str = "session_hour"
# Dimension of a session_hour row -> its `sessions` column. Single-valued per session, so a
# session counts in exactly one row per dimension.
SESSION_ROLLUP_COLUMNS: dict[str, str] = {
    TOTAL: "",
    **VISIT_DIMENSIONS,
    "visit:entry_page": "entry_page",
    "visit:exit_page": "exit_page",
}


def rebuild_session_rollup_sql() -> str:
    """session_hour from scratch out of `sessions FINAL` (a store older than the table, or a
    bulk-built one), in one part, with a marker row (site '', value = the partition) per hits
    partition recording the highest source offset `sessions` holds, which is what the writer's
    replay guard reads."""
    pairs = ", ".join(
        f"({quote(dim)}, {column or quote('')})" for dim, column in SESSION_ROLLUP_COLUMNS.items()
    )
    return f"""
        INSERT INTO {SESSION_ROLLUP}
            (site, hour, dim, value, visits, bounces, duration, pageviews, events,
             src_partition, src_offset)
        SELECT site, toStartOfHour(start) AS h, d.1 AS dim, d.2 AS value, count(),
               sum(is_bounce), sum(if(is_bounce != 0, 0, duration)), sum(pageviews),
               sum(events), src_partition, max(src_offset)
        FROM sessions FINAL ARRAY JOIN [{pairs}] AS d
        WHERE is_deleted = 0
        GROUP BY site, h, dim, value, src_partition
        UNION ALL
        SELECT '', toDateTime(0, 'UTC'), '', toString(src_partition), 0, 0, 0, 0, 0,
               src_partition, max(src_offset)
        FROM sessions GROUP BY src_partition
        {ONE_PART_SELECT}
    """


def quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
