"""The commit log: durability modes, callbacks, rotation, replay, torn tails and corruption."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from ringkv.errors import CorruptionError, StorageError
from ringkv.storage import record, wal
from ringkv.storage.entry import Entry
from ringkv.storage.wal import SEGMENT_MAGIC, CommitLog, Durability, read_segments, segment_name

WAIT_S = 10.0  # generous deadline for conditions set by the commit-log thread


def _entries(n: int, prefix: bytes = b"k") -> list[Entry]:
    return [Entry(prefix + b"%04d" % i, i + 1, None if i % 5 == 4 else b"v%d" % i, 1000 + i)
            for i in range(n)]


def _write_segment(tmp_path: Path, segment_id: int, entries: list[Entry]) -> Path:
    log = CommitLog(str(tmp_path), segment_id, Durability.SYNC)
    try:
        for entry in entries:
            log.append(entry)
    finally:
        log.close()
    return tmp_path / segment_name(segment_id)


@pytest.mark.parametrize("mode", list(Durability))
def test_append_then_wait_durable_in_every_mode(tmp_path: Path, mode: Durability) -> None:
    entries = _entries(50)
    log = CommitLog(str(tmp_path), 7, mode, batch_interval_s=0.001)
    try:
        tickets = [log.append(e) for e in entries]
        assert tickets == list(range(1, 51))
        log.wait_durable(tickets[-1])
        if mode is not Durability.OFF:  # sync and batch: durable means written (and fsynced) to the file
            assert read_segments(str(tmp_path), [7]).entries == entries
    finally:
        log.close()
    assert read_segments(str(tmp_path), [7]).entries == entries  # close writes everything pending


def test_concurrent_writers_all_become_durable(tmp_path: Path) -> None:
    log = CommitLog(str(tmp_path), 1, Durability.SYNC)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(40):
                log.wait_durable(log.append(Entry(b"w%d-%03d" % (w, i), 1, b"x", 0)))
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert not any(t.is_alive() for t in threads)
    log.close()
    assert errors == []
    assert len(read_segments(str(tmp_path), [1]).entries) == 160


def test_sync_mode_reports_fsync_durations(tmp_path: Path) -> None:
    seen: list[float] = []
    log = CommitLog(str(tmp_path), 1, Durability.SYNC, on_fsync=seen.append)
    try:
        log.wait_durable(log.append(_entries(1)[0]))
    finally:
        log.close()
    assert seen and all(d >= 0 for d in seen)


@pytest.mark.parametrize("mode", list(Durability))
def test_when_durable_callback_fires(tmp_path: Path, mode: Durability) -> None:
    log = CommitLog(str(tmp_path), 1, mode)
    try:
        fired = threading.Event()
        results: list[BaseException | None] = []

        def callback(err: BaseException | None) -> None:
            results.append(err)
            fired.set()

        ticket = log.append(_entries(1)[0])
        log.when_durable(ticket, callback)
        assert fired.wait(WAIT_S)
        assert results == [None]
        # A ticket that is already durable calls back right away, on the caller's thread.
        log.wait_durable(ticket)
        late: list[BaseException | None] = []
        log.when_durable(ticket, late.append)
        assert late == [None]
    finally:
        log.close()


def test_failed_fsync_poisons_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = CommitLog(str(tmp_path), 1, Durability.SYNC)

    def broken_fdatasync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken_fdatasync)
    try:
        ticket = log.append(_entries(1)[0])
        errors: list[BaseException | None] = []
        fired = threading.Event()

        def callback(err: BaseException | None) -> None:
            errors.append(err)
            fired.set()

        log.when_durable(ticket, callback)
        with pytest.raises(StorageError):
            log.wait_durable(ticket)
        assert fired.wait(WAIT_S)
        assert isinstance(errors[0], OSError)
        with pytest.raises(StorageError):
            log.append(_entries(2)[1])
    finally:
        log.close()


def test_rotate_seals_the_segment_and_continues_in_a_new_one(tmp_path: Path) -> None:
    first, second = _entries(10, b"a"), _entries(10, b"b")
    log = CommitLog(str(tmp_path), 3, Durability.OFF)  # off mode: only rotate/close make the bytes land
    try:
        for e in first:
            log.append(e)
        assert log.rotate(4) == 3
        assert log.segment_id == 4
        # The sealed segment holds every record appended before rotation.
        assert read_segments(str(tmp_path), [3]).entries == first
        assert (tmp_path / segment_name(4)).read_bytes() == SEGMENT_MAGIC
        for e in second:
            log.append(e)
    finally:
        log.close()
    assert read_segments(str(tmp_path), [4]).entries == second
    assert wal.list_segments(str(tmp_path)) == [3, 4]


def test_read_segments_replays_in_the_given_order(tmp_path: Path) -> None:
    parts = {2: _entries(5, b"x"), 10: _entries(7, b"y"), 11: _entries(3, b"z")}
    for seg, entries in parts.items():
        _write_segment(tmp_path, seg, entries)
    (tmp_path / "wal-12.log").write_bytes(b"not a segment name")  # wrong width: ignored
    (tmp_path / "0000000001.sst").write_bytes(b"")
    assert wal.list_segments(str(tmp_path)) == [2, 10, 11]
    recovered = read_segments(str(tmp_path), [2, 10, 11])
    assert recovered.entries == parts[2] + parts[10] + parts[11]
    assert recovered.segments == [2, 10, 11]
    assert recovered.torn == []


def test_torn_last_segment_is_truncated_on_disk_and_reported(tmp_path: Path) -> None:
    a, b = _entries(4, b"a"), _entries(6, b"b")
    _write_segment(tmp_path, 1, a)
    last = _write_segment(tmp_path, 2, b)
    good_size = last.stat().st_size
    with open(last, "ab") as f:
        f.write(record.encode(Entry(b"torn", 99, b"value", 0))[:-3])  # the crash cut it short
    recovered = read_segments(str(tmp_path), [1, 2])
    assert recovered.entries == a + b
    assert len(recovered.torn) == 1 and str(last) in recovered.torn[0]
    assert last.stat().st_size == good_size
    # Replaying again finds a clean log.
    again = read_segments(str(tmp_path), [1, 2])
    assert again.entries == a + b and again.torn == []


def test_incomplete_header_of_the_last_segment_is_cut_off(tmp_path: Path) -> None:
    a = _entries(3)
    _write_segment(tmp_path, 1, a)
    last = tmp_path / segment_name(2)
    last.write_bytes(SEGMENT_MAGIC[:3])
    recovered = read_segments(str(tmp_path), [1, 2])
    assert recovered.entries == a
    assert len(recovered.torn) == 1
    assert last.stat().st_size == 0


def test_incomplete_header_of_an_earlier_segment_is_corruption(tmp_path: Path) -> None:
    first = tmp_path / segment_name(1)
    first.write_bytes(SEGMENT_MAGIC[:5])
    _write_segment(tmp_path, 2, _entries(2))
    with pytest.raises(CorruptionError) as info:
        read_segments(str(tmp_path), [1, 2])
    assert info.value.path == str(first)


def test_corruption_in_a_sealed_segment_raises_naming_the_file(tmp_path: Path) -> None:
    first = _write_segment(tmp_path, 1, _entries(10))
    _write_segment(tmp_path, 2, _entries(3, b"b"))
    data = bytearray(first.read_bytes())
    data[len(SEGMENT_MAGIC) + 40] ^= 0xFF
    first.write_bytes(bytes(data))
    size = first.stat().st_size
    with pytest.raises(CorruptionError) as info:
        read_segments(str(tmp_path), [1, 2])
    assert info.value.path == str(first)
    assert str(first) in str(info.value)
    assert first.stat().st_size == size  # a sealed segment is never truncated


def test_torn_record_in_a_sealed_segment_is_corruption_not_a_silent_cut(tmp_path: Path) -> None:
    first = _write_segment(tmp_path, 1, _entries(5))
    _write_segment(tmp_path, 2, _entries(1, b"b"))
    with open(first, "rb+") as f:
        f.truncate(first.stat().st_size - 2)
    with pytest.raises(CorruptionError) as info:
        read_segments(str(tmp_path), [1, 2])
    assert info.value.path == str(first)


@pytest.mark.parametrize("last", [True, False])
def test_bad_segment_header_is_corruption(tmp_path: Path, last: bool) -> None:
    bad = _write_segment(tmp_path, 1, _entries(2))
    data = bytearray(bad.read_bytes())
    data[0] ^= 0x01
    bad.write_bytes(bytes(data))
    segments = [1] if last else [1, 2]
    if not last:
        _write_segment(tmp_path, 2, _entries(1))
    with pytest.raises(CorruptionError) as info:
        read_segments(str(tmp_path), segments)
    assert info.value.path == str(bad)


def test_newer_format_version_is_rejected(tmp_path: Path) -> None:
    seg = _write_segment(tmp_path, 1, _entries(1))
    data = seg.read_bytes()
    seg.write_bytes(b"RKVWAL" + (2).to_bytes(2, "little") + data[len(SEGMENT_MAGIC) :])
    with pytest.raises(CorruptionError):
        read_segments(str(tmp_path), [1])


def test_empty_segment_replays_nothing(tmp_path: Path) -> None:
    log = CommitLog(str(tmp_path), 5, Durability.SYNC)
    log.close()
    assert os.path.getsize(tmp_path / segment_name(5)) == len(SEGMENT_MAGIC)
    assert read_segments(str(tmp_path), [5]) == wal.Recovered(segments=[5])
