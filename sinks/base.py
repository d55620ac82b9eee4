"""A sink buffers with `add()` and writes durably with `flush()`; nothing else is shared."""

from __future__ import annotations

import abc
from typing import Generic, TypeVar

Item = TypeVar("Item")


class Sink(abc.ABC, Generic[Item]):
    @abc.abstractmethod
    def add(self, item: Item, src_partition: int, src_offset: int) -> None:
        """Buffer one source message's worth of data, tagged with where it came from."""

    @abc.abstractmethod
    async def flush(self) -> int:
        """Write everything buffered; return the number of rows written. Raises on failure,
        keeping the buffer, so the caller may retry before committing offsets."""

    @abc.abstractmethod
    def discard(self) -> None:
        """Drop the buffer: its source messages will be delivered again."""

    @property
    @abc.abstractmethod
    def pending(self) -> int:
        """Rows buffered and not yet written."""
