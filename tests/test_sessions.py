"""Session rules: VisitorSessions against a from-scratch reference walk, in any arrival order."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.hits import Hit
from engine.sessions import (
    MAX_RETAINED_EVENTS,
    SESSION_COLUMNS,
    SESSION_TIMEOUT,
    Outcome,
    SessionEvent,
    SessionRow,
    VisitorSessions,
    deleted_row,
    session_id,
)
from engine.store.schema import ddl

SITE = "example.com"
BASE_MS = int(dt.datetime(2026, 11, 20, 10, tzinfo=dt.UTC).timestamp()) * 1000
V1 = 0x1234_5678_9ABC_DEF0
V2 = 0xFEDC_BA98_7654_3210
INFINITE = 10.0**9
MIN = 60_000  # ms
SESSION_ONLY = ("engagement", "pageleave")
PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def at(ms: int) -> float:
    return (BASE_MS + ms) / 1000


def ev(
    ms: int,
    name: str = "pageview",
    page: str = "/",
    *,
    seq: int = 0,
    interactive: bool = True,
    vid: int = V1,
    source: str = "",
    props: tuple[tuple[str, str], ...] = (),
    hostname: str = "example.com",
) -> SessionEvent:
    return SessionEvent(
        ts=at(ms),
        name=name,
        page=page,
        hostname=hostname,
        interactive=interactive,
        vid=vid,
        seq=seq,
        props=props,
        attrs=(("source", source), ("country", "DE")),
    )


# --- the reference: sort everything, walk once, build rows from the grouped events ---


def ref_id(site: str, vid: int, start_ms: int) -> int:
    digest = hashlib.blake2b(f"{site}|{vid}|{start_ms}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def reference(events: list[SessionEvent], site: str = SITE) -> dict[int, SessionRow]:
    groups: list[list[SessionEvent]] = []
    end = 0
    for e in sorted(events, key=lambda e: (e.ts, e.seq)):
        t = round(e.ts * 1000)
        if groups and t - end <= SESSION_TIMEOUT * 1000:
            groups[-1].append(e)
            end = max(end, t)
        elif e.name not in SESSION_ONLY:
            groups.append([e])
            end = t
        # else: a session-only event with nothing live to extend
    rows: dict[int, SessionRow] = {}
    for group in groups:
        first = group[0]
        counted = [e for e in group if e.name not in SESSION_ONLY]
        views = [e for e in counted if e.name == "pageview"]
        start_ms = round(first.ts * 1000)
        row = SessionRow(
            session_id=ref_id(site, first.vid, start_ms),
            vid=first.vid,
            start=start_ms / 1000,
            end=max(round(e.ts * 1000) for e in group) / 1000,
            pageviews=len(views),
            events=len(counted),
            interactive_events=sum(e.interactive for e in counted),
            entry_page=first.page,
            exit_page=views[-1].page if views else first.page,
            hostname=first.hostname,
            attrs=first.attrs,
            pages=tuple(sorted({e.page for e in counted})),
            names=tuple(sorted({e.name for e in counted})),
            hostnames=tuple(sorted({e.hostname for e in counted})),
            props=tuple(sorted({p for e in counted for p in e.props})),
        )
        rows[row.session_id] = row
    return rows


# --- driving VisitorSessions like the worker does ---


class Sink:
    """What ClickHouse ends up holding: the latest upsert per id, minus deleted ids."""

    def __init__(self) -> None:
        self.rows: dict[int, SessionRow] = {}
        self.late: list[SessionEvent] = []

    def take(self, outcome: Outcome) -> None:
        for row in outcome.upserts:
            self.rows[row.session_id] = row
        for row in outcome.deleted:
            del self.rows[row.session_id]
        self.late.extend(outcome.late_events)


def feed(
    state: VisitorSessions,
    batches: list[list[SessionEvent]],
    lateness: float = INFINITE,
    sink: Sink | None = None,
    first_offset: int = 0,
) -> Sink:
    sink = sink if sink is not None else Sink()
    for i, batch in enumerate(batches):
        sink.take(state.apply(batch, first_offset + i, lateness))
    return sink


@st.composite
def streams(draw: st.DrawFn, max_events: int = 14) -> list[list[SessionEvent]]:
    """Events with gaps around the timeout, arriving in any order, grouped into messages."""
    n = draw(st.integers(1, max_events))
    gaps = [0, 1, 1_000, 10 * MIN, 29 * MIN, 30 * MIN - 1, 30 * MIN, 30 * MIN + 1, 45 * MIN]
    times: list[int] = []
    t = 0
    for _ in range(n):
        t += draw(st.sampled_from(gaps))
        times.append(t)
    specs = [
        (
            ms,
            draw(st.sampled_from(["pageview", "pageview", "signup", *SESSION_ONLY])),
            draw(st.sampled_from(["/", "/a", "/b"])),
            draw(st.booleans()),
            draw(st.sampled_from([V1, V1, V2])),
            draw(st.sampled_from(["", "Google"])),
            draw(st.sampled_from([(), (("plan", "pro"),), (("plan", "free"), ("x", "1"))])),
        )
        for ms in times
    ]
    order = draw(st.permutations(range(n)))
    # seq is the arrival number, as `take_seq` hands it out.
    arrived = [
        ev(ms, name, page, seq=seq, interactive=i, vid=vid, source=src, props=props)
        for seq, (ms, name, page, i, vid, src, props) in enumerate(specs[k] for k in order)
    ]
    batches: list[list[SessionEvent]] = []
    pos = 0
    while pos < n:
        size = draw(st.integers(1, 3))
        batches.append(arrived[pos : pos + size])
        pos += size
    return batches


def flat(batches: list[list[SessionEvent]]) -> list[SessionEvent]:
    return [e for batch in batches for e in batch]


# --- properties ---


@PROPERTY_SETTINGS
@given(streams())
def test_any_arrival_order_matches_reference(batches: list[list[SessionEvent]]) -> None:
    state = VisitorSessions.new(SITE, V1)
    sink = feed(state, batches)
    expected = reference(flat(batches))
    assert sink.late == []
    assert sink.rows == expected
    # Nothing is final with unbounded lateness: the state still holds every session.
    assert {r.session_id: r for r in state.rows()} == expected


@PROPERTY_SETTINGS
@given(streams(), st.sampled_from([0.0, 1.0, 600.0, 1800.0, 3600.0]))
def test_finite_lateness_matches_reference_over_accepted(
    batches: list[list[SessionEvent]], lateness: float
) -> None:
    state = VisitorSessions.new(SITE, V1)
    sink = Sink()
    newest = float("-inf")
    for offset, batch in enumerate(batches):
        outcome = state.apply(batch, offset, lateness)
        sink.take(outcome)
        # Late means older than the newest earlier event minus the window, nothing else.
        assert outcome.late_events == [e for e in batch if e.ts < newest - lateness]
        newest = max([newest, *(e.ts for e in batch if e not in outcome.late_events)])
    accepted = [e for e in flat(batches) if e not in sink.late]
    assert sink.rows == reference(accepted)


@PROPERTY_SETTINGS
@given(streams(), st.sampled_from([600.0, INFINITE]), st.data())
def test_serialisation_round_trips_mid_stream(
    batches: list[list[SessionEvent]], lateness: float, data: st.DataObject
) -> None:
    state = VisitorSessions.new(SITE, V1)
    twin = VisitorSessions.new(SITE, V1)  # never serialised
    sink = Sink()
    for offset, batch in enumerate(batches):
        if data.draw(st.booleans()):
            payload = state.to_bytes()
            restored = VisitorSessions.from_bytes(payload)
            assert restored.rows() == state.rows()
            assert restored.to_bytes() == payload
            state = restored
        outcome = state.apply(batch, offset, lateness)
        assert outcome == twin.apply(batch, offset, lateness)  # same diff, not just same rows
        sink.take(outcome)
    accepted = [e for e in flat(batches) if e not in sink.late]
    assert sink.rows == reference(accepted)


@PROPERTY_SETTINGS
@given(streams(), st.sampled_from([600.0, INFINITE]))
def test_replay_changes_nothing_and_reemits_current_rows(
    batches: list[list[SessionEvent]], lateness: float
) -> None:
    state = VisitorSessions.new(SITE, V1)
    sink = Sink()
    for offset, batch in enumerate(batches):
        sink.take(state.apply(batch, offset, lateness))
        snapshot = state.to_bytes()
        for again in {0, offset}:
            outcome = state.apply(batch, again, lateness)
            assert outcome.replay
            assert outcome.late_events == []
            assert outcome.upserts == state.rows()
            assert {r.session_id for r in outcome.deleted}.isdisjoint(
                r.session_id for r in state.rows()
            )
            sink.take(Outcome(upserts=outcome.upserts))  # re-emitting is harmless
        assert state.to_bytes() == snapshot
    accepted = [e for e in flat(batches) if e not in sink.late]
    assert sink.rows == reference(accepted)


# --- examples ---


def one_session(events: list[SessionEvent]) -> list[SessionRow]:
    state = VisitorSessions.new(SITE, V1)
    feed(state, [[replace(e, seq=i)] for i, e in enumerate(events)])
    return state.rows()


def test_gap_of_exactly_thirty_minutes_joins() -> None:
    rows = one_session([ev(0), ev(30 * MIN, page="/b")])
    assert len(rows) == 1
    assert rows[0].duration == SESSION_TIMEOUT
    assert rows[0].pageviews == 2


def test_gap_of_thirty_minutes_and_one_ms_starts_a_new_session() -> None:
    rows = one_session([ev(0), ev(30 * MIN + 1, page="/b")])
    assert [r.start for r in rows] == [at(0), at(30 * MIN + 1)]
    assert rows[1].session_id == session_id(SITE, V1, at(30 * MIN + 1))


def test_bounce_rules() -> None:
    (single,) = one_session([ev(0)])
    assert single.is_bounce
    (quiet,) = one_session([ev(0), ev(MIN, "signup", interactive=False)])
    assert quiet.is_bounce
    assert quiet.events == 2
    (two,) = one_session([ev(0), ev(MIN, page="/b")])
    assert not two.is_bounce
    (custom,) = one_session([ev(0), ev(MIN, "signup")])
    assert not custom.is_bounce


def test_engagement_alone_never_creates_a_session() -> None:
    assert one_session([ev(0, "engagement"), ev(MIN, "pageleave")]) == []


def test_engagement_extends_but_is_not_counted() -> None:
    (row,) = one_session([ev(0), ev(10 * MIN, "engagement", page="/x"), ev(39 * MIN)])
    assert row.end == at(39 * MIN)  # joined via the engagement at 10 min
    assert (row.events, row.pageviews, row.names, row.pages) == (2, 2, ("pageview",), ("/",))
    (alone,) = one_session([ev(0), ev(31 * MIN, "engagement")])
    assert alone.end == at(0)  # too late to extend anything: ignored


def test_engagement_arriving_before_its_pageview_still_extends() -> None:
    state = VisitorSessions.new(SITE, V1)
    assert state.apply([ev(5 * MIN, "engagement", seq=0)], 0, INFINITE).upserts == []
    (row,) = state.apply([ev(0, seq=1)], 1, INFINITE).upserts
    assert (row.start, row.end, row.duration) == (at(0), at(5 * MIN), 300)


def test_exit_page_is_the_latest_pageview() -> None:
    (row,) = one_session([ev(0, page="/a"), ev(MIN, page="/b"), ev(2 * MIN, "signup", "/c")])
    assert (row.entry_page, row.exit_page) == ("/a", "/b")
    (no_views,) = one_session([ev(0, "signup", "/s"), ev(MIN, "other", "/t")])
    assert no_views.exit_page == "/s"
    # A late pageview that is earlier in time does not become the exit page.
    state = VisitorSessions.new(SITE, V1)
    feed(state, [[ev(MIN, page="/late-but-later", seq=0)], [ev(30_000, page="/mid", seq=1)]])
    assert state.rows()[0].exit_page == "/late-but-later"


def test_late_event_merges_two_sessions_and_deletes_one() -> None:
    state = VisitorSessions.new(SITE, V1)
    sink = feed(state, [[ev(0, seq=0)], [ev(40 * MIN, seq=1)]])
    first, second = state.rows()
    outcome = state.apply([ev(20 * MIN, seq=2)], 2, INFINITE)
    assert outcome.deleted == [second]
    (merged,) = outcome.upserts
    assert merged.session_id == first.session_id
    assert (merged.pageviews, merged.end) == (3, at(40 * MIN))
    sink.take(outcome)
    assert list(sink.rows) == [first.session_id]
    assert deleted_row(SITE, second.session_id, second.vid, second.start, 2, 0, 2)["start"] == (
        at(40 * MIN)
    )


def test_earlier_event_moves_the_start_and_changes_the_id() -> None:
    state = VisitorSessions.new(SITE, V1)
    (old,) = state.apply([ev(10 * MIN, seq=0)], 0, INFINITE).upserts
    outcome = state.apply([ev(0, seq=1)], 1, INFINITE)
    assert outcome.deleted == [old]
    assert [r.session_id for r in outcome.upserts] == [session_id(SITE, V1, at(0))]
    assert state.tombstones == {old.session_id: old}
    assert state.apply([], 1, INFINITE).deleted == [old]  # replay re-emits the deletion


def test_equal_timestamps_order_by_arrival() -> None:
    (row,) = one_session([ev(0, page="/first"), ev(0, page="/second")])
    assert (row.entry_page, row.exit_page) == ("/first", "/second")


def test_salt_rotation_keeps_the_session_id() -> None:
    before_midnight = (BASE_MS // 86_400_000 + 1) * 86_400_000 - BASE_MS - 5 * MIN
    state = VisitorSessions.new(SITE, V1)
    (row,) = state.apply([ev(before_midnight, seq=state.take_seq())], 0, 600.0).upserts
    # The worker finds yesterday's state through vid_prev and continues it under today's id.
    continued = VisitorSessions.new(SITE, V2)
    assert continued.adopt(VisitorSessions.from_bytes(state.to_bytes())) == Outcome()
    after = continued.apply(
        [ev(before_midnight + 10 * MIN, vid=V2, seq=continued.take_seq())], 1, 600.0
    )
    (same,) = after.upserts
    assert after.deleted == []
    assert (same.session_id, same.vid, same.pageviews) == (row.session_id, V1, 2)
    # A new session after the rotation belongs to the new id.
    later = continued.apply(
        [ev(before_midnight + 2 * 60 * MIN, vid=V2, seq=continued.take_seq())], 2, 600.0
    )
    (fresh,) = later.upserts
    assert (fresh.vid, fresh.session_id) == (
        V2,
        session_id(SITE, V2, at(before_midnight + 2 * 60 * MIN)),
    )


def test_adopt_merges_two_live_states() -> None:
    old = VisitorSessions.new(SITE, V1)
    old.apply([ev(0, seq=0)], 0, INFINITE)
    new = VisitorSessions.new(SITE, V2)
    (solo,) = new.apply([ev(5 * MIN, vid=V2, seq=1)], 1, INFINITE).upserts
    outcome = new.adopt(old)
    assert outcome.deleted == [solo]
    assert [r.pageviews for r in outcome.upserts] == [2]
    assert new.rows() == list(reference([ev(0, seq=0), ev(5 * MIN, vid=V2, seq=1)]).values())


def test_state_stays_bounded_as_the_stream_moves_on() -> None:
    state = VisitorSessions.new(SITE, V1)
    sink = Sink()
    events = []
    for i in range(24 * 6):  # a pageview every 10 minutes, plus a long pause every 2 hours
        ms = i * 10 * MIN + (i // 12) * 60 * MIN
        e = ev(ms, page=f"/p{i % 7}", seq=state.take_seq())
        events.append(e)
        sink.take(state.apply([e], i, 600.0))
        assert len(state.events) <= 3
        assert len(state.rows()) <= 2
    assert sink.late == []
    assert sink.rows == reference(events)
    assert len(sink.rows) == 12
    assert not state.expired(events[-1].ts + 600 + SESSION_TIMEOUT, 600.0)
    assert state.expired(events[-1].ts + 600 + SESSION_TIMEOUT + 1, 600.0)


def test_retained_events_are_capped_without_breaking_a_long_session() -> None:
    state = VisitorSessions.new(SITE, V1)
    sink = Sink()
    events = [ev(i * 1000, page=f"/{i % 50}", seq=i) for i in range(MAX_RETAINED_EVENTS + 500)]
    for offset, e in enumerate(events):
        sink.take(state.apply([e], offset, INFINITE))
    assert len(state.events) == MAX_RETAINED_EVENTS
    assert sink.rows == reference(events)
    # Folded events cannot be reordered any more: an event before them is late.
    outcome = state.apply([ev(100, seq=len(events))], len(events), INFINITE)
    assert outcome.late and outcome.upserts == []
    assert VisitorSessions.from_bytes(state.to_bytes()).rows() == state.rows()


def test_late_events_are_reported_and_not_applied() -> None:
    state = VisitorSessions.new(SITE, V1)
    state.apply([ev(60 * MIN, seq=0)], 0, 600.0)
    outcome = state.apply([ev(49 * MIN, seq=1), ev(50 * MIN, seq=2)], 1, 600.0)
    assert [e.seq for e in outcome.late_events] == [1]
    assert [r.start for r in state.rows()] == [at(50 * MIN)]


def test_columns_match_the_sessions_table() -> None:
    table = next(s for s in ddl() if "CREATE TABLE IF NOT EXISTS sessions" in s)
    body = table.split("(", 1)[1].rsplit(") ENGINE", 1)[0]
    names = [m.group(1) for m in re.finditer(r"^\s*(\w+) ", body, re.M)]
    assert tuple(names) == SESSION_COLUMNS
    (row,) = one_session([ev(0, props=(("plan", "pro"),)), ev(90_500, "signup", "/b")])
    columns = row.as_columns(SITE, 7, 3, 7)
    assert tuple(columns) == SESSION_COLUMNS
    assert columns["start"] == at(0) and columns["end"] == at(90_500)
    assert (columns["duration"], columns["is_bounce"], columns["is_deleted"]) == (90, 0, 0)
    assert (columns["prop_keys"], columns["prop_values"]) == (["plan"], ["pro"])
    assert (columns["source"], columns["country"], columns["browser"]) == ("", "DE", "")
    assert (columns["names"], columns["pages"]) == (["pageview", "signup"], ["/", "/b"])
    gone = deleted_row(SITE, row.session_id, row.vid, row.start, 8, 3, 8)
    assert tuple(gone) == SESSION_COLUMNS
    assert (gone["is_deleted"], gone["start"], gone["pageviews"]) == (1, at(0), 0)


def test_from_hit() -> None:
    hit = Hit(
        ts=at(1234),
        site=SITE,
        tz="UTC",
        name="signup",
        vid=V1,
        vid_prev=V2,
        hostname="example.com",
        page="/x",
        referrer="https://google.com/",
        source="Google",
        utm_source="",
        utm_medium="",
        utm_campaign="c",
        utm_content="",
        utm_term="",
        device="Desktop",
        browser="Firefox",
        browser_version="140.0",
        os="Linux",
        os_version="",
        country="FR",
        props={"b": "2", "a": "1"},
        interactive=False,
        revenue=None,
        vitals=None,
    )
    e = SessionEvent.from_hit(hit, 5)
    assert (e.ts, e.name, e.page, e.vid, e.seq, e.interactive) == (
        at(1234),
        "signup",
        "/x",
        V1,
        5,
        False,
    )
    assert e.props == (("a", "1"), ("b", "2"))
    attrs = dict(e.attrs)
    assert (attrs["source"], attrs["utm_campaign"], attrs["country"]) == ("Google", "c", "FR")
    assert len(attrs) == 13
