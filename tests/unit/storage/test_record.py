"""Commit-log record framing: round trips, and the torn-tail rule under truncation and bit rot."""

from __future__ import annotations

import struct
import zlib

from hypothesis import given
from hypothesis import strategies as st

from ringkv.storage import record
from ringkv.storage.entry import Entry

ENTRIES = [
    Entry(b"alpha", 1, b"one", 1_000),
    Entry(b"beta", 2, None, 2_000),
    Entry(b"", 3, b"", 3_000),
    Entry(b"gamma", 2**64 - 1, b"\x00" * 300, 2**64 - 1),
]


def _buffer(entries: list[Entry]) -> tuple[bytes, list[int]]:
    """The records back to back, and the offset where each one starts."""
    offsets, data = [], b""
    for entry in entries:
        offsets.append(len(data))
        data += record.encode(entry)
    return data, offsets


def test_round_trip_puts_and_tombstones() -> None:
    data, _ = _buffer(ENTRIES)
    decoded = record.decode_all(data)
    assert decoded.entries == ENTRIES
    assert decoded.good_bytes == len(data)
    assert decoded.torn is None


def test_tombstone_is_distinct_from_empty_value() -> None:
    data = record.encode(Entry(b"k", 1, None, 0)) + record.encode(Entry(b"k", 2, b"", 0))
    decoded = record.decode_all(data)
    assert [e.value for e in decoded.entries] == [None, b""]
    assert decoded.entries[0].is_tombstone and not decoded.entries[1].is_tombstone


@given(st.lists(st.builds(Entry, st.binary(max_size=40), st.integers(0, 2**64 - 1),
                          st.none() | st.binary(max_size=80), st.integers(0, 2**64 - 1)), max_size=8))
def test_round_trip_property(entries: list[Entry]) -> None:
    data, _ = _buffer(entries)
    assert record.decode_all(memoryview(data)) == record.Decoded(entries, len(data), None)


def test_empty_buffer_is_clean() -> None:
    assert record.decode_all(b"") == record.Decoded([], 0, None)


def test_truncation_at_every_offset_of_the_last_record_keeps_the_earlier_ones() -> None:
    data, offsets = _buffer(ENTRIES)
    last = offsets[-1]
    for cut in range(last + 1, len(data)):
        decoded = record.decode_all(data[:cut])
        assert decoded.entries == ENTRIES[:-1], cut
        assert decoded.good_bytes == last, cut
        assert decoded.torn is not None, cut
    # Cut exactly at a record boundary: nothing is torn.
    assert record.decode_all(data[:last]) == record.Decoded(ENTRIES[:-1], last, None)


def test_truncation_anywhere_never_yields_a_wrong_entry() -> None:
    data, offsets = _buffer(ENTRIES)
    for cut in range(len(data) + 1):
        decoded = record.decode_all(data[:cut])
        whole = sum(1 for nxt in [*offsets[1:], len(data)] if nxt <= cut)  # records wholly inside
        assert decoded.entries == ENTRIES[:whole], cut
        assert decoded.good_bytes == [*offsets, len(data)][whole], cut
        assert (decoded.torn is None) == (decoded.good_bytes == cut), cut


def test_a_flipped_byte_stops_decoding_at_that_record() -> None:
    data, offsets = _buffer(ENTRIES)
    victim = 1  # a record in the middle: the ones after it must not be returned either
    for pos in range(offsets[victim], offsets[victim + 1]):
        damaged = bytearray(data)
        damaged[pos] ^= 0x40
        decoded = record.decode_all(bytes(damaged))
        assert decoded.entries == ENTRIES[:victim], pos
        assert decoded.good_bytes == offsets[victim], pos
        assert decoded.torn is not None and f"offset {offsets[victim]}" in decoded.torn, pos


def test_implausible_lengths_are_a_torn_tail() -> None:
    good = record.encode(ENTRIES[0])
    for length in (0, record.PAYLOAD_HEAD_SIZE - 1, record.MAX_RECORD_BYTES + 1, 2**32 - 1):
        bogus = struct.pack("<II", 0, length) + b"\x00" * 64
        decoded = record.decode_all(good + bogus)
        assert decoded.entries == [ENTRIES[0]]
        assert decoded.good_bytes == len(good)
        assert decoded.torn is not None and "implausible" in decoded.torn


def test_zero_filled_tail_is_torn_not_data() -> None:
    good = record.encode(ENTRIES[0])
    decoded = record.decode_all(good + b"\x00" * 4096)
    assert decoded.entries == [ENTRIES[0]]
    assert decoded.good_bytes == len(good)
    assert decoded.torn is not None


def test_malformed_payload_with_valid_crc_is_rejected() -> None:
    # A key length larger than the payload, framed with a correct CRC: structurally wrong, not data.
    payload = struct.pack("<BQQI", record.KIND_PUT, 1, 0, 1000) + b"short"
    length = struct.pack("<I", len(payload))
    frame = struct.pack("<I", zlib.crc32(payload, zlib.crc32(length))) + length + payload
    decoded = record.decode_all(frame)
    assert decoded.entries == []
    assert decoded.torn is not None and "malformed" in decoded.torn
    bad_kind = struct.pack("<BQQI", 9, 1, 0, 1) + b"k"
    length = struct.pack("<I", len(bad_kind))
    frame = struct.pack("<I", zlib.crc32(bad_kind, zlib.crc32(length))) + length + bad_kind
    assert record.decode_all(frame).entries == []
