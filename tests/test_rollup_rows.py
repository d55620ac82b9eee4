"""Rollup rows: counts, visitor hashes and vitals samples per (site, minute, dim, value)."""

from __future__ import annotations

from typing import Any

import msgpack
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.dimensions import FIELD_OF, TOTAL
from engine.event_rows import EVENT_COLUMNS
from engine.hits import VITALS, Hit
from engine.rollup_rows import (
    LOG_COLUMNS,
    ROLLUP_COLUMNS,
    WorkerOutput,
    build_rollup_rows,
    decode_output,
    encode_output,
)

T0 = 1_790_000_040.0  # a whole minute


def hit(
    name: str, page: str, vid: int, vitals: dict[str, float] | None = None, ts: float = T0
) -> Hit:
    return Hit(
        ts=ts, site="r.test", tz="UTC", name=name, vid=vid, vid_prev=0, hostname="r.test",
        page=page, referrer="", source="", utm_source="", utm_medium="", utm_campaign="",
        utm_content="", utm_term="", device="Mobile", browser="Chrome", browser_version="120.0",
        os="Android", os_version="14", country="DE", props={}, interactive=name != "engagement",
        revenue=None, vitals=vitals,
    )  # fmt: skip


def rows_by_key(hits: list[Hit]) -> dict[tuple[str, str], dict[str, Any]]:
    cols = build_rollup_rows(hits).columns
    assert set(cols) == set(ROLLUP_COLUMNS)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for i in range(len(cols["site"])):
        row = {name: cols[name][i] for name in ROLLUP_COLUMNS}
        assert (row["dim"], row["value"]) not in out
        out[(row["dim"], row["value"])] = row
    return out


def test_engagement_vitals_land_in_every_dimension_without_counts() -> None:
    rows = rows_by_key(
        [
            hit("pageview", "/a", 1),
            hit("engagement", "/a", 1, {"lcp": 2500.0, "cls": 0.12}),
            hit("engagement", "/b", 2, {"lcp": 900.0, "ttfb": 80.0}),
            hit("pageleave", "/c", 3),  # no vitals: nothing at all
        ]
    )
    total = rows[(TOTAL, "")]
    assert (total["events"], total["pageviews"], total["hashes"]) == (1, 1, [1])
    assert total["lcp"] == [2500.0, 900.0] and total["ttfb"] == [80.0]
    assert total["cls"] == [0.12] and total["fcp"] == [] and total["inp"] == []
    a, b = rows[("event:page", "/a")], rows[("event:page", "/b")]
    assert (a["events"], a["hashes"], a["lcp"], a["cls"]) == (1, [1], [2500.0], [0.12])
    # A cell of vitals only: no events, pageviews or visitors.
    assert (b["events"], b["pageviews"], b["hashes"], b["lcp"]) == (0, 0, [], [900.0])
    assert ("event:page", "/c") not in rows
    # Every dimension row of the minute carries the same samples as the total.
    for dim in FIELD_OF:
        values = [row for (d, _), row in rows.items() if d == dim]
        assert sorted(x for row in values for x in row["lcp"]) == [900.0, 2500.0], dim
    assert rows[("visit:device", "Mobile")]["lcp"] == [2500.0, 900.0]


def test_vitals_of_counted_hits_count_too_and_minutes_stay_apart() -> None:
    rows = build_rollup_rows(
        [
            hit("pageview", "/a", 1, {"inp": 40.0}),
            hit("pageview", "/a", 2, {"inp": 60.0}, ts=T0 + 60),
        ]
    ).columns
    totals = [i for i, d in enumerate(rows["dim"]) if d == TOTAL]
    assert sorted((rows["minute"][i], rows["inp"][i]) for i in totals) == [
        (int(T0), [40.0]),
        (int(T0) + 60, [60.0]),
    ]


