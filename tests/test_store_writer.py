"""The store writer's replay guard and its catch-up after a crash between the log insert and
the rollup levels, on a real chDB store (no broker: the consumer is a stand-in)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import orjson
import pytest

from config import load_settings
from engine.event_rows import EVENT_COLUMNS
from engine.hits import Hit
from engine.query import plan_query
from engine.rollup_rows import (
    WorkerOutput,
    build_rollup_rows,
    decode_output,
    encode_output,
    log_block,
)
from engine.store.client import Store
from engine.store.schema import LEVEL_GRANULARITY, ROLLUP_LEVELS, ddl
from engine.store.writer import StoreWriter, finalize_closed_days
from tests.query_helpers import NOW, generate_hits, open_store, run


def hit(page: str, vid: int, ts: float) -> Hit:
    return Hit(
        ts=ts, site="w.test", tz="Europe/Berlin", name="pageview", vid=vid, vid_prev=0,
        hostname="w.test", page=page, referrer="", source="", utm_source="", utm_medium="",
        utm_campaign="", utm_content="", utm_term="", device="Desktop", browser="Firefox",
        browser_version="121.0", os="Linux", os_version="", country="", props={},
        interactive=True, revenue=None, vitals=None,
    )  # fmt: skip


class FakeConsumer:
    commits = 0

    async def commit(self) -> None:
        self.commits += 1


def records(outputs: list[WorkerOutput]) -> dict[Any, list[Any]]:
    return {
        "tp": [SimpleNamespace(value=encode_output(o), partition=o.src_partition, offset=i,
                               timestamp=time.time() * 1000)  # ms, as Kafka's record time
               for i, o in enumerate(outputs)]
    }  # fmt: skip


def output(partition: int, offset: int, hits: list[Hit]) -> WorkerOutput:
    return WorkerOutput.of(partition, offset, build_rollup_rows(hits), [], hits)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(load_settings(data_dir=tmp_path))
    store.open()
    store.migrate()
    yield store
    store.close()


def totals(store: Store) -> list[tuple[Any, ...]]:
    return [
        store.query_sync(
            f"SELECT sum(pageviews), uniqCombined64Merge(visitors) FROM {t} WHERE dim = ''"
        )[0]
        for t in ("rollup_minute", "rollup_hour", "rollup_day")
    ] + [store.query_sync("SELECT count(), uniqExact(vid) FROM events")[0]]


async def test_replays_are_skipped(store: Store) -> None:
    writer = StoreWriter(store._settings, store)
    await writer.reload_applied()
    now = time.time()
    batch = [output(0, o, [hit(f"/{o}", o % 3, now)]) for o in range(10)]
    consumer = FakeConsumer()
    await writer._apply(consumer, records(batch))  # type: ignore[arg-type]
    assert totals(store) == [(10, 3)] * 3 + [(10, 3)]
    # The same messages again (a worker or writer restarted before committing), plus new ones.
    again = [*batch[5:], output(0, 10, [hit("/10", 7, now)])]
    await writer._apply(consumer, records(again))  # type: ignore[arg-type]
    assert totals(store) == [(11, 4)] * 3 + [(11, 4)]
    # A fresh writer (the process restarted) reads the guard back from ClickHouse.
    fresh = StoreWriter(store._settings, store)
    await fresh.reload_applied()
    await fresh._apply(consumer, records(batch))  # type: ignore[arg-type]
    assert totals(store) == [(11, 4)] * 3 + [(11, 4)]


async def test_levels_catch_up_after_a_crash_between_log_and_levels(store: Store) -> None:
    now = time.time()
    writer = StoreWriter(store._settings, store)
    await writer.reload_applied()
    await writer._apply(FakeConsumer(), records([output(1, 0, [hit("/a", 1, now)])]))  # type: ignore[arg-type]
    # Simulate the crash: the log got a message, the levels did not.
    writer.rollup_log.sink.add(log_block(build_rollup_rows([hit("/b", 2, now)]), 1, 1), 1, 1)
    await writer.rollup_log.sink.flush()
    assert totals(store)[0] == (1, 1)
    restarted = StoreWriter(store._settings, store)
    await restarted.reload_applied()
    assert totals(store)[:3] == [(2, 2)] * 3
    await restarted.reload_applied()  # idempotent
    assert totals(store)[:3] == [(2, 2)] * 3


async def test_a_rebalance_during_a_batch_does_not_derive_twice(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiokafka runs the rebalance listener (reload and catch-up) while a batch may be in the
    middle of being applied, e.g. when a frozen writer resumes after its session timed out."""
    now = time.time()
    writer = StoreWriter(store._settings, store)
    await writer.reload_applied()
    real_command = store.command
    rebalances: list[asyncio.Task[None]] = []

    async def command_with_a_rebalance(sql: str) -> None:
        if not rebalances:  # the batch's first level insert: the listener fires right now
            rebalances.append(asyncio.create_task(writer.reload_applied()))
            await asyncio.sleep(0.5)
        await real_command(sql)

    monkeypatch.setattr(store, "command", command_with_a_rebalance)
    batch = [output(2, o, [hit(f"/{o}", o, now)]) for o in range(50)]
    await writer._apply(FakeConsumer(), records(batch))  # type: ignore[arg-type]
    await asyncio.gather(*rebalances)
    assert totals(store) == [(50, 50)] * 3 + [(50, 50)]


