"""Bloom filter over Murmur3 (mmh3), one per SSTable.

k probe positions come from one 128-bit Murmur3 hash (x64 variant, seed 0x52696E67, unsigned halves h1, h2)
combined as (h1 + i*h2) mod num_bits for i in 0..k-1, computed exactly (no 64-bit wrap-around)
(Kirsch-Mitzenmacher double hashing). Bit p is bit (p mod 8) of byte p div 8.
With `bits_per_key` b the number of probes is round(b * ln 2):
10 bits per key -> 7 probes -> about 0.8% false positives.

Serialized form (inside an SSTable's filter block)::

    num_bits:u64  num_probes:u8  bits[ceil(num_bits / 8)]
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable

import mmh3

_HEAD = struct.Struct("<QB")
_SEED = 0x52696E67  # "Ring"


class BloomFilter:
    __slots__ = ("bits", "num_bits", "num_probes")

    def __init__(self, num_bits: int, num_probes: int, bits: bytearray | None = None) -> None:
        self.num_bits = max(64, num_bits)
        self.num_probes = max(1, min(30, num_probes))
        self.bits = bits if bits is not None else bytearray((self.num_bits + 7) // 8)

    @classmethod
    def for_keys(cls, expected_keys: int, bits_per_key: float = 10.0) -> BloomFilter:
        num_bits = int(max(1, expected_keys) * bits_per_key)
        return cls(num_bits, round(bits_per_key * math.log(2)))

    def add_many(self, keys: Iterable[bytes]) -> None:
        """Add keys; one tight loop (table builds add every key of a flush at once)."""
        bits = self.bits
        m = self.num_bits
        probes = range(self.num_probes)
        hash64 = mmh3.hash64
        for key in keys:
            h1, h2 = hash64(key, _SEED, signed=False)
            for _ in probes:
                p = h1 % m
                bits[p >> 3] |= 1 << (p & 7)
                h1 += h2

    def add(self, key: bytes) -> None:
        self.add_many((key,))

    def may_contain(self, key: bytes) -> bool:
        bits = self.bits
        m = self.num_bits
        h1, h2 = mmh3.hash64(key, _SEED, signed=False)
        for _ in range(self.num_probes):
            p = h1 % m
            if not bits[p >> 3] & (1 << (p & 7)):
                return False
            h1 += h2
        return True

    def to_bytes(self) -> bytes:
        return _HEAD.pack(self.num_bits, self.num_probes) + bytes(self.bits)

    @classmethod
    def from_bytes(cls, data: bytes) -> BloomFilter:
        """Raises ValueError on a malformed filter (the SSTable reader turns it into a corruption error)."""
        if len(data) < _HEAD.size:
            raise ValueError("bloom filter too short")
        num_bits, num_probes = _HEAD.unpack_from(data)
        bits = bytearray(data[_HEAD.size :])
        if num_bits < 64 or num_probes < 1 or len(bits) != (num_bits + 7) // 8:
            raise ValueError("bloom filter header does not match its size")
        return cls(num_bits, num_probes, bits)
