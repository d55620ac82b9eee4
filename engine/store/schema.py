"""ClickHouse schema: an events table, and minute/hour/day rollups fed from a rollup log.

Workers send rollup deltas (counts plus the visitor hashes of each row); the store inserts
them into `rollup_log`, and materialized views fold them into AggregatingMergeTree tables, so
hour and day levels are derived inside ClickHouse. `rollup_log` keeps the source position
(hits partition, offset) of every delta so that a replay after a crash is recognised and
skipped: see engine/store/writer.py.
"""

from __future__ import annotations

ROLLUP_LEVELS: dict[str, str] = {
    # level -> (table, time column)
    "minute": "rollup_minute",
    "hour": "rollup_hour",
    "day": "rollup_day",
}


MAX_RETENTION_DAYS = 36_500


def ddl(events_retention_days: int = 90) -> list[str]:
    if not 1 <= events_retention_days <= MAX_RETENTION_DAYS:
        raise ValueError(f"events retention must be 1..{MAX_RETENTION_DAYS} days")
    rollup_cols = """
        site LowCardinality(String),
        {time_col},
        dim LowCardinality(String),
        value String,
        pageviews SimpleAggregateFunction(sum, UInt64),
        events SimpleAggregateFunction(sum, UInt64),
        visitors AggregateFunction(uniqCombined64, UInt64)
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
        "CREATE TABLE IF NOT EXISTS rollup_day ("
        + rollup_cols.format(time_col="day Date")
        + ") ENGINE = AggregatingMergeTree ORDER BY (site, dim, day, value)",
        """
        CREATE MATERIALIZED VIEW IF NOT EXISTS rollup_minute_mv TO rollup_minute AS
        SELECT site, minute, dim, value, pageviews, events,
               arrayReduce('uniqCombined64State', hashes) AS visitors
        FROM rollup_log
        """,
        """
        CREATE MATERIALIZED VIEW IF NOT EXISTS rollup_hour_mv TO rollup_hour AS
        SELECT site, toStartOfHour(minute) AS hour, dim, value, pageviews, events,
               arrayReduce('uniqCombined64State', hashes) AS visitors
        FROM rollup_log
        """,
        # The day is the site's local day: the worker stamps each row with the site's UTC
        # offset at that minute, so DST changes land on the right day.
        """
        CREATE MATERIALIZED VIEW IF NOT EXISTS rollup_day_mv TO rollup_day AS
        SELECT site, toDate(minute + tz_offset) AS day, dim, value, pageviews, events,
               arrayReduce('uniqCombined64State', hashes) AS visitors
        FROM rollup_log
        """,
    ]