def test_a_large_insert_is_one_part(store: Store) -> None:
    """ClickHouse would split an insert of more than ~1M rows into parts, each committed on
    its own; the writer's replay guard needs all or nothing."""
    rows = [{"site": "big.test", "src_partition": 0, "src_offset": i} for i in range(1_100_000)]
    store.insert_rows_sync("rollup_log", rows)
    parts = store.query_sync(
        "SELECT count() FROM system.parts WHERE table = 'rollup_log' AND active"
    )
    assert parts == [(1,)]
    assert store.query_sync("SELECT count() FROM rollup_log") == [(1_100_000,)]


async def test_vitals_reach_every_level_as_mergeable_sketches(store: Store) -> None:
    """Engagement hits carry the vitals: they land in the levels' quantile states (for each
    dimension) without counting as events; an old store gets the columns by migrate."""
    now = time.time()
    lcps = [float(100 + 37 * i) for i in range(120)]
    batch = []
    for i, lcp in enumerate(lcps):
        view = hit("/v", i, now)
        vitals = {**hit("/v", i, now), "name": "engagement", "vitals": {"lcp": lcp, "cls": 0.1}}
        batch.append(output(3, i, [view, Hit(**vitals)]))  # type: ignore[typeddict-item]
    writer = StoreWriter(store._settings, store)
    await writer.reload_applied()
    await writer._apply(FakeConsumer(), records(batch))  # type: ignore[arg-type]
    assert totals(store) == [(120, 120)] * 3 + [(240, 120)]
    ordered = sorted(lcps)
    rank = 0.75 * (len(ordered) - 1)
    low = int(rank)
    exact = ordered[low] + (ordered[low + 1] - ordered[low]) * (rank - low)
    for table in ("rollup_minute", "rollup_hour", "rollup_day"):
        for dim, value in (("", ""), ("event:page", "/v"), ("visit:browser", "Firefox")):
            ((p75, cls, events),) = store.query_sync(
                "SELECT quantileDDMerge(0.005, 0.75)(lcp), quantileDDMerge(0.005, 0.75)(cls),"
                f" sum(events) FROM {table} WHERE dim = '{dim}' AND value = '{value}'"
            )
            assert abs(p75 - exact) / exact < 0.01, (table, dim, p75, exact)
            assert abs(cls - 0.1) < 0.001 and events == 120
    # Migrating again (e.g. a store made before these columns) is a no-op.
    store.migrate()


