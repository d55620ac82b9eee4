"""Offset continuity of a consumed partition: a message may repeat or rewind, never skip ahead.

The hits topic is neither compacted nor transactional, so its offsets have no holes: a message
past the next expected offset means the consumer skipped messages that nobody else will read.
The consumer then seeks back to the expected offset and the messages past it are set aside
until it arrives; the commit never passes the expected offset (`frontier`), so a crash in
between loses nothing either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Verdict(Enum):
    PROCESS = "process"
    SKIP = "skip"  # past a gap: wait for the expected offset to be read again


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
class _Partition:
    next: int | None
    at_start: bool = True
    resyncing: bool = False


@dataclass
class OffsetContinuity:
    """Next expected offset per partition, forgotten when the partition is revoked."""

    _parts: dict[int, _Partition] = field(default_factory=dict)

    def tracks(self, partition: int) -> bool:
        return partition in self._parts

    def expect(self, partition: int, offset: int | None) -> None:
        """Start a newly assigned partition at its committed offset (None: unknown)."""
        self._parts[partition] = _Partition(offset)

    def forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._parts.pop(partition, None)

    def admit(self, partition: int, offset: int) -> tuple[Verdict, Gap | None]:
        """Whether to process the message at `offset`, and the gap it reveals, if a new one."""
        part = self._parts.setdefault(partition, _Partition(None))
        at_start, part.at_start = part.at_start, False
        if part.next is None or offset <= part.next:
            # The next message, a repeat or a rewind (a seek back): all safe to process.
            part.next = offset + 1
            part.resyncing = False
            return Verdict.PROCESS, None
        if part.resyncing:
            return Verdict.SKIP, None
        part.resyncing = True
        return Verdict.SKIP, Gap(partition, part.next, offset, at_start)

    def accept(self, partition: int, offset: int) -> None:
        """Take `offset` as the next message after all (the messages before it are gone)."""
        self._parts[partition] = _Partition(offset + 1, at_start=False)

    def frontier(self, partition: int) -> int | None:
        """The highest offset a commit may name: nothing at or past it was read in order."""
        part = self._parts.get(partition)
        return None if part is None else part.next