def test_codec_round_trip_and_older_messages() -> None:
    hits = [hit("pageview", "/a", 1), hit("engagement", "/a", 1, {"fcp": 700.0})]
    rollups = build_rollup_rows(hits)
    out = WorkerOutput.of(3, 42, rollups, [], hits)
    back = decode_output(encode_output(out))
    assert (back.src_partition, back.src_offset) == (3, 42)
    assert back.sites == ["r.test"]
    # The rollup_log block: one array per row, the columns in LOG_COLUMNS order, tagged.
    log = [orjson.loads(line) for line in back.rollups.split(b"\n")]
    assert back.rollups == out.rollups and len(log) == len(rollups)
    columns = {name: [row[i] for row in log] for i, name in enumerate(LOG_COLUMNS)}
    assert {k: columns[k] for k in ROLLUP_COLUMNS} == rollups.columns
    assert set(columns["src_partition"]) == {3} and set(columns["src_offset"]) == {42}
    # The events block: one JSON array per hit (EVENT_COLUMNS), tagged with its source message.
    arrays = [orjson.loads(line) for line in back.events.split(b"\n")]
    assert all(len(a) == len(EVENT_COLUMNS) for a in arrays)
    rows = [dict(zip(EVENT_COLUMNS, a, strict=True)) for a in arrays]
    assert [(r["name"], r["src_partition"], r["src_offset"]) for r in rows] == [
        ("pageview", 3, 42),
        ("engagement", 3, 42),
    ]
    assert rows[1]["fcp"] == 700.0 and rows[0]["fcp"] is None
    # Versions 5 and 4 (events as JSON objects; 4: rollup rows as columns) and 3 (hits as maps)
    # are read into the same blocks.
    objects = b"\n".join(orjson.dumps(row) for row in rows)
    for version, rollup_rows in ((5, {"log": out.rollups}), (4, {"rows": rollups.columns})):
        older = msgpack.packb(
            {"v": version, "src": [3, 42], **rollup_rows, "sessions": [], "events": objects,
             "sites": out.sites},
            use_bin_type=True,
        )  # fmt: skip
        assert decode_output(older) == back, version
    v3 = msgpack.packb(
        {"v": 3, "src": [3, 42], "rows": rollups.columns, "sessions": [], "hits": hits},
        use_bin_type=True,
    )
    assert decode_output(v3) == back
    # A message written by version 2 has no vitals columns: read as empty lists.
    old_rows = {k: v for k, v in rollups.columns.items() if k not in VITALS}
    old = msgpack.packb(
        {"v": 2, "src": [3, 42], "rows": old_rows, "sessions": [], "hits": hits},
        use_bin_type=True,
    )
    decoded = [orjson.loads(line) for line in decode_output(old).rollups.split(b"\n")]
    vitals_at = [LOG_COLUMNS.index(v) for v in VITALS]
    assert all(row[i] == [] for row in decoded for i in vitals_at)
    assert [row[:7] for row in decoded] == [row[:7] for row in log]


def reference_rows(hits: list[Hit]) -> dict[tuple[str, int, str, str], tuple[Any, ...]]:
    """The definition, hit by hit: every counted hit adds to its (site, minute) total and to
    one cell per dimension; every hit's vitals samples go to the same cells."""
    cells: dict[tuple[str, int, str, str], list[Any]] = {}
    for h in hits:
        fields: dict[str, Any] = dict(h)
        vitals = h.get("vitals") or {}
        samples = [(v, float(vitals[v])) for v in VITALS if vitals.get(v) is not None]
        counted = h["name"] not in ("engagement", "pageleave")
        if not counted and not samples:
            continue
        minute = int(h["ts"] // 60) * 60
        keys = [(h["site"], minute, TOTAL, "")] + [
            (h["site"], minute, dim, str(fields.get(f) or "")) for dim, f in FIELD_OF.items()
        ]
        for key in keys:
            cell = cells.setdefault(key, [0, 0, set(), {v: [] for v in VITALS}])
            if counted:
                cell[0] += h["name"] == "pageview"
                cell[1] += 1
                cell[2].add(h["vid"])
            for vital, sample in samples:
                cell[3][vital].append(sample)
    return {
        key: (pv, ev, sorted(hashes), *(vitals[v] for v in VITALS))
        for key, (pv, ev, hashes, vitals) in cells.items()
    }


_hit_strategy = st.builds(
    lambda name, page, vid, minute, second, source, country, vitals, site: {
        **hit(name, page, vid, vitals or None, ts=T0 + minute * 60 + second),
        "source": source,
        "country": country,
        "site": site,
    },
    st.sampled_from(["pageview", "signup", "engagement", "pageleave"]),
    st.sampled_from(["/", "/a", "/b", "/ä", ""]),
    st.integers(1, 6),
    st.integers(0, 2),
    st.floats(0, 59.999),
    st.sampled_from(["", "Google", "Bing"]),
    st.sampled_from(["DE", "", "FR"]),
    st.dictionaries(st.sampled_from(list(VITALS)), st.floats(0, 5000), max_size=2),
    st.sampled_from(["r.test", "s.test"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_hit_strategy, max_size=40))
def test_rows_equal_the_hit_by_hit_definition(hits: list[Hit]) -> None:
    cols = build_rollup_rows(hits).columns
    got = {
        (cols["site"][i], cols["minute"][i], cols["dim"][i], cols["value"][i]): (
            cols["pageviews"][i],
            cols["events"][i],
            cols["hashes"][i],
            *(cols[v][i] for v in VITALS),
        )
        for i in range(len(cols["site"]))
    }
    assert len(got) == len(cols["site"])  # one row per cell
    assert got == reference_rows(hits)
