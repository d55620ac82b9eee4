"""Offset continuity (engine/continuity.py): repeats and rewinds pass, a skip is set aside
until the expected offset is read again, and the commit frontier never passes a skip."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.continuity import Gap, OffsetContinuity, Verdict

P, S = Verdict.PROCESS, Verdict.SKIP


def test_contiguous_offsets_from_the_commit_are_processed() -> None:
    c = OffsetContinuity()
    c.expect(1, 100)
    assert [c.admit(1, o) for o in range(100, 105)] == [(P, None)] * 5
    assert c.frontier(1) == 105


def test_a_skip_in_the_stream_waits_for_the_expected_offset() -> None:
    c = OffsetContinuity()
    c.expect(0, 10)
    assert c.admit(0, 10) == (P, None)
    assert c.admit(0, 14) == (S, Gap(0, 11, 14, at_start=False))
    assert "3 messages skipped" in str(Gap(0, 11, 14, at_start=False))
    assert c.admit(0, 15) == (S, None)  # the same gap: reported once
    assert c.frontier(0) == 11
    assert c.admit(0, 11) == (P, None)  # read again after the seek back
    assert [c.admit(0, o)[0] for o in (12, 13, 14, 15, 16)] == [P] * 5
    assert c.frontier(0) == 17


def test_a_skip_at_the_committed_offset_says_so() -> None:
    c = OffsetContinuity()
    c.expect(1, 13943)
    assert c.admit(1, 14184) == (S, Gap(1, 13943, 14184, at_start=True))
    c.accept(1, 14184)  # e.g. retention deleted them: nothing to read again
    assert c.frontier(1) == 14185
    assert c.admit(1, 14186) == (S, Gap(1, 14185, 14186, at_start=False))


def test_rewinds_and_repeats_are_processed() -> None:
    c = OffsetContinuity()
    c.expect(0, 10)
    for offset in (10, 11, 12, 10, 11, 11, 12, 13, 5, 6):
        assert c.admit(0, offset) == (P, None)
    assert c.frontier(0) == 7


def test_unknown_commit_and_forgotten_partitions_start_anywhere() -> None:
    c = OffsetContinuity()
    c.expect(2, None)
    assert c.tracks(2)
    assert c.admit(2, 500) == (P, None)
    assert c.admit(3, 7) == (P, None)  # never expected: any start
    c.forget({2, 3})
    assert not c.tracks(2) and not c.tracks(3)
    assert c.frontier(2) is None
    assert c.admit(2, 900) == (P, None)
    assert c.admit(2, 902) == (S, Gap(2, 901, 902, at_start=False))


def test_partitions_are_independent() -> None:
    c = OffsetContinuity()
    c.expect(0, 0)
    c.expect(1, 50)
    assert c.admit(0, 0) == (P, None)
    assert c.admit(1, 50) == (P, None)
    assert c.admit(1, 52)[0] is S
    assert c.admit(0, 1) == (P, None)
    assert (c.frontier(0), c.frontier(1)) == (2, 51)


@given(start=st.integers(0, 10_000), steps=st.lists(st.integers(-20, 1), max_size=200))
def test_any_walk_without_skips_is_processed(start: int, steps: list[int]) -> None:
    c = OffsetContinuity()
    c.expect(0, start)
    offset = start
    assert c.admit(0, offset) == (P, None)
    for step in steps:  # +1: the next message; <= 0: a repeat or a rewind (a seek back)
        offset = max(0, offset + step)
        assert c.admit(0, offset) == (P, None)
    assert c.frontier(0) == offset + 1


@given(start=st.integers(0, 1000), offsets=st.lists(st.integers(0, 1200), max_size=300))
def test_the_frontier_never_passes_an_offset_that_was_not_processed(
    start: int, offsets: list[int]
) -> None:
    """Whatever order a broken consumer delivers in, every offset from the commit up to the
    frontier was processed: committing the frontier cannot lose a message."""
    c = OffsetContinuity()
    c.expect(0, start)
    processed: set[int] = set()
    for offset in offsets:
        verdict, _ = c.admit(0, offset)
        if verdict is P:
            processed.add(offset)
        frontier = c.frontier(0)
        assert frontier is not None
        assert set(range(start, frontier)) <= processed
