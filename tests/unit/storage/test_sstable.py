"""SSTables: writer to reader round trip, bounds, metadata, and corruption caught before it is returned."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.errors import CorruptionError
from ringkv.storage.entry import Entry
from ringkv.storage.sstable import SSTableReader, SSTableWriter, TableInfo, table_name

FOOTER = struct.Struct("<QIQIQQQQHHI8s")


def _entries(n: int) -> list[Entry]:
    """Keys k0000, k0002, ... (even numbers, so odd ones fall between), every 7th a tombstone."""
    return [Entry(b"k%04d" % (2 * i), 100 + i, None if i % 7 == 3 else b"value-%d" % i * (i % 4 + 1), 5000 + i)
            for i in range(n)]


def _write(directory: Path, entries: list[Entry], table_id: int = 1, block_bytes: int = 128) -> TableInfo:
    writer = SSTableWriter(str(directory), table_id, block_bytes=block_bytes)
    for e in entries:
        writer.add(e)
    return writer.finish()


def _layout(path: Path) -> dict[str, tuple[int, int]]:
    """Byte ranges [start, end) of the table's parts, read from its footer."""
    data = path.read_bytes()
    f_off, f_len, i_off, i_len, *_ = FOOTER.unpack_from(data, len(data) - FOOTER.size)
    return {"data": (0, f_off), "filter": (f_off, f_off + f_len), "index": (i_off, i_off + i_len),
            "footer": (len(data) - FOOTER.size, len(data))}


def _flip(path: Path, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([byte ^ 0x20]))


def test_round_trip_over_many_blocks(tmp_path: Path) -> None:
    entries = _entries(500)
    info = _write(tmp_path, entries, block_bytes=128)
    path = tmp_path / table_name(1)
    assert info.path == str(path) and path.exists()
    index = path.read_bytes()[slice(*_layout(path)["index"])]
    assert struct.unpack_from("<I", index, len(index) - 8)[0] > 50  # really many blocks
    reader = SSTableReader(str(path), 1)
    assert list(reader.entries()) == entries
    assert reader.info == info


def test_get_hit_and_miss(tmp_path: Path) -> None:
    entries = _entries(300)
    _write(tmp_path, entries)
    reader = SSTableReader(str(tmp_path / table_name(1)), 1)
    for e in entries:
        assert reader.get(e.key) == e
        assert reader.bloom.may_contain(e.key)  # the filter never rules out a present key
    for i in range(300):
        assert reader.get(b"k%04d" % (2 * i + 1)) is None  # between keys
    assert reader.get(b"") is None
    assert reader.get(b"a") is None
    assert reader.get(b"z") is None  # past the last block


def test_entries_respect_bounds(tmp_path: Path) -> None:
    entries = _entries(200)
    _write(tmp_path, entries, block_bytes=96)
    reader = SSTableReader(str(tmp_path / table_name(1)), 1)
    probes = [None, b"", b"k", b"k0000", b"k0001", b"k0150", b"k0151", b"k0398", b"k0399", b"z"]
    for start in probes:
        for end in probes:
            expected = [e for e in entries
                        if (start is None or e.key >= start) and (end is None or e.key < end)]
            assert list(reader.entries(start, end)) == expected, (start, end)


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(st.binary(min_size=1, max_size=6), st.none() | st.binary(max_size=40),
                       min_size=1, max_size=80),
       st.none() | st.binary(max_size=6), st.none() | st.binary(max_size=6))
def test_round_trip_property(tmp_path_factory: pytest.TempPathFactory, model: dict[bytes, bytes | None],
                             start: bytes | None, end: bytes | None) -> None:
    directory = tmp_path_factory.mktemp("sst")
    entries = [Entry(k, i + 1, v, i) for i, (k, v) in enumerate(sorted(model.items()))]
    _write(directory, entries, block_bytes=64)
    reader = SSTableReader(str(directory / table_name(1)), 1)
    assert list(reader.entries(start, end)) == [
        e for e in entries if (start is None or e.key >= start) and (end is None or e.key < end)]
    if start is not None:
        assert reader.get(start) == next((e for e in entries if e.key == start), None)


