"""Pure: a unique-count sketch over 64-bit visitor hashes, exact while small, HyperLogLog after.

Exact up to `EXACT_LIMIT` hashes (a sorted set), then HyperLogLog with 2^14 registers (standard
error about 0.8%). Mergeable, and serialisable to bytes for a RocksDB-backed table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from engine import codec

PRECISION = 14
REGISTERS = 1 << PRECISION
EXACT_LIMIT = 256
_MASK64 = (1 << 64) - 1
_MAX_RANK = 64 - PRECISION + 1
_ALPHA_INFINITY = 1 / (2 * math.log(2))


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
        return round(_estimate(self.registers))

    def to_bytes(self) -> bytes:
        body: Any = sorted(self.exact) if self.exact is not None else bytes(self.registers or b"")
        return codec.pack(body)

    @classmethod
    def from_bytes(cls, data: bytes) -> UniqueSketch:
        body = codec.unpack(data)
        if isinstance(body, bytes):
            return cls(exact=None, registers=bytearray(body))
        return cls(exact=set(body))


def _estimate(registers: bytearray) -> float:
    """Ertl's improved HyperLogLog estimator ("New cardinality estimation algorithms for
    HyperLogLog sketches", 2017): unbiased from a few hundred to billions without switching to
    linear counting. The classic switch at 2.5 x registers used the raw estimate just above
    it, where it overestimates: 4% too high at 39,000 hashes."""
    histogram = [0] * (_MAX_RANK + 1)
    for rank in registers:
        histogram[rank] += 1
    m = len(registers)
    z = m * _tau(1 - histogram[_MAX_RANK] / m)
    for rank in range(_MAX_RANK - 1, 0, -1):
        z = 0.5 * (z + histogram[rank])
    z += m * _sigma(histogram[0] / m)
    return _ALPHA_INFINITY * m * m / z


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    power, total = 1.0, x
    while True:
        x *= x
        previous = total
        total += x * power
        power += power
        if total == previous:
            return total


def _tau(x: float) -> float:
    if x in (0.0, 1.0):
        return 0.0
    weight, total = 1.0, 1 - x
    while True:
        x = math.sqrt(x)
        previous = total
        weight *= 0.5
        total -= (1 - x) ** 2 * weight
        if total == previous:
            return total / 3