async def test_an_older_store_gets_the_coarse_levels_and_small_granules(store: Store) -> None:
    """A store made before the week and month levels (its log may have dropped old days) and
    with ClickHouse's default granules: migrate rebuilds rollup_day, the writer fills week and
    month from it, and from then on every level takes each message exactly once."""
    now = time.time()
    writer = StoreWriter(store._settings, store)
    await writer.reload_applied()
    first = [output(0, o, [hit(f"/{o}", o % 4, now)]) for o in range(6)]
    await writer._apply(FakeConsumer(), records(first))  # type: ignore[arg-type]
    # Make it an older store.
    (create,) = [s for s in ddl() if "IF NOT EXISTS rollup_day (" in s]
    old = create.replace("IF NOT EXISTS rollup_day (", "rollup_day_old (")
    store.command_sync(old.split(" SETTINGS ")[0])
    store.command_sync("INSERT INTO rollup_day_old SELECT * FROM rollup_day")
    store.command_sync("EXCHANGE TABLES rollup_day AND rollup_day_old")
    store.command_sync("DROP TABLE rollup_day_old")
    for table in ("rollup_week", "rollup_month", "rollup_quarter"):
        store.command_sync(f"DROP TABLE {table}")

    def granularity(table: str) -> str:
        ((engine,),) = store.query_sync(
            f"SELECT engine_full FROM system.tables WHERE name = '{table}'"
        )
        return str(engine).split("index_granularity = ")[1].split(",")[0]

    assert granularity("rollup_day") == "8192"
    store.migrate()
    assert granularity("rollup_day") == granularity("rollup_week") == str(LEVEL_GRANULARITY)
    restarted = StoreWriter(store._settings, store)
    await restarted.reload_applied()

    def levels() -> list[tuple[Any, ...]]:
        return [
            store.query_sync(
                f"SELECT sum(pageviews), uniqCombined64Merge(visitors), max(src_offset) FROM {t}"
                " WHERE dim = 'event:page'"
            )[0]
            for t in ROLLUP_LEVELS.values()
        ]

    assert levels() == [(6, 4, 5)] * len(ROLLUP_LEVELS)
    # Replays of the first messages and new ones: each counted once at every level.
    again = [*first[3:], *(output(0, o, [hit(f"/{o}", o, now)]) for o in range(6, 9))]
    await restarted._apply(FakeConsumer(), records(again))  # type: ignore[arg-type]
    assert levels() == [(9, 7, 8)] * len(ROLLUP_LEVELS)
    store.migrate()  # nothing left to rebuild
    assert levels() == [(9, 7, 8)] * len(ROLLUP_LEVELS)


async def test_rollup_log_columns_arrive_intact(store: Store) -> None:
    # The log is inserted as the worker's blocks (JSONCompactEachRow): every column lands in
    # its place, the largest visitor hashes and hostile text included.
    now = time.time()
    hostile = ['/q?a="1"&b=\\n', "/ünïcødé/😀", "/line\nbreak", "/tab\there", ""]
    hits = [hit(page, (1 << 64) - 1 - i, now + i) for i, page in enumerate(hostile)]
    hits[0]["vitals"] = {"lcp": 1234.5, "cls": 0.125}
    sink = StoreWriter(store._settings, store).rollup_log.sink
    batch = build_rollup_rows(hits)
    later = build_rollup_rows(hits[:1])
    sink.add(log_block(batch, 3, 41), 3, 41)
    sink.add(log_block(later, 3, 42), 3, 42)
    rows = len(batch.columns["site"]) + len(later.columns["site"])
    assert sink.pending == rows
    assert await sink.flush() == rows
    stored = store.query_sync(
        "SELECT value, hashes, lcp, cls, src_partition, src_offset FROM rollup_log"
        " WHERE dim = 'event:page' AND src_offset = 41 ORDER BY value"
    )
    expected = sorted(
        (h["page"], [h["vid"]], [1234.5] if h["vitals"] else [], [0.125] if h["vitals"] else [])
        for h in hits
    )
    assert [(v, list(hs), list(lcp), list(cls)) for v, hs, lcp, cls, _, _ in stored] == expected
    assert {(p, o) for *_, p, o in stored} == {(3, 41)}
    assert store.query_sync("SELECT count() FROM rollup_log")[0][0] == rows
    assert sink.pending == 0