def test_table_info_fields(tmp_path: Path) -> None:
    entries = [Entry(b"b", 40, b"x", 0), Entry(b"c", 7, None, 0), Entry(b"d", 93, None, 0),
               Entry(b"e", 12, b"yy", 0)]
    info = _write(tmp_path, entries, table_id=42)
    assert info.table_id == 42
    assert info.entries == 4
    assert info.tombstones == 2
    assert (info.min_seq, info.max_seq) == (7, 93)
    assert (info.first_key, info.last_key) == (b"b", b"e")
    assert info.size_bytes == os.path.getsize(info.path)
    assert SSTableReader(info.path, 42).info == info


def test_keys_out_of_order_are_rejected(tmp_path: Path) -> None:
    writer = SSTableWriter(str(tmp_path), 1)
    writer.add(Entry(b"m", 1, b"", 0))
    with pytest.raises(ValueError):
        writer.add(Entry(b"m", 2, b"", 0))  # duplicates too: keys are strictly increasing
    with pytest.raises(ValueError):
        writer.add(Entry(b"a", 3, b"", 0))
    writer.add(Entry(b"n", 4, b"", 0))  # the writer is still usable
    info = writer.finish()
    assert [e.key for e in SSTableReader(info.path, 1).entries()] == [b"m", b"n"]


def test_an_empty_table_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    writer = SSTableWriter(str(tmp_path), 1)
    with pytest.raises(ValueError):
        writer.finish()
    assert os.listdir(tmp_path) == []


def test_no_tmp_file_after_finish_or_abort(tmp_path: Path) -> None:
    _write(tmp_path, _entries(50), table_id=1)
    writer = SSTableWriter(str(tmp_path), 2)
    writer.add(Entry(b"a", 1, b"", 0))
    assert (tmp_path / (table_name(2) + ".tmp")).exists()
    writer.abort()
    assert sorted(os.listdir(tmp_path)) == [table_name(1)]


def test_flipped_byte_in_a_data_block_is_corruption_on_read(tmp_path: Path) -> None:
    entries = _entries(16)
    info = _write(tmp_path, entries, block_bytes=128)
    path = tmp_path / table_name(1)
    pristine = path.read_bytes()
    start, end = _layout(path)["data"]
    for pos in range(start, end):
        path.write_bytes(pristine)
        _flip(path, pos)
        reader = SSTableReader(str(path), 1)  # the index and filter are intact: open succeeds
        with pytest.raises(CorruptionError) as err:
            list(reader.entries())
        assert err.value.path == str(path)
        # A point read of every key either returns the right entry (another block) or raises.
        hits = 0
        for e in entries:
            try:
                got = reader.get(e.key)
            except CorruptionError as caught:
                assert caught.path == info.path
                continue
            assert got == e, pos
            hits += 1
        assert hits < len(entries), pos  # the damaged block's keys did raise
        reader.close()


@pytest.mark.parametrize("part", ["filter", "index", "footer"])
def test_flipped_byte_in_metadata_is_corruption_at_open(tmp_path: Path, part: str) -> None:
    _write(tmp_path, _entries(30), block_bytes=128)
    path = tmp_path / table_name(1)
    pristine = path.read_bytes()
    start, end = _layout(path)[part]
    for pos in range(start, end):
        path.write_bytes(pristine)
        _flip(path, pos)
        with pytest.raises(CorruptionError) as err:
            SSTableReader(str(path), 1)
        assert err.value.path == str(path), pos


@pytest.mark.parametrize("keep", [0, 10, 71, -1])
def test_truncated_table_is_corruption_at_open(tmp_path: Path, keep: int) -> None:
    _write(tmp_path, _entries(30))
    path = tmp_path / table_name(1)
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(CorruptionError):
        SSTableReader(str(path), 1)


def test_reader_keeps_working_after_the_file_is_unlinked(tmp_path: Path) -> None:
    entries = _entries(100)
    info = _write(tmp_path, entries)
    reader = SSTableReader(info.path, 1)
    os.unlink(info.path)  # what compaction does to a table a scan may still be reading
    assert list(reader.entries()) == entries
