"""Sessions: the pure rules the worker applies per (site, visitor). No I/O, no clock.

Reference semantics: sort a visitor's events by (ts, seq) and walk them. An event within
SESSION_TIMEOUT of the current session's last event joins it (exactly 30 minutes joins, 30
minutes + 1 ms does not); any other counted event starts a new session; `engagement` and
`pageleave` only extend a live session and are otherwise ignored. Times are compared in whole
milliseconds, the precision the store keeps.

`VisitorSessions` reproduces that walk incrementally and emits ABSOLUTE rows: an upsert for every
session that is new or changed, and the old row of every session id that disappeared (a late
event merged two sessions or moved a start). A session's id hashes (site, vid of its first event,
start), so replays give the same ids and a moved start gives a new one.

State stays bounded by folding: an event older than `max_ts - lateness` can never have another
event sorted before it (such an event would be late), so it is folded into a summary of its
session (`base`) and dropped; sessions that ended before that horizon are forgotten. The folded
result is exactly what the full walk would give, whatever the session's length. Past
MAX_RETAINED_EVENTS the oldest events are folded early and anything that would sort before them
is reported late: rows stay exact for the accepted events, no session is ever split in two.

A message at or below `applied_offset` is a replay: nothing changes, and the outcome carries the
current rows and recent deletions so the caller can re-emit them (absolute rows: idempotent).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast

from engine import codec
from engine.dimensions import SESSION_ONLY_EVENTS
from engine.hits import Hit

SESSION_TIMEOUT: Final[int] = 30 * 60
# Every message re-walks a visitor's retained events, so the cap bounds that cost. More than
# this many events in one lateness window (one every 2 s over 10 min) is automated traffic,
# which then gives up only its tolerance of late events.
MAX_RETAINED_EVENTS: Final[int] = 300
# Deleted rows kept for re-emission on replay; a merge deletes few ids, so this is generous.
MAX_TOMBSTONES: Final[int] = 100
PAGEVIEW: Final[str] = "pageview"
# Visit attributes of a hit; a session takes its first event's.
VISIT_ATTRIBUTES: Final[tuple[str, ...]] = (
    "source",
    "referrer",
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
)
# The `sessions` table, in DDL order (engine/store/schema.py).
SESSION_COLUMNS: Final[tuple[str, ...]] = (
    "site",
    "session_id",
    "vid",
    "start",
    "end",
    "duration",
    "pageviews",
    "events",
    "interactive_events",
    "is_bounce",
    "entry_page",
    "exit_page",
    "hostname",
    *VISIT_ATTRIBUTES,
    "pages",
    "names",
    "hostnames",
    "prop_keys",
    "prop_values",
    "version",
    "is_deleted",
    "src_partition",
    "src_offset",
)

_TIMEOUT_MS: Final[int] = SESSION_TIMEOUT * 1000
_UINT32_MAX: Final[int] = 2**32 - 1
_CODEC_VERSION: Final[int] = 1
_NO_FLOOR: Final[tuple[float, int]] = (-math.inf, -1)

Pairs = tuple[tuple[str, str], ...]


def _ms(ts: float) -> int:
    return round(ts * 1000)


def session_id(site: str, vid: int, start: float) -> int:
    """Unsigned 63-bit id, a pure function of the session's origin so replays agree."""
    return _session_id(site, vid, _ms(start))


