"""SSTable data blocks: builder to reader round trip, lookups, tombstones, checksums."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkv.storage.block import Block, BlockBuilder, BlockError
from ringkv.storage.entry import Entry

ENTRIES = [
    Entry(b"apple", 5, b"red", 100),
    Entry(b"banana", 9, None, 200),  # tombstone
    Entry(b"cherry", 1, b"", 300),  # empty value, not a tombstone
    Entry(b"date", 2**64 - 1, b"x" * 1000, 2**64 - 1),
]


def _block(entries: list[Entry]) -> bytes:
    builder = BlockBuilder()
    for e in entries:
        builder.add(e)
    return builder.finish()


def test_round_trip() -> None:
    block = Block(_block(ENTRIES))
    assert list(block.entries()) == ENTRIES


def test_builder_reports_its_encoded_size() -> None:
    builder = BlockBuilder()
    sizes = [builder.add(e) for e in ENTRIES]
    assert sizes == sorted(sizes)
    assert builder.size == sizes[-1] == len(builder.finish())
    assert len(builder) == len(ENTRIES)
    assert builder.last_key == b"date"


def test_get_hit_and_miss() -> None:
    block = Block(_block(ENTRIES))
    for e in ENTRIES:
        assert block.get(e.key) == e
    for missing in (b"", b"a", b"apples", b"blueberry", b"zzz"):
        assert block.get(missing) is None


def test_tombstones_and_empty_values_survive() -> None:
    block = Block(_block(ENTRIES))
    banana, cherry = block.get(b"banana"), block.get(b"cherry")
    assert banana is not None and banana.is_tombstone and banana.seq == 9
    assert cherry is not None and cherry.value == b"" and not cherry.is_tombstone


def test_entries_from_a_start_key() -> None:
    block = Block(_block(ENTRIES))
    assert [e.key for e in block.entries(b"banana")] == [b"banana", b"cherry", b"date"]
    assert [e.key for e in block.entries(b"bz")] == [b"cherry", b"date"]
    assert [e.key for e in block.entries(b"")] == [e.key for e in ENTRIES]
    assert list(block.entries(b"e")) == []


def test_empty_block() -> None:
    block = Block(BlockBuilder().finish())
    assert list(block.entries()) == [] and block.get(b"a") is None


@given(st.dictionaries(st.binary(max_size=12), st.none() | st.binary(max_size=30), max_size=60),
       st.binary(max_size=12))
def test_round_trip_property(model: dict[bytes, bytes | None], probe: bytes) -> None:
    entries = [Entry(k, i, v, i * 10) for i, (k, v) in enumerate(sorted(model.items()))]
    block = Block(_block(entries))
    assert list(block.entries()) == entries
    assert list(block.entries(probe)) == [e for e in entries if e.key >= probe]
    expected = next((e for e in entries if e.key == probe), None)
    assert block.get(probe) == expected


def test_every_flipped_byte_is_a_checksum_mismatch() -> None:
    data = _block(ENTRIES[:3])
    for pos in range(len(data)):
        damaged = bytearray(data)
        damaged[pos] ^= 0x10
        with pytest.raises(BlockError):
            Block(bytes(damaged))


def test_too_short_and_impossible_count_are_rejected() -> None:
    with pytest.raises(BlockError):
        Block(b"\x00" * 7)
    body = struct.pack("<I", 1000)  # claims 1000 offsets in a 4-byte body, with a valid checksum
    with pytest.raises(BlockError):
        Block(body + struct.pack("<I", zlib.crc32(body)))