async def test_events_columns_arrive_intact(store: Store) -> None:
    # Events are inserted as the worker's blocks (JSONCompactEachRow, EVENT_COLUMNS): every
    # column lands in its place, including a block from a version 5 worker (JSON objects).
    now = 1_800_000_000.1239
    hostile = ['/q?a="1"&b=\\n', "/ünïcødé/😀", "/line\nbreak", "/tab\there", ""]
    hits = [hit(page, (1 << 64) - 1 - i, now + i) for i, page in enumerate(hostile)]
    hits[0]["vitals"] = {"lcp": 1234.5, "cls": 0.125}
    hits[1]["revenue"] = {"amount": "19.9999", "currency": "EUR"}
    hits[2]["props"] = {"plan": "pro\n", "ключ": "значение"}
    hits[3]["interactive"] = False
    block = output(3, 41, hits).events
    objects = b"\n".join(
        orjson.dumps(dict(zip(EVENT_COLUMNS, orjson.loads(line), strict=True)))
        for line in output(3, 42, hits[:1]).events.split(b"\n")
    )
    v5 = msgpack.packb(
        {"v": 5, "src": [3, 42], "log": b"", "sessions": [], "events": objects, "sites": []},
        use_bin_type=True,
    )
    sink = StoreWriter(store._settings, store).events.sink
    sink.add(block, 3, 41)
    sink.add(decode_output(v5).events, 3, 42)
    assert await sink.flush() == len(hits) + 1
    stored = store.query_sync(
        "SELECT page, vid, toUnixTimestamp64Milli(ts), props, interactive,"
        " toString(revenue_amount), revenue_currency, lcp, cls, ttfb, src_partition, src_offset"
        " FROM events ORDER BY src_offset, ts"
    )
    expected = [
        (
            h["page"], h["vid"], int(h["ts"] * 1000), h["props"], int(h["interactive"]),
            "20" if h["revenue"] else None, "EUR" if h["revenue"] else "",
            1234.5 if h["vitals"] else None, 0.125 if h["vitals"] else None, None, 3, offset,
        )
        for offset, h in [*((41, h) for h in hits), (42, hits[0])]
    ]  # fmt: skip
    assert [tuple(row) for row in stored] == expected


# --- day_totals: closed days finalized, and kept equal to rollup_day when late data arrive ---

DAY = 86_400


def by_day(store: Store, now: datetime) -> dict[str, tuple[int, int]]:
    """Visitors and pageviews by day of November through the planner (day_totals for the days
    it holds)."""
    plan = plan_query(
        {"site_id": "w.test", "metrics": ["visitors", "pageviews"],
         "date_range": ["2026-11-01", "2026-11-30"], "dimensions": ["time:day"]},
        timezone="Europe/Berlin", now=now, first_day=None,
    )  # fmt: skip
    assert any("day_totals FINAL" in s.sql for s in plan.statements)
    answer = run(store._client, plan)
    return {r["dimensions"][0]: tuple(r["metrics"]) for r in answer["results"]}


def exact_by_day(visitors_of_day: dict[str, set[int]]) -> dict[str, tuple[int, int]]:
    return {d: (len(v), len(v)) for d, v in sorted(visitors_of_day.items()) if v}


def finalized(store: Store) -> dict[str, int]:
    rows = store.query_sync(
        "SELECT toString(day), visitors FROM day_totals FINAL WHERE is_deleted = 0"
    )
    return dict(rows)  # type: ignore[arg-type]