def _session_id(site: str, vid: int, start_ms: int) -> int:
    digest = hashlib.blake2b(f"{site}|{vid}|{start_ms}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionEvent:
    """What sessions need of one hit. `seq` orders events of equal `ts` (earlier arrival
    first); it must grow with arrival (see `VisitorSessions.take_seq`)."""

    ts: float
    name: str
    page: str
    hostname: str
    interactive: bool
    vid: int
    seq: int
    props: Pairs = ()
    attrs: Pairs = ()

    @classmethod
    def from_hit(cls, hit: Hit, seq: int) -> SessionEvent:
        fields = cast(Mapping[str, Any], hit)
        props = fields.get("props")
        return _event(
            float(hit["ts"]),
            seq,
            int(hit["vid"]),
            hit["name"],
            hit["page"],
            hit["hostname"],
            bool(fields.get("interactive", True)),
            tuple(sorted((str(k), str(v)) for k, v in props.items())) if props else (),
            visit_attributes(fields),
        )


_attribute_values = operator.itemgetter(*VISIT_ATTRIBUTES)
# Visitors of a site share a few attribute combinations: one Pairs tuple per combination saves
# building it per hit, and lets callers compare by identity first.
_ATTRIBUTES_CACHE: dict[tuple[Any, ...], Pairs] = {}
_ATTRIBUTES_CACHE_SIZE: Final[int] = 65536


def visit_attributes(fields: Mapping[str, Any]) -> Pairs:
    """A hit's visit attributes as (name, text) pairs in VISIT_ATTRIBUTES order."""
    try:
        values = _attribute_values(fields)
    except KeyError:  # a hit without some attributes: they are empty
        values = tuple(fields.get(name) for name in VISIT_ATTRIBUTES)
    attrs = _ATTRIBUTES_CACHE.get(values)
    if attrs is None:
        attrs = tuple(
            (name, str(value or "")) for name, value in zip(VISIT_ATTRIBUTES, values, strict=True)
        )
        if len(_ATTRIBUTES_CACHE) >= _ATTRIBUTES_CACHE_SIZE:
            _ATTRIBUTES_CACHE.clear()
        _ATTRIBUTES_CACHE[values] = attrs
    return attrs


def _order(event: SessionEvent) -> tuple[float, int]:
    return (event.ts, event.seq)


def _event_ts(event: SessionEvent) -> float:
    return event.ts


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRow:
    """One session as stored; `as_columns` maps it onto the `sessions` table."""

    session_id: int
    vid: int  # the visitor id of the session's first event
    start: float  # epoch seconds, whole milliseconds
    end: float  # last event, engagement and pageleave included
    pageviews: int
    events: int  # all but engagement and pageleave, as the API counts
    interactive_events: int
    entry_page: str
    exit_page: str  # the latest pageview's page; the entry page if there is none
    hostname: str
    attrs: Pairs  # the first event's visit attributes
    pages: tuple[str, ...]
    names: tuple[str, ...]
    hostnames: tuple[str, ...]
    props: Pairs

    @property
    def is_bounce(self) -> bool:
        return self.interactive_events <= 1

    @property
    def duration(self) -> int:
        """Raw whole seconds; the API reads a bounce as 0 itself."""
        return (_ms(self.end) - _ms(self.start)) // 1000

    def attr(self, name: str) -> str:
        return dict(self.attrs).get(name, "")

    def as_columns(
        self, site: str, version: int, src_partition: int, src_offset: int
    ) -> dict[str, Any]:
        attrs = dict(self.attrs)
        row: dict[str, Any] = {
            "site": site,
            "session_id": self.session_id,
            "vid": self.vid,
            "start": _ms(self.start) / 1000,
            "end": _ms(self.end) / 1000,
            "duration": min(max(self.duration, 0), _UINT32_MAX),
            "pageviews": self.pageviews,
            "events": self.events,
            "interactive_events": self.interactive_events,
            "is_bounce": int(self.is_bounce),
            "entry_page": self.entry_page,
            "exit_page": self.exit_page,
            "hostname": self.hostname,
        }
        for name in VISIT_ATTRIBUTES:
            row[name] = attrs.get(name, "")
        row["pages"] = list(self.pages)
        row["names"] = list(self.names)
        row["hostnames"] = list(self.hostnames)
        row["prop_keys"] = [k for k, _ in self.props]
        row["prop_values"] = [v for _, v in self.props]
        row["version"] = version
        row["is_deleted"] = 0
        row["src_partition"] = src_partition
        row["src_offset"] = src_offset
        return row


def deleted_row(
    site: str,
    session_id: int,
    vid: int,
    start: float,
    version: int,
    src_partition: int,
    src_offset: int,
) -> dict[str, Any]:
    """Retires `session_id`; `start` must be the session's own, as the table's ORDER BY holds
    toDate(start) and the replacing row has to share the sorting key."""
    row: dict[str, Any] = {}
    for name in SESSION_COLUMNS:
        row[name] = ""
    for name in ("pages", "names", "hostnames", "prop_keys", "prop_values"):
        row[name] = []
    for name in ("duration", "pageviews", "events", "interactive_events", "is_bounce"):
        row[name] = 0
    start_s = _ms(start) / 1000
    row.update(
        site=site,
        session_id=session_id,
        vid=vid,
        start=start_s,
        end=start_s,
        version=version,
        is_deleted=1,
        src_partition=src_partition,
        src_offset=src_offset,
    )
    return row


class _Acc:
    """A session being walked: the fold of its events so far."""

    __slots__ = (
        "attrs",
        "end_ms",
        "entry_page",
        "events",
        "exit_page",
        "hostname",
        "hostnames",
        "interactive",
        "names",
        "pages",
        "pageviews",
        "props",
        "start_ms",
        "vid",
    )

    def __init__(
        self,
        *,
        vid: int,
        start_ms: int,
        end_ms: int,
        entry_page: str,
        hostname: str,
        attrs: Pairs,
        pageviews: int = 0,
        events: int = 0,
        interactive: int = 0,
        exit_page: str | None = None,
        pages: set[str] | None = None,
        names: set[str] | None = None,
        hostnames: set[str] | None = None,
        props: set[tuple[str, str]] | None = None,
    ) -> None:
        self.vid = vid
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.entry_page = entry_page
        self.hostname = hostname
        self.attrs = attrs
        self.pageviews = pageviews
        self.events = events
        self.interactive = interactive
        self.exit_page = exit_page
        self.pages = pages if pages is not None else set()
        self.names = names if names is not None else set()
        self.hostnames = hostnames if hostnames is not None else set()
        self.props = props if props is not None else set()

    @classmethod
    def open(cls, first: SessionEvent, ms: int) -> _Acc:
        acc = cls(
            vid=first.vid,
            start_ms=ms,
            end_ms=ms,
            entry_page=first.page,
            hostname=first.hostname,
            attrs=first.attrs,
        )
        acc.add(first, ms)
        return acc

    def copy(self) -> _Acc:
        return _Acc(
            vid=self.vid,
            start_ms=self.start_ms,
            end_ms=self.end_ms,
            entry_page=self.entry_page,
            hostname=self.hostname,
            attrs=self.attrs,
            pageviews=self.pageviews,
            events=self.events,
            interactive=self.interactive,
            exit_page=self.exit_page,
            pages=set(self.pages),
            names=set(self.names),
            hostnames=set(self.hostnames),
            props=set(self.props),
        )

    def add(self, event: SessionEvent, ms: int) -> None:
        # max(): after a best-effort merge (adopt) an event may be walked after a later base.
        if ms > self.end_ms:
            self.end_ms = ms
        if event.name in SESSION_ONLY_EVENTS:
            return
        self.events += 1
        if event.name == PAGEVIEW:
            self.pageviews += 1
            self.exit_page = event.page
        if event.interactive:
            self.interactive += 1
        self.pages.add(event.page)
        self.names.add(event.name)
        self.hostnames.add(event.hostname)
        self.props.update(event.props)

    def session_id(self, site: str) -> int:
        return _session_id(site, self.vid, self.start_ms)

    def row(self, site: str) -> SessionRow:
        return SessionRow(
            session_id=self.session_id(site),
            vid=self.vid,
            start=self.start_ms / 1000,
            end=self.end_ms / 1000,
            pageviews=self.pageviews,
            events=self.events,
            interactive_events=self.interactive,
            entry_page=self.entry_page,
            exit_page=self.exit_page if self.exit_page is not None else self.entry_page,
            hostname=self.hostname,
            attrs=self.attrs,
            pages=tuple(sorted(self.pages)),
            names=tuple(sorted(self.names)),
            hostnames=tuple(sorted(self.hostnames)),
            props=tuple(sorted(self.props)),
        )


def _walk(base: _Acc | None, events: Iterable[SessionEvent]) -> tuple[list[_Acc], _Acc | None]:
    """The reference walk, continued from `base` (never mutated): closed sessions, open one."""
    closed: list[_Acc] = []
    current = base.copy() if base is not None else None
    for event in events:
        ms = round(event.ts * 1000)
        if current is not None and ms - current.end_ms <= _TIMEOUT_MS:
            current.add(event, ms)
        elif event.name in SESSION_ONLY_EVENTS:
            continue  # nothing live to extend
        else:
            if current is not None:
                closed.append(current)
            current = _Acc.open(event, ms)
    return closed, current


def _rows_of(site: str, base: _Acc | None, events: list[SessionEvent]) -> dict[int, SessionRow]:
    closed, current = _walk(base, events)
    if current is not None:
        closed.append(current)
    return {row.session_id: row for row in (acc.row(site) for acc in closed)}


def _fingerprint(row: SessionRow) -> int:
    """Stable across processes (unlike hash()), so a restored state diffs correctly."""
    packed = codec.pack(
        (
            row.vid,
            row.start,
            row.end,
            row.pageviews,
            row.events,
            row.interactive_events,
            row.entry_page,
            row.exit_page,
            row.hostname,
            row.attrs,
            row.pages,
            row.names,
            row.hostnames,
            row.props,
        )
    )
    return int.from_bytes(hashlib.blake2b(packed, digest_size=8).digest(), "big")


@dataclass(slots=True)
class Outcome:
    """What one `apply` changed. `deleted` holds the last rows of vanished ids (their id, vid
    and start make the delete row)."""

    upserts: list[SessionRow] = field(default_factory=list)
    deleted: list[SessionRow] = field(default_factory=list)
    late_events: list[SessionEvent] = field(default_factory=list)
    replay: bool = False

    @property
    def late(self) -> bool:
        return bool(self.late_events)


class VisitorSessions:
    """Session state of one (site, visitor): folded `base` session plus the events that may
    still be reordered, all sorted by (ts, seq)."""

    __slots__ = (
        "_rows",
        "applied_offset",
        "base",
        "emitted",
        "events",
        "floor",
        "max_ts",
        "next_seq",
        "site",
        "tombstones",
        "vid",
    )

    def __init__(self, site: str, vid: int) -> None:
        self.site = site
        self.vid = vid  # the id the state was created under; rows carry their own vid
        self.next_seq = 0
        self.max_ts = -math.inf  # newest accepted event time
        self.applied_offset = -1  # hits offsets at or below this are replays
        # (ts, seq) of the newest folded event: nothing may be inserted before it.
        self.floor: tuple[float, int] = _NO_FLOOR
        self.base: _Acc | None = None  # the session open at the fold point
        self.events: list[SessionEvent] = []
        # Fingerprints of the rows last emitted, by id: enough to diff without a second walk.
        self.emitted: dict[int, int] = {}
        self.tombstones: dict[int, SessionRow] = {}  # deleted ids, re-emitted on replay
        self._rows: dict[int, SessionRow] | None = None  # cache of the current rows, not stored

    @classmethod
    def new(cls, site: str, vid: int) -> VisitorSessions:
        return cls(site, vid)

    def take_seq(self) -> int:
        """Arrival number for the next event; the counter is part of the stored state, so it
        keeps growing across restarts."""
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def rows(self) -> list[SessionRow]:
        """Current rows of all sessions that may still change, by start."""
        if self._rows is None:
            self._rows = _rows_of(self.site, self.base, self.events)
        return sorted(self._rows.values(), key=lambda r: (r.start, r.session_id))

    def apply(self, events: Iterable[SessionEvent], offset: int, lateness: float) -> Outcome:
        """Apply the visitor's events of one hits message (one offset)."""
        if offset <= self.applied_offset:
            # Already applied: hand back the current state for an idempotent re-emit.
            return Outcome(upserts=self.rows(), deleted=list(self.tombstones.values()), replay=True)
        self.applied_offset = offset
        # Events of one message arrive together: all are judged against the prior max_ts.
        bound = self.max_ts - lateness
        accepted: list[SessionEvent] = []
        late: list[SessionEvent] = []
        for event in events:
            if event.ts < bound or _order(event) <= self.floor:
                late.append(event)
            else:
                accepted.append(event)
                self.next_seq = max(self.next_seq, event.seq + 1)
        if not accepted:
            return Outcome(late_events=late)
        old_base, old_events = self.base, self.events
        # A new list: the old one is still needed if a session vanishes. Timsort makes the
        # usual in-order append linear.
        self.events = sorted([*old_events, *accepted], key=_order)
        self.max_ts = max(self.max_ts, max(e.ts for e in accepted))
        after, final = self._recompute(lateness)
        outcome, fingerprints = self._diff(
            after, late, lambda: _rows_of(self.site, old_base, old_events)
        )
        self.emitted = {sid: fp for sid, fp in fingerprints.items() if sid not in final}
        self._rows = {sid: row for sid, row in after.items() if sid not in final}
        self._prune_tombstones(self._horizon(lateness))
        return outcome

    def _horizon(self, lateness: float) -> float:
        """Every event still acceptable has ts >= this."""
        return max(self.max_ts - lateness, self.floor[0])

    def _recompute(self, lateness: float) -> tuple[dict[int, SessionRow], set[int]]:
        """One walk that also folds what can no longer be reordered: all rows, and the ids of
        the sessions that are final (they drop out of the state)."""
        horizon = self._horizon(lateness)
        fold = bisect.bisect_left(self.events, horizon, key=_event_ts)
        # Past the cap, fold the oldest anyway: events that would sort before them are then
        # reported late, so rows stay exact for what was accepted.
        fold = max(fold, len(self.events) - MAX_RETAINED_EVENTS)
        closed: list[_Acc] = []
        mid = self.base
        if fold > 0:
            closed, mid = _walk(self.base, self.events[:fold])
            self.floor = max(self.floor, _order(self.events[fold - 1]))
            del self.events[:fold]
            horizon = self._horizon(lateness)
        rest, current = _walk(mid, self.events)
        if current is not None:
            rest.append(current)
        final = {acc.session_id(self.site) for acc in closed}
        self.base = mid
        # An acceptable event is at or after the horizon: more than 30 min after `end` it cannot
        # join the folded session, which is then final.
        if mid is not None and math.isfinite(horizon) and mid.end_ms < _ms(horizon) - _TIMEOUT_MS:
            final.add(mid.session_id(self.site))
            self.base = None
        after = {row.session_id: row for row in (acc.row(self.site) for acc in (*closed, *rest))}
        return after, final

    def _diff(
        self,
        after: dict[int, SessionRow],
        late: list[SessionEvent],
        old_rows: Callable[[], dict[int, SessionRow]],
    ) -> tuple[Outcome, dict[int, int]]:
        fingerprints = {sid: _fingerprint(row) for sid, row in after.items()}
        upserts = [after[sid] for sid, fp in fingerprints.items() if self.emitted.get(sid) != fp]
        vanished = [sid for sid in self.emitted if sid not in after]
        deleted: list[SessionRow] = []
        if vanished:  # rare (a merge or a moved start): only then walk the old state again
            old = old_rows()
            deleted = [old[sid] for sid in vanished if sid in old]
        for row in deleted:
            self.tombstones[row.session_id] = row
        for row in upserts:
            self.tombstones.pop(row.session_id, None)
        return Outcome(upserts=upserts, deleted=deleted, late_events=late), fingerprints

    def _prune_tombstones(self, horizon: float) -> None:
        if math.isfinite(horizon):
            # A deletion that old was stored long ago: the stream moved on by the whole window.
            limit_ms = _ms(horizon) - _TIMEOUT_MS
            for sid in [sid for sid, row in self.tombstones.items() if _ms(row.end) < limit_ms]:
                del self.tombstones[sid]
        if len(self.tombstones) > MAX_TOMBSTONES:
            keep = sorted(self.tombstones.values(), key=lambda r: r.end)[-MAX_TOMBSTONES:]
            self.tombstones = {row.session_id: row for row in keep}

    def expired(self, now: float, lateness: float) -> bool:
        """True when no session can change any more, provided the caller treats events older
        than `now - lateness` as late: the state may then be deleted."""
        return self.max_ts < now - lateness - SESSION_TIMEOUT

    def adopt(self, other: VisitorSessions) -> Outcome:
        """Continue `other` (the visitor's state under yesterday's salt) in this state. Into an
        empty state this is a plain hand-over: ids stay those computed at creation. If both hold
        sessions they are merged best effort (only one folded `base` can survive)."""
        if other.site != self.site:
            raise ValueError("cannot adopt the state of another site")
        mine, theirs = (self.base, self.events), (other.base, other.events)
        self.emitted = {**other.emitted, **self.emitted}
        base = self.base
        if other.base is not None and (base is None or other.base.end_ms > base.end_ms):
            base = other.base
        for dropped in (self.base, other.base):
            if dropped is not None and dropped is not base:
                # Its row stays stored as it is: treat it as final, not as deleted.
                self.emitted.pop(dropped.session_id(self.site), None)
        self.base = base.copy() if base is not None else None
        self.events = sorted([*self.events, *other.events], key=_order)
        self.floor = max(self.floor, other.floor)
        self.max_ts = max(self.max_ts, other.max_ts)
        self.applied_offset = max(self.applied_offset, other.applied_offset)
        self.next_seq = max(self.next_seq, other.next_seq)
        self.tombstones = {**other.tombstones, **self.tombstones}
        after = _rows_of(self.site, self.base, self.events)
        outcome, self.emitted = self._diff(
            after, [], lambda: {**_rows_of(self.site, *theirs), **_rows_of(self.site, *mine)}
        )
        self._rows = after
        return outcome

    def to_bytes(self) -> bytes:
        table: dict[Pairs, int] = {}

        def attrs_index(attrs: Pairs) -> int:
            return table.setdefault(attrs, len(table))

        events = [
            [
                e.ts,
                e.seq,
                e.vid,
                e.name,
                e.page,
                e.hostname,
                e.interactive,
                _flat(e.props),
                attrs_index(e.attrs),
            ]
            for e in self.events
        ]
        base = None
        if self.base is not None:
            b = self.base
            base = [
                b.vid,
                b.start_ms,
                b.end_ms,
                b.entry_page,
                b.hostname,
                attrs_index(b.attrs),
                b.pageviews,
                b.events,
                b.interactive,
                b.exit_page,
                sorted(b.pages),
                sorted(b.names),
                sorted(b.hostnames),
                _flat(tuple(sorted(b.props))),
            ]
        tombstones = [
            [
                r.session_id,
                r.vid,
                r.start,
                r.end,
                r.pageviews,
                r.events,
                r.interactive_events,
                r.entry_page,
                r.exit_page,
                r.hostname,
                attrs_index(r.attrs),
                list(r.pages),
                list(r.names),
                list(r.hostnames),
                _flat(r.props),
            ]
            for r in self.tombstones.values()
        ]
        body = [
            _CODEC_VERSION,
            self.site,
            self.vid,
            self.next_seq,
            self.max_ts,
            self.applied_offset,
            self.floor[0],
            self.floor[1],
            [_flat(attrs) for attrs in table],
            base,
            events,
            tombstones,
            [item for pair in self.emitted.items() for item in pair],
        ]
        return codec.pack(body)

    @classmethod
    def from_bytes(cls, payload: bytes) -> VisitorSessions:
        body = codec.unpack(payload)
        if not isinstance(body, list) or not body or body[0] != _CODEC_VERSION:
            raise ValueError("not a visitor sessions state of codec version 1")
        (
            _,
            site,
            vid,
            next_seq,
            max_ts,
            applied_offset,
            floor_ts,
            floor_seq,
            table_raw,
            base_raw,
            events_raw,
            tombstones_raw,
            emitted_raw,
        ) = body
        table = [_pairs(flat) for flat in table_raw]
        state = cls(site, vid)
        state.next_seq = next_seq
        state.max_ts = float(max_ts)
        state.applied_offset = applied_offset
        state.floor = (float(floor_ts), floor_seq)
        state.events = [
            _event(ts, seq, evid, name, page, hostname, interactive, _pairs(props), table[attrs])
            for ts, seq, evid, name, page, hostname, interactive, props, attrs in events_raw
        ]
        if base_raw is not None:
            (bvid, start_ms, end_ms, entry, host, attrs, pv, ev, inter, exit_page, *sets) = base_raw
            pages, names, hostnames, props = sets
            state.base = _Acc(
                vid=bvid,
                start_ms=start_ms,
                end_ms=end_ms,
                entry_page=entry,
                hostname=host,
                attrs=table[attrs],
                pageviews=pv,
                events=ev,
                interactive=inter,
                exit_page=exit_page,
                pages=set(pages),
                names=set(names),
                hostnames=set(hostnames),
                props=set(_pairs(props)),
            )
        for raw in tombstones_raw:
            row = SessionRow(
                session_id=raw[0],
                vid=raw[1],
                start=raw[2],
                end=raw[3],
                pageviews=raw[4],
                events=raw[5],
                interactive_events=raw[6],
                entry_page=raw[7],
                exit_page=raw[8],
                hostname=raw[9],
                attrs=table[raw[10]],
                pages=tuple(raw[11]),
                names=tuple(raw[12]),
                hostnames=tuple(raw[13]),
                props=_pairs(raw[14]),
            )
            state.tombstones[row.session_id] = row
        state.emitted = dict(zip(emitted_raw[::2], emitted_raw[1::2], strict=True))
        return state


def _flat(pairs: Pairs) -> list[str]:
    return [item for pair in pairs for item in pair]


def _pairs(flat: list[str]) -> Pairs:
    if not flat:
        return ()
    return tuple(zip(flat[::2], flat[1::2], strict=True))


# A frozen dataclass's __init__ is slow (one object.__setattr__ per field) and loading a state
# builds every retained event: fill the slots directly instead, fields exactly as __init__ would.
_EVENT_SLOTS = tuple(
    cast(Any, SessionEvent.__dict__[name]).__set__
    for name in ("ts", "seq", "vid", "name", "page", "hostname", "interactive", "props", "attrs")
)


def _event(
    ts: float,
    seq: int,
    vid: int,
    name: str,
    page: str,
    hostname: str,
    interactive: bool,
    props: Pairs,
    attrs: Pairs,
) -> SessionEvent:
    event = object.__new__(SessionEvent)
    set_ts, set_seq, set_vid, set_name, set_page, set_host, set_inter, set_props, set_attrs = (
        _EVENT_SLOTS
    )
    set_ts(event, ts)
    set_seq(event, seq)
    set_vid(event, vid)
    set_name(event, name)
    set_page(event, page)
    set_host(event, hostname)
    set_inter(event, interactive)
    set_props(event, props)
    set_attrs(event, attrs)
    return event
