"""Commit-log record framing.

Format (little-endian; never change these constants without bumping the segment header version)::

    record  := crc:u32  length:u32  payload[length]
    payload := kind:u8  seq:u64  ts_ms:u64  key_len:u32  key[key_len]  value[length - 21 - key_len]

- `crc` is CRC-32 (zlib) over the `length` field and the payload, so a torn length is caught too.
- `kind` is 1 for a put, 2 for a delete (tombstone; the value part is empty).

Torn-tail rule: a reader stops at the first record that is incomplete (fewer bytes left than its header or
its length says) or whose CRC does not match. Everything before it is good; everything from it on is the
torn tail, which recovery truncates and reports. A record is never half-applied.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ringkv.storage.entry import Entry

KIND_PUT = 1
KIND_DELETE = 2

_FRAME = struct.Struct("<II")  # crc, length
_LEN = struct.Struct("<I")
_HEAD = struct.Struct("<BQQI")  # kind, seq, ts_ms, key_len
FRAME_SIZE = _FRAME.size
PAYLOAD_HEAD_SIZE = _HEAD.size
# A single record may not exceed this; anything larger in a length field is treated as a torn tail.
MAX_RECORD_BYTES = 64 * 1024 * 1024


def encode(entry: Entry) -> bytes:
    """Frame one entry as a commit-log record."""
    value = entry.value
    kind = KIND_PUT if value is not None else KIND_DELETE
    payload = _HEAD.pack(kind, entry.seq, entry.ts_ms, len(entry.key)) + entry.key
    if value is not None:
        payload += value
    length = _LEN.pack(len(payload))
    return _LEN.pack(zlib.crc32(payload, zlib.crc32(length))) + length + payload


@dataclass(frozen=True)
class Decoded:
    """Result of scanning a buffer: the good entries and where the good prefix ends."""

    entries: list[Entry]
    good_bytes: int
    torn: str | None  # why reading stopped early, or None when the buffer ended cleanly


def decode_all(data: bytes | memoryview) -> Decoded:
    """Decode every complete, intact record from the start of `data` (see the torn-tail rule)."""
    view = memoryview(data)
    entries: list[Entry] = []
    pos = 0
    end = len(view)
    while pos < end:
        if end - pos < FRAME_SIZE:
            return Decoded(entries, pos, f"incomplete record header at offset {pos}")
        crc, length = _FRAME.unpack_from(view, pos)
        if length < PAYLOAD_HEAD_SIZE or length > MAX_RECORD_BYTES:
            return Decoded(entries, pos, f"implausible record length {length} at offset {pos}")
        if end - pos - FRAME_SIZE < length:
            return Decoded(entries, pos, f"incomplete record at offset {pos}")
        start = pos + FRAME_SIZE
        if zlib.crc32(view[start : start + length], zlib.crc32(view[pos + 4 : start])) != crc:
            return Decoded(entries, pos, f"checksum mismatch at offset {pos}")
        kind, seq, ts_ms, key_len = _HEAD.unpack_from(view, start)
        key_start = start + PAYLOAD_HEAD_SIZE
        if key_len > length - PAYLOAD_HEAD_SIZE or kind not in (KIND_PUT, KIND_DELETE):
            return Decoded(entries, pos, f"malformed record at offset {pos}")
        key = bytes(view[key_start : key_start + key_len])
        value = bytes(view[key_start + key_len : start + length]) if kind == KIND_PUT else None
        entries.append(Entry(key, seq, value, ts_ms))
        pos = start + length
    return Decoded(entries, pos, None)