async def test_closed_days_are_finalized_and_late_data_reopen_them(store: Store) -> None:
    """Oracle: the distinct visitors of the generated hits of each local day (Berlin). Every
    visitor has one pageview a day, so pageviews equal visitors."""
    today = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    clock = [today]
    writer = StoreWriter(store._settings, store, now=lambda: clock[0])
    await writer.reload_applied()
    # Noon UTC is the same local day in Berlin: days 1..5 before today, plus today.
    noon = datetime(2026, 11, 20, 12, 0, tzinfo=UTC).timestamp()
    seen: dict[str, set[int]] = {}
    offset = 0

    async def send(days_ago: int, visitors: range) -> None:
        nonlocal offset
        day = (datetime.fromtimestamp(noon, UTC) - timedelta(days=days_ago)).date().isoformat()
        seen.setdefault(day, set()).update(visitors)
        hits = [hit("/", v, noon - days_ago * DAY + i) for i, v in enumerate(visitors)]
        await writer._apply(FakeConsumer(), records([output(0, offset, hits)]))  # type: ignore[arg-type]
        offset += 1

    for days_ago in range(6):
        await send(days_ago, range(days_ago * 7, days_ago * 7 + 20 + days_ago))
    # Closed at 15:00 UTC: the days before yesterday (yesterday ends at UTC-12 only at noon
    # today, plus an hour of grace: it closes at 13:00 today, so it is closed too).
    assert sorted(finalized(store)) == sorted(d for d in seen if d < "2026-11-20")
    assert by_day(store, today) == exact_by_day(seen)
    # Late data for a closed day (an import, a worker catching up): reopened, then finalized
    # again with them, in the same batch.
    await send(3, range(500, 530))
    assert finalized(store)["2026-11-17"] == len(seen["2026-11-17"]) == 20 + 3 + 30
    assert by_day(store, today) == exact_by_day(seen)
    # A day later, today closes too.
    clock[0] = today + timedelta(days=1)
    await send(0, range(900, 905))
    assert "2026-11-20" in finalized(store)
    assert by_day(store, clock[0]) == exact_by_day(seen)


