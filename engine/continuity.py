"""Offset continuity of a consumed partition: a message may repeat or rewind, never skip ahead.

The hits topic is neither compacted nor transactional, so its offsets have no holes: a message
past the next expected offset means the consumer skipped messages that nobody else will read.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Gap:
    partition: int
    expected: int
    got: int
    # At the start of an assignment (expected = the committed offset) a gap may also be
    # retention having deleted messages nobody read; within a stream of messages it cannot.
    at_start: bool

    def __str__(self) -> str:
        return (
            f"partition {self.partition}: offset {self.got} arrived but {self.expected} was next "
            f"({self.got - self.expected} messages skipped)"
        )


@dataclass
class OffsetContinuity:
    """Next expected offset per partition, forgotten when the partition is revoked."""

    _next: dict[int, int] = field(default_factory=dict)
    _started: set[int] = field(default_factory=set)

    def tracks(self, partition: int) -> bool:
        return partition in self._next or partition in self._started

    def expect(self, partition: int, offset: int | None) -> None:
        """Start a newly assigned partition at its committed offset (None: unknown)."""
        self._started.add(partition)
        if offset is None:
            self._next.pop(partition, None)
        else:
            self._next[partition] = offset

    def forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._next.pop(partition, None)
            self._started.discard(partition)

    def check(self, partition: int, offset: int) -> Gap | None:
        """Record `offset` as read; a Gap if messages before it were skipped."""
        expected = self._next.get(partition)
        at_start = partition in self._started
        self._started.discard(partition)
        self._next[partition] = offset + 1
        if expected is not None and offset > expected:
            return Gap(partition, expected, offset, at_start)
        return None
