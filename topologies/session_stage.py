"""Sessions in the stream: per (site, visitor) state in a RocksDB-backed Faust table.

For each hits message the stage updates the visitors' session state (engine/sessions.py holds
the rules), returns the absolute session rows to store, and gives every hit its session's visit
attributes (source, referrer, UTM, device, browser, OS, country of the session's first event).
Must be called inside `event_context` so table writes go to the message's partition.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, cast

import msgpack
from prometheus_client import Counter, Gauge

from engine.hits import Hit
from engine.sessions import (
    VISIT_ATTRIBUTES,
    SessionEvent,
    SessionRow,
    VisitorSessions,
    deleted_row,
)

LATE_HITS = Counter(
    "rollup_worker_late_hits_total",
    "Hits later than the lateness window: counted in pageviews and visitors, not in sessions",
)
SESSION_STATES = Gauge("rollup_worker_session_states", "Visitor session states held locally")
EXPIRED_STATES = Counter("rollup_worker_session_states_expired_total", "Idle states dropped")


def state_key(site: str, vid: int) -> str:
    return f"{site}|{vid}"


def wrap(state: VisitorSessions, partition: int, now: float) -> bytes:
    packed: bytes = msgpack.packb([partition, now, state.to_bytes()], use_bin_type=True)
    return packed


def unwrap(raw: bytes) -> tuple[int, float, VisitorSessions]:
    partition, updated, body = msgpack.unpackb(raw, raw=False)
    return int(partition), float(updated), VisitorSessions.from_bytes(body)


class SessionStage:
    def __init__(self, table: Any, lateness: float, idle_seconds: float) -> None:
        self.table = table
        self.lateness = lateness
        self.idle_seconds = idle_seconds

    def process(
        self, hits: list[Hit], partition: int, offset: int
    ) -> tuple[list[dict[str, Any]], list[Hit]]:
        by_visitor: dict[tuple[str, int], list[int]] = defaultdict(list)
        for index, hit in enumerate(hits):
            by_visitor[(hit["site"], hit["vid"])].append(index)
        rows: dict[int, dict[str, Any]] = {}
        out = list(hits)
        now = time.time()
        for group, ((site, vid), indexes) in enumerate(by_visitor.items()):
            visitor_hits = [hits[i] for i in indexes]
            key = state_key(site, vid)
            raw = self.table.get(key)
            adopted = None
            previous_vid = visitor_hits[0].get("vid_prev") or 0
            if not raw and previous_vid:
                # Salt rotated at midnight: continue yesterday's session under today's id.
                adopted = state_key(site, previous_vid)
                raw = self.table.get(adopted) or None
            state = unwrap(raw)[2] if raw else VisitorSessions.new(site, vid)
            events = [SessionEvent.from_hit(h, state.take_seq()) for h in visitor_hits]
            # One message may touch a state twice (yesterday's and today's id of one visitor):
            # the replay guard needs a position per visitor group, not per message.
            outcome = state.apply(events, (offset << 16) | group, self.lateness)
            LATE_HITS.inc(len(outcome.late_events))
            self.table[key] = wrap(state, partition, now)
            if adopted is not None:
                del self.table[adopted]
            for row in outcome.upserts:
                rows[row.session_id] = row.as_columns(site, offset, partition, offset)
            for row in outcome.deleted:
                rows[row.session_id] = deleted_row(
                    site, row.session_id, row.vid, row.start, offset, partition, offset
                )
            current = state.rows()
            for i in indexes:
                session = _session_of(current, hits[i]["ts"])
                if session is not None:
                    out[i] = _with_visit_attributes(hits[i], session)
        return list(rows.values()), out

    def expire(self) -> int:
        """Drop states idle longer than the window in which they could still change; returns
        how many states remain. Runs from a timer, outside stream iteration, so it writes the
        changelog tombstone to the partition recorded in each state."""
        now = time.time()
        remaining = 0
        expired: list[tuple[str, int]] = []
        for key, raw in self.table.data.items():
            partition, updated, _ = unwrap(raw)
            if now - updated > self.idle_seconds:
                expired.append((key, partition))
            else:
                remaining += 1
        for key, partition in expired:
            self.table.send_changelog(partition, key, None, value_serializer="raw")
            del self.table.data[key]
        EXPIRED_STATES.inc(len(expired))
        SESSION_STATES.set(remaining)
        return remaining


def _session_of(rows: list[SessionRow], ts: float) -> SessionRow | None:
    ts = round(ts, 3)  # session bounds are whole milliseconds
    for row in rows:
        if row.start <= ts <= row.end:
            return row
    return None


def _with_visit_attributes(hit: Hit, session: SessionRow) -> Hit:
    updated = cast(dict[str, Any], dict(hit))
    attrs = dict(session.attrs)
    for name in VISIT_ATTRIBUTES:
        updated[name] = attrs.get(name, "")
    return cast(Hit, updated)
