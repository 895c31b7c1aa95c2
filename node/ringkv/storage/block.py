"""SSTable data blocks: a few KiB of sorted entries, an offset array for binary search, a checksum.

Format (little-endian)::

    block   := entry*  offset:u32 * count  count:u32  crc:u32
    entry   := key_len:u32  value_len:u32  seq:u64  ts_ms:u64  key[key_len]  value[value_len]

`value_len == 0xFFFFFFFF` marks a tombstone (no value bytes follow). `offset[i]` is where entry i starts.
`crc` is CRC-32 (zlib) over everything before it. Keys within a block are strictly increasing.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

from ringkv.storage.entry import Entry

TOMBSTONE_LEN = 0xFFFFFFFF
_ENTRY = struct.Struct("<IIQQ")
_U32 = struct.Struct("<I")
_TRAILER = struct.Struct("<II")  # count, crc


class BlockBuilder:
    """Accumulates sorted entries into one block."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._offsets: list[int] = []
        self.last_key: bytes | None = None

    def add(self, entry: Entry) -> int:
        """Append an entry; returns the block's encoded size so far."""
        buf = self._buf
        self._offsets.append(len(buf))
        key, seq, value, ts_ms = entry
        if value is None:
            buf += _ENTRY.pack(len(key), TOMBSTONE_LEN, seq, ts_ms)
            buf += key
        else:
            buf += _ENTRY.pack(len(key), len(value), seq, ts_ms)
            buf += key
            buf += value
        self.last_key = key
        return len(buf) + 4 * len(self._offsets) + _TRAILER.size

    @property
    def size(self) -> int:
        return len(self._buf) + 4 * len(self._offsets) + _TRAILER.size

    def __len__(self) -> int:
        return len(self._offsets)

    def finish(self) -> bytes:
        count = len(self._offsets)
        body = self._buf + struct.pack(f"<{count}I", *self._offsets) + _U32.pack(count)
        return bytes(body + _U32.pack(zlib.crc32(body)))


class BlockError(ValueError):
    """The block failed its checksum or a structural check."""


class Block:
    """A verified, read-only view of one block."""

    __slots__ = ("_count", "_data", "_offsets_at")

    def __init__(self, data: bytes) -> None:
        if len(data) < _TRAILER.size:
            raise BlockError("block too short")
        count, crc = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
        if zlib.crc32(memoryview(data)[: len(data) - 4]) != crc:
            raise BlockError("block checksum mismatch")
        offsets_at = len(data) - _TRAILER.size - 4 * count
        if offsets_at < 0:
            raise BlockError("block entry count does not fit")
        self._data = data
        self._count = count
        self._offsets_at = offsets_at

    def _offset(self, i: int) -> int:
        off: int = _U32.unpack_from(self._data, self._offsets_at + 4 * i)[0]
        return off

    def _key_at(self, off: int) -> bytes:
        key_len = _U32.unpack_from(self._data, off)[0]
        start = off + _ENTRY.size
        return self._data[start : start + key_len]

    def _entry_at(self, off: int) -> Entry:
        key_len, value_len, seq, ts_ms = _ENTRY.unpack_from(self._data, off)
        start = off + _ENTRY.size
        key = self._data[start : start + key_len]
        if value_len == TOMBSTONE_LEN:
            return Entry(key, seq, None, ts_ms)
        vstart = start + key_len
        return Entry(key, seq, self._data[vstart : vstart + value_len], ts_ms)

    def _lower_bound(self, key: bytes) -> int:
        lo, hi = 0, self._count
        while lo < hi:
            mid = (lo + hi) // 2
            if self._key_at(self._offset(mid)) < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def get(self, key: bytes) -> Entry | None:
        i = self._lower_bound(key)
        if i < self._count:
            off = self._offset(i)
            if self._key_at(off) == key:
                return self._entry_at(off)
        return None

    def entries(self, start: bytes | None = None) -> Iterator[Entry]:
        i = 0 if start is None else self._lower_bound(start)
        for j in range(i, self._count):
            yield self._entry_at(self._offset(j))
