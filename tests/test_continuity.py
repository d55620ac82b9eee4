"""Offset continuity (engine/continuity.py): repeats and rewinds pass, any skip is a gap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.continuity import Gap, OffsetContinuity


def test_contiguous_offsets_from_the_commit_pass() -> None:
    c = OffsetContinuity()
    c.expect(1, 100)
    assert [c.check(1, o) for o in range(100, 105)] == [None] * 5


def test_a_skip_at_the_start_and_in_the_stream() -> None:
    c = OffsetContinuity()
    c.expect(1, 13943)
    assert c.check(1, 14184) == Gap(1, 13943, 14184, at_start=True)
    assert c.check(1, 14185) is None
    assert c.check(1, 14190) == Gap(1, 14186, 14190, at_start=False)
    assert "4 messages skipped" in str(Gap(1, 14186, 14190, at_start=False))


def test_rewinds_and_repeats_are_not_gaps() -> None:
    c = OffsetContinuity()
    c.expect(0, 10)
    for offset in (10, 11, 12, 10, 11, 11, 12, 13, 5, 6):
        assert c.check(0, offset) is None


def test_unknown_commit_and_forgotten_partitions_start_anywhere() -> None:
    c = OffsetContinuity()
    c.expect(2, None)
    assert c.tracks(2)
    assert c.check(2, 500) is None
    assert c.check(3, 7) is None  # never expected: any start
    c.forget({2, 3})
    assert not c.tracks(2) and not c.tracks(3)
    assert c.check(2, 900) is None
    assert c.check(2, 902) == Gap(2, 901, 902, at_start=False)


def test_partitions_are_independent() -> None:
    c = OffsetContinuity()
    c.expect(0, 0)
    c.expect(1, 50)
    assert c.check(0, 0) is None
    assert c.check(1, 50) is None
    assert c.check(0, 1) is None
    assert c.check(1, 52) == Gap(1, 51, 52, at_start=False)


@given(
    start=st.integers(0, 10_000),
    steps=st.lists(st.integers(-20, 1), max_size=200),
)
def test_any_walk_without_skips_passes(start: int, steps: list[int]) -> None:
    c = OffsetContinuity()
    c.expect(0, start)
    offset = start
    assert c.check(0, offset) is None
    for step in steps:  # +1: the next message; <= 0: a repeat or a rewind (a seek back)
        offset = max(0, offset + step)
        assert c.check(0, offset) is None


@given(start=st.integers(0, 10_000), read=st.integers(0, 50), skip=st.integers(1, 1000))
def test_any_skip_is_reported_with_its_size(start: int, read: int, skip: int) -> None:
    c = OffsetContinuity()
    c.expect(0, start)
    for offset in range(start, start + read):
        assert c.check(0, offset) is None
    gap = c.check(0, start + read + skip)
    assert gap == Gap(0, start + read, start + read + skip, at_start=read == 0)
