"""The problem, exactly as SPEC.md defines it: blocks, nonces, double SHA-256 and units."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

DEFAULT_BLOCK_TEXT = "COMSM0010cloud"
NONCE_WIDTHS = (4, 8)
DEFAULT_UNITS = 1024
# The 8-byte space cut into 1024 units would give units of 2^54 nonces: one host would hold
# all the low nonces and the others could never help find the lowest golden one. Units of
# the same 2^22 nonces as the 4-byte default keep every host useful.
DEFAULT_UNIT_NONCES_WIDE = 1 << 22
# Below this a unit costs more in messages than in hashing.
MIN_UNIT_NONCES = 1 << 16


def double_sha256(message: bytes) -> bytes:
    """SHA-256 of the raw SHA-256 digest of `data`."""
    return hashlib.sha256(hashlib.sha256(message).digest()).digest()


def zero_bits(digest: bytes) -> int:
    """Leading zero bits of a digest read as a big-endian number."""
    return len(digest) * 8 - int.from_bytes(digest, "big").bit_length()


@dataclass(frozen=True)
class Problem:
    """What is searched: the block, the nonce width and the difficulty."""

    block: bytes
    nonce_bytes: int
    difficulty: int

    @property
    def space(self) -> int:
        """How many nonces the space holds: 2^(8 * nonce_bytes)."""
        return 1 << (8 * self.nonce_bytes)

    def message(self, nonce: int) -> bytes:
        """The bytes hashed for `nonce`: block || big-endian nonce."""
        return self.block + nonce.to_bytes(self.nonce_bytes, "big")

    def hash(self, nonce: int) -> bytes:
        """The double SHA-256 of `nonce`'s message."""
        return double_sha256(self.message(nonce))

    def is_golden(self, nonce: int) -> bool:
        """True when `nonce`'s hash has at least `difficulty` leading zero bits."""
        return zero_bits(self.hash(nonce)) >= self.difficulty

    def scan(self, start: int, end: int) -> Optional[int]:
        """The lowest golden nonce in [start, end) by a plain sequential scan; a reference."""
        for nonce in range(start, end):
            if self.is_golden(nonce):
                return nonce
        return None

    @property
    def golden_probability(self) -> float:
        """The chance that one nonce is golden: 2^-D."""
        return 2.0 ** -self.difficulty

    def chance_space_has_none(self) -> float:
        """(1 - 2^-D)^(space), computed so it stays accurate for tiny 2^-D."""
        import math

        return math.exp(self.space * math.log1p(-self.golden_probability))


@dataclass(frozen=True)
class Unit:
    """A contiguous range [start, end) of nonces, handed out whole."""

    index: int
    start: int
    end: int

    @property
    def size(self) -> int:
        """Nonces in the unit."""
        return self.end - self.start


@dataclass(frozen=True)
class UnitSpace:
    """The nonce space cut into `count` equal units, made on demand, never listed."""

    nonce_bytes: int
    count: int

    @property
    def space(self) -> int:
        """Nonces in the whole space."""
        return 1 << (8 * self.nonce_bytes)

    @cached_property
    def unit_size(self) -> int:
        """Nonces in each unit (computed once: the fleet's loop asks at every grant)."""
        return self.space // self.count

    def unit(self, index: int) -> Unit:
        """The unit with this index."""
        if not 0 <= index < self.count:
            raise IndexError(f"unit {index} is outside 0..{self.count - 1}")
        start = index * self.unit_size
        return Unit(index, start, start + self.unit_size)

    def unit_of(self, nonce: int) -> int:
        """The index of the unit holding `nonce`."""
        return nonce // self.unit_size


def default_units(nonce_bytes: int) -> int:
    """The default unit count for a nonce width (SPEC's 1024, or 2^42 for 8 bytes)."""
    if nonce_bytes == 4:
        return DEFAULT_UNITS
    return (1 << (8 * nonce_bytes)) // DEFAULT_UNIT_NONCES_WIDE
