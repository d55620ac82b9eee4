"""session_hour deltas (pure): replacing stored versions by a batch's newest versions."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.query.cache import ResultCache
from engine.query.sql import Statement
from engine.store.schema import SESSION_ROLLUP_COLUMNS
from engine.store.session_rollup import deltas, stored_versions_statements


def row(sid: int, version: int, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "session_id": sid,
        "site": "a.test",
        "start": 7200.5,
        "version": version,
        "is_deleted": 0,
        "is_bounce": 1,
        "duration": 0,
        "pageviews": 1,
        "events": 1,
        "src_partition": 0,
        "entry_page": "/",
        "exit_page": "/",
    }
    for column in ("source", "referrer", "utm_source", "utm_medium", "utm_campaign"):
        base[column] = ""
    for column in ("utm_content", "utm_term", "device", "browser", "browser_version", "os"):
        base[column] = ""
    base.update(os_version="", country="DE")
    base.update(over)
    return base


def totals(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], list[int]]:
    out: dict[tuple[str, str, int], list[int]] = defaultdict(lambda: [0] * 5)
    for r in rows:
        if r["site"]:
            cell = out[(r["dim"], r["value"], r["hour"])]
            for i, m in enumerate(("visits", "bounces", "duration", "pageviews", "events")):
                cell[i] += r[m]
    return {k: v for k, v in out.items() if any(v)}


def test_new_session_adds_one_visit_per_dimension() -> None:
    got = totals(deltas({}, {1: row(1, 5)}, {0: 5}))
    assert got[("", "", 7200)] == [1, 1, 0, 1, 1]
    assert got[("visit:country", "DE", 7200)] == [1, 1, 0, 1, 1]
    assert got[("visit:exit_page", "/", 7200)] == [1, 1, 0, 1, 1]


def test_update_retracts_the_stored_version() -> None:
    old = row(1, 5)
    new = row(1, 9, is_bounce=0, duration=40, pageviews=3, events=3, exit_page="/b")
    got = totals(deltas({1: old}, {1: new}, {0: 9}))
    assert got[("", "", 7200)] == [0, -1, 40, 2, 2]
    assert got[("visit:exit_page", "/", 7200)] == [-1, -1, 0, -1, -1]
    assert got[("visit:exit_page", "/b", 7200)] == [1, 0, 40, 3, 3]


def test_deleted_and_stale_versions() -> None:
    assert totals(deltas({1: row(1, 5)}, {1: row(1, 6, is_deleted=1)}, {0: 6}))[("", "", 7200)] == [
        -1,
        -1,
        0,
        -1,
        -1,
    ]
    # An older version after a newer one changes nothing (FINAL keeps the newer).
    assert totals(deltas({1: row(1, 9)}, {1: row(1, 5, country="FR")}, {0: 9})) == {}


def test_every_partition_gets_a_marker_row() -> None:
    rows = deltas({}, {}, {0: 3, 2: 8})
    assert {(r["site"], r["value"], r["src_partition"], r["src_offset"]) for r in rows} == {
        ("", "0", 0, 3),
        ("", "2", 2, 8),
    }


def test_result_cache_is_an_lru_keyed_by_version() -> None:
    cache = ResultCache(2)
    k1 = cache.key("a", [Statement("SELECT 1", {})], (0, 1), b"{}")
    cache.put(k1, b"one")
    assert cache.get(k1) == b"one"
    assert cache.get(cache.key("a", [Statement("SELECT 1", {})], (0, 2), b"{}")) is None
    cache.put(cache.key("a", [Statement("SELECT 2", {})], (0, 1), b"{}"), b"two")
    cache.put(cache.key("a", [Statement("SELECT 3", {})], (0, 1), b"{}"), b"three")
    assert cache.get(k1) is None and len(cache) == 2
    assert ResultCache(0).get(k1) is None


def test_a_large_batch_looks_up_its_stored_versions_in_statements_clickhouse_accepts() -> None:
    """A batch of 12,001 sessions with the longest ids: every id in exactly one lookup, each
    lookup's text within ClickHouse's max_query_size (262,144 bytes)."""
    rows = [
        {"session_id": 2**63 - 1 - i, "site": f"s{i % 7}.test", "start": 86400.0 * (i % 40)}
        for i in range(12_001)
    ]
    statements = stored_versions_statements(rows)
    assert len(statements) == 3
    seen: list[int] = []
    for statement in statements:
        assert len(statement.sql.encode()) < 262_144
        ids = statement.sql.split("session_id IN (")[1].split(")")[0]
        seen += [int(i) for i in ids.split(", ")]
    assert sorted(seen) == sorted(int(r["session_id"]) for r in rows)


def _reference(
    old: dict[int, dict[str, Any]], new: dict[int, dict[str, Any]]
) -> dict[tuple[str, str, int], list[int]]:
    """The plain fold: minus every stored version's cells, plus every new version's."""
    out: dict[tuple[str, str, int], list[int]] = defaultdict(lambda: [0] * 5)
    for sid, version in new.items():
        stored = old.get(sid)
        if stored is not None and stored["version"] > version["version"]:
            continue
        for sign, r in ((-1, stored), (1, version)):
            if r is None or r["is_deleted"]:
                continue
            bounce = 1 if r["is_bounce"] else 0
            metrics = [1, bounce, 0 if bounce else r["duration"], r["pageviews"], r["events"]]
            hour = int(r["start"] // 3600) * 3600
            for dim, column in SESSION_ROLLUP_COLUMNS.items():
                cell = out[(dim, str(r[column]) if column else "", hour)]
                for i, m in enumerate(metrics):
                    cell[i] += sign * m
    return {k: v for k, v in out.items() if any(v)}


_versions = st.builds(
    lambda version, deleted, bounce, duration, pageviews, start, country, page, source: row(
        0,
        version,
        is_deleted=deleted,
        is_bounce=bounce,
        duration=duration,
        pageviews=pageviews,
        events=pageviews + 1,
        start=start,
        country=country,
        entry_page=page,
        exit_page=page,
        source=source,
    ),
    st.integers(0, 5),
    st.sampled_from([0, 0, 0, 1]),
    st.sampled_from([0, 1]),
    st.integers(0, 4000),
    st.integers(0, 5),
    st.sampled_from([7200.5, 7300.0, 10800.0]),
    st.sampled_from(["DE", "FR"]),
    st.sampled_from(["/", "/a"]),
    st.sampled_from(["", "Google"]),
)


@settings(max_examples=300)
@given(st.dictionaries(st.integers(1, 6), st.tuples(st.none() | _versions, _versions)))
def test_deltas_equal_the_plain_fold_of_retractions_and_additions(
    sessions: dict[int, tuple[dict[str, Any] | None, dict[str, Any]]],
) -> None:
    old = {sid: {**o, "session_id": sid} for sid, (o, _) in sessions.items() if o is not None}
    new = {sid: {**n, "session_id": sid} for sid, (_, n) in sessions.items()}
    rows = deltas(old, new, {0: 9})
    assert totals(rows) == _reference(old, new)
    # No cell that sums to nothing is written.
    metrics = ("visits", "bounces", "duration", "pageviews", "events")
    assert all(any(r[m] for m in metrics) for r in rows if r["site"])
