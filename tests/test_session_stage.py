"""The session stage's stored-state wrapper (pure): the expiry timer's cheap read of a state's
partition and last update agrees with the full decode."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.sessions import SessionEvent, VisitorSessions
from tests.test_live_counters import hit
from topologies.session_stage import stamp, unwrap, wrap

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@given(
    partition=st.integers(min_value=0, max_value=1023),
    updated=st.floats(min_value=T0, max_value=T0 + 86_400 * 365, allow_nan=False),
    offsets=st.lists(st.floats(min_value=0, max_value=7200), max_size=12),
)
def test_stamp_reads_what_unwrap_decodes(
    partition: int, updated: float, offsets: list[float]
) -> None:
    state = VisitorSessions.new("a.test", 42)
    events = [
        SessionEvent.from_hit(hit("a.test", f"/p{i % 3}", 42, T0 + o), state.take_seq())
        for i, o in enumerate(sorted(offsets))
    ]
    state.apply(events, 1, 600.0)
    raw = wrap(state, partition, updated)
    full_partition, full_updated, decoded = unwrap(raw)
    assert stamp(raw) == (full_partition, full_updated) == (partition, updated)
    assert decoded.to_bytes() == state.to_bytes()