async def test_a_crash_between_retracting_and_finalizing_again_stays_exact(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    noon_before = datetime(2026, 11, 18, 12, 0, tzinfo=UTC).timestamp()
    writer = StoreWriter(store._settings, store, now=lambda: now)
    await writer.reload_applied()
    first = [hit("/", v, noon_before + v) for v in range(10)]
    await writer._apply(FakeConsumer(), records([output(0, 0, first)]))  # type: ignore[arg-type]
    assert finalized(store) == {"2026-11-18": 10}

    async def crash(pairs: list[Any]) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(writer.day_totals, "refinalize", crash)
    late = [hit("/", v, noon_before + v) for v in range(5, 25)]
    with pytest.raises(RuntimeError):
        await writer._apply(FakeConsumer(), records([output(0, 1, late)]))  # type: ignore[arg-type]
    # Retracted, rollup_day has the late hits: the query merges its sketches instead.
    assert finalized(store) == {}
    assert by_day(store, now) == {"2026-11-18": (25, 30)}
    restarted = StoreWriter(store._settings, store, now=lambda: now)
    await restarted.reload_applied()
    assert finalized(store) == {"2026-11-18": 25}
    assert by_day(store, now) == {"2026-11-18": (25, 30)}
    # Retracted rows before the crash are history: a replay changes nothing.
    await restarted._apply(FakeConsumer(), records([output(0, 1, late)]))  # type: ignore[arg-type]
    assert finalized(store) == {"2026-11-18": 25}


# --- month spans: built as days close, rebuilt when late data reach a closed day ---


def across_months(store: Store, now: datetime) -> tuple[list[int], dict[str, int], str]:
    """[visitors, pageviews] from 2026-10-25 to today and visitors by page, through the
    planner, and the SQL of the aggregate."""
    common = {"site_id": "w.test", "date_range": ["2026-10-25", "2026-11-20"]}
    kwargs: dict[str, Any] = {"timezone": "Europe/Berlin", "now": now, "first_day": None}
    total = plan_query({**common, "metrics": ["visitors", "pageviews"]}, **kwargs)
    pages = plan_query({**common, "metrics": ["visitors"], "dimensions": ["event:page"]}, **kwargs)
    by_page = {r["dimensions"][0]: r["metrics"][0] for r in run(store._client, pages)["results"]}
    return run(store._client, total)["results"][0]["metrics"], by_page, total.statements[0].sql


def built_spans(store: Store) -> set[tuple[int, str]]:
    rows = store.query_sync(
        "SELECT kind, toString(day) FROM rollup_span FINAL WHERE dim = '' AND is_deleted = 0"
    )
    return {(int(k), str(d)) for k, d in rows}


async def test_month_spans_stay_equal_to_their_days_through_late_data_and_a_crash(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Oracle: the distinct visitors (and pageviews: one each) of the generated hits, overall
    and per page. Noon UTC is the same local day in Berlin."""
    now = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)  # days before 2026-11-20 are closed
    writer = StoreWriter(store._settings, store, now=lambda: now)
    await writer.reload_applied()
    pages_of: dict[str, set[int]] = {}
    offset = 0

    async def send(day: str, visitors: range, page: str, w: StoreWriter = writer) -> None:
        nonlocal offset
        noon = datetime.fromisoformat(f"{day}T12:00:00+00:00").timestamp()
        pages_of.setdefault(page, set()).update(visitors)
        hits = [hit(page, v, noon + i) for i, v in enumerate(visitors)]
        await w._apply(FakeConsumer(), records([output(0, offset, hits)]))  # type: ignore[arg-type]
        offset += 1

    def oracle() -> tuple[list[int], dict[str, int]]:
        everyone = set().union(*pages_of.values())
        pageviews = sum(len(v) for v in pages_of.values())
        return [len(everyone), pageviews], {p: len(v) for p, v in pages_of.items()}

    for i, day in enumerate(["2026-10-25", "2026-10-31", "2026-11-02", "2026-11-10", "2026-11-19"]):
        await send(day, range(i * 10, i * 10 + 15), f"/{i % 3}")
    await send("2026-11-20", range(100, 104), "/today")
    # The suffix of October from the range's first day and November's prefix to the last
    # closed day are built, and the query reads them.
    assert {(1, "2026-10-25"), (0, "2026-11-19")} <= built_spans(store)
    totals, by_page, sql = across_months(store, now)
    assert "FROM rollup_span FINAL" in sql
    assert (totals, by_page) == oracle()
    # Late data for a closed day: its month's spans are retracted, then built again with them.
    await send("2026-11-10", range(200, 230), "/late")
    await send("2026-10-31", range(0, 5), "/late")
    assert {(1, "2026-10-25"), (0, "2026-11-19")} <= built_spans(store)
    assert across_months(store, now)[:2] == oracle()

    async def crash(pairs: list[Any]) -> None:
        raise RuntimeError("killed")

    # A crash between retracting and building again: the days are read instead (from
    # rollup_day, which has the batch; the week level would lag until the writer's next
    # coarse derive).
    monkeypatch.setattr(writer.day_totals, "refinalize", crash)
    with pytest.raises(RuntimeError):
        await send("2026-11-02", range(300, 340), "/crash")
    assert (0, "2026-11-19") not in built_spans(store)
    assert (1, "2026-10-25") in built_spans(store)  # another month: untouched
    assert across_months(store, now)[:2] == oracle()
    restarted = StoreWriter(store._settings, store, now=lambda: now)
    await restarted.reload_applied()
    assert (0, "2026-11-19") in built_spans(store)
    assert across_months(store, now)[:2] == oracle()


async def test_year_prefixes_stay_equal_to_their_days_through_late_data_and_a_crash(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Oracle: the distinct visitors (and pageviews: one each) of the generated hits from
    January to the last closed day, overall and per page."""
    now = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)  # days before 2026-11-20 are closed
    writer = StoreWriter(store._settings, store, now=lambda: now)
    await writer.reload_applied()
    pages_of: dict[str, set[int]] = {}
    offset = 0

    async def send(day: str, visitors: range, page: str, w: StoreWriter = writer) -> None:
        nonlocal offset
        noon = datetime.fromisoformat(f"{day}T12:00:00+00:00").timestamp()
        pages_of.setdefault(page, set()).update(visitors)
        hits = [hit(page, v, noon + i) for i, v in enumerate(visitors)]
        await w._apply(FakeConsumer(), records([output(0, offset, hits)]))  # type: ignore[arg-type]
        offset += 1

    def year_to_date() -> tuple[list[int], dict[str, int], str]:
        common = {"site_id": "w.test", "date_range": ["2026-01-01", "2026-11-19"]}
        kwargs: dict[str, Any] = {"timezone": "Europe/Berlin", "now": now, "first_day": None}
        total = plan_query({**common, "metrics": ["visitors", "pageviews"]}, **kwargs)
        pages = plan_query(
            {**common, "metrics": ["visitors"], "dimensions": ["event:page"]}, **kwargs
        )
        by_page = {
            r["dimensions"][0]: r["metrics"][0] for r in run(store._client, pages)["results"]
        }
        return run(store._client, total)["results"][0]["metrics"], by_page, total.statements[0].sql

    def oracle() -> tuple[list[int], dict[str, int]]:
        everyone = set().union(*pages_of.values())
        pageviews = sum(len(v) for v in pages_of.values())
        return [len(everyone), pageviews], {p: len(v) for p, v in pages_of.items()}

    for i, day in enumerate(["2026-01-05", "2026-03-10", "2026-06-30", "2026-10-31", "2026-11-19"]):
        await send(day, range(i * 10, i * 10 + 15), f"/{i % 3}")
    # January to October is one year prefix; the query reads it and November's prefix.
    assert {(2, "2026-02-01"), (2, "2026-10-01"), (0, "2026-11-19")} <= built_spans(store)
    totals, by_page, sql = year_to_date()
    assert "kind = 2 AND day = {p" in sql
    assert (totals, by_page) == oracle()
    # Late data for a closed day: the prefixes of its year are retracted and built again.
    await send("2026-03-10", range(500, 530), "/late")
    assert {(2, "2026-03-01"), (2, "2026-10-01")} <= built_spans(store)
    assert year_to_date()[:2] == oracle()

    async def crash(pairs: list[Any]) -> None:
        raise RuntimeError("killed")

    # A crash between retracting and building again: quarters and months are read instead,
    # once the writer has derived them (as for any range reading the coarse levels).
    monkeypatch.setattr(writer.day_totals, "refinalize", crash)
    with pytest.raises(RuntimeError):
        await send("2026-06-30", range(600, 640), "/crash")
    assert not any(kind == 2 for kind, _ in built_spans(store))
    await writer.derive_coarse()
    assert year_to_date()[:2] == oracle()
    restarted = StoreWriter(store._settings, store, now=lambda: now)
    await restarted.reload_applied()
    assert (2, "2026-10-01") in built_spans(store)
    assert year_to_date()[:2] == oracle()
    # A store from before the year prefixes gets them at start.
    store.command_sync("ALTER TABLE rollup_span DELETE WHERE kind = 2 SETTINGS mutations_sync = 2")
    assert not any(kind == 2 for kind, _ in built_spans(store))
    upgraded = StoreWriter(store._settings, store, now=lambda: now)
    await upgraded.reload_applied()
    assert {(2, "2026-03-01"), (2, "2026-10-01")} <= built_spans(store)
    totals, by_page, sql = year_to_date()
    assert "kind = 2 AND day = {p" in sql
    assert (totals, by_page) == oracle()


def pageviews_since(store: Store, now: datetime, first: str) -> tuple[int, str]:
    """Pageviews from `first` to today (Berlin) through the planner, and the SQL it ran. By
    week: weekly buckets read the week level, never month spans (which the writer builds as
    days close, not with the coarse levels)."""
    today = now.astimezone(ZoneInfo("Europe/Berlin")).date().isoformat()
    plan = plan_query(
        {"site_id": "w.test", "metrics": ["pageviews"], "date_range": [first, today],
         "dimensions": ["time:week"]},
        timezone="Europe/Berlin", now=now, first_day=None,
    )  # fmt: skip
    rows = run(store._client, plan)["results"]
    return sum(r["metrics"][0] for r in rows), plan.statements[0].sql


async def test_coarse_levels_wait_for_their_interval_or_an_idle_writer(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, store_coarse_levels_seconds=3600)
    store = Store(settings)
    store.open()
    store.migrate()
    writer = StoreWriter(settings, store)
    await writer.reload_applied()
    now = datetime.now(UTC)
    ts = now.timestamp()
    weeks_ago = ts - 15 * DAY  # inside a whole week of the range below, long closed

    def level_pageviews(table: str) -> int:
        return int(store.query_sync(f"SELECT sum(pageviews) FROM {table} WHERE dim = ''")[0][0])

    # The first batch after start derives every level; the next ones only the fine levels.
    await writer._apply(FakeConsumer(), records([output(0, 0, [hit("/a", 1, weeks_ago)])]))  # type: ignore[arg-type]
    assert level_pageviews("rollup_week") == level_pageviews("rollup_day") == 1
    version = writer.data_version("w.test")
    batch = [output(0, 1, [hit("/late", 2, weeks_ago), hit("/b", 3, ts), hit("/c", 4, ts)])]
    await writer._apply(FakeConsumer(), records(batch))  # type: ignore[arg-type]
    assert level_pageviews("rollup_day") == 4
    assert level_pageviews("rollup_week") == level_pageviews("rollup_month") == 1
    assert writer.data_version("w.test") != version
    # A range that ends today reads whole past weeks from their level, today from the days:
    # today's hits count at once, while the coarse levels wait.
    first = (now - timedelta(days=35)).astimezone(ZoneInfo("Europe/Berlin")).date().isoformat()
    counted, sql = pageviews_since(store, now, first)
    assert "FROM rollup_week" in sql
    assert counted == 3  # the late hit for a closed week reaches it with the coarse levels
    # Idle, the writer derives them at once; cached answers of the site move again.
    version = writer.data_version("w.test")
    await writer.derive_coarse()
    for table in ("rollup_week", "rollup_month", "rollup_quarter"):
        assert level_pageviews(table) == 4, table
    assert pageviews_since(store, now, first)[0] == 4
    assert writer.data_version("w.test") != version
    store.close()


def _spans_and_totals(query: Any) -> tuple[list[Any], list[Any]]:
    spans = query(
        "SELECT site, kind, day, dim, value, pageviews, events, finalizeAggregation(visitors) "
        "FROM rollup_span FINAL WHERE is_deleted = 0 ORDER BY ALL"
    )
    totals = query(
        "SELECT site, day, visitors, pageviews, events FROM day_totals FINAL "
        "WHERE is_deleted = 0 ORDER BY ALL"
    )
    return [tuple(r) for r in spans], [tuple(r) for r in totals]


def test_bulk_finalize_a_month_at_a_time_equals_one_statement(tmp_path: Path) -> None:
    # open_store builds every span and day total of the closed days in one statement each.
    client = open_store(tmp_path / "clickhouse", generate_hits())
    expected = _spans_and_totals(lambda sql: client.query(sql).result_rows)
    client.close()
    months = {(site, day.replace(day=1)) for site, _, day, *_ in expected[0]}
    assert len({m for _, m in months}) > 12 and len(expected[1]) > 100
    store = Store(load_settings(data_dir=tmp_path))
    store.open()
    try:
        finalize_closed_days(store, NOW)  # truncates both, then a month at a time
        assert _spans_and_totals(store.query_sync) == expected
    finally:
        store.close()
