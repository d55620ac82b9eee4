"""Pure: a unique-count sketch over 64-bit visitor hashes, exact while small, HyperLogLog after.

Exact up to `EXACT_LIMIT` hashes (a sorted set), then HyperLogLog with 2^14 registers (standard
error about 0.8%). Mergeable, and serialisable to bytes for a RocksDB-backed table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import msgpack

PRECISION = 14
REGISTERS = 1 << PRECISION
EXACT_LIMIT = 256
_MASK64 = (1 << 64) - 1
_ALPHA = 0.7213 / (1 + 1.079 / REGISTERS)


def _mix(value: int) -> int:
    """splitmix64 finaliser: visitor ids are already hashes, but sketches need uniform bits."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


@dataclass
class UniqueSketch:
    exact: set[int] | None = field(default_factory=set)
    registers: bytearray | None = None

    def add(self, value: int) -> None:
        if self.exact is not None:
            self.exact.add(value)
            if len(self.exact) > EXACT_LIMIT:
                self._to_registers()
            return
        self._add_register(value)

    def _add_register(self, value: int) -> None:
        assert self.registers is not None
        mixed = _mix(value)
        index = mixed >> (64 - PRECISION)
        rest = (mixed << PRECISION) & _MASK64
        rank = (64 - PRECISION + 1) if rest == 0 else (65 - rest.bit_length())
        rank = min(rank, 64 - PRECISION + 1)
        if rank > self.registers[index]:
            self.registers[index] = rank

    def _to_registers(self) -> None:
        values, self.exact = self.exact or set(), None
        self.registers = bytearray(REGISTERS)
        for value in values:
            self._add_register(value)

    def merge(self, other: UniqueSketch) -> None:
        if other.exact is not None:
            for value in other.exact:
                self.add(value)
            return
        if self.exact is not None:
            self._to_registers()
        assert self.registers is not None and other.registers is not None
        self.registers = bytearray(map(max, self.registers, other.registers))

    def count(self) -> int:
        if self.exact is not None:
            return len(self.exact)
        assert self.registers is not None
        estimate = _ALPHA * REGISTERS * REGISTERS / sum(2.0**-r for r in self.registers)
        zeros = self.registers.count(0)
        if estimate <= 2.5 * REGISTERS and zeros:
            estimate = REGISTERS * math.log(REGISTERS / zeros)  # linear counting
        return round(estimate)

    def to_bytes(self) -> bytes:
        body: Any = sorted(self.exact) if self.exact is not None else bytes(self.registers or b"")
        packed: bytes = msgpack.packb(body, use_bin_type=True)
        return packed

    @classmethod
    def from_bytes(cls, data: bytes) -> UniqueSketch:
        body = msgpack.unpackb(data, raw=False)
        if isinstance(body, bytes):
            return cls(exact=None, registers=bytearray(body))
        return cls(exact=set(body))
