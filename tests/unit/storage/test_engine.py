"""The engine end to end on one directory: reads, writes, flushes, compaction, recovery, failure modes."""

from __future__ import annotations

import os
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ringkv.errors import CorruptionError, EngineClosedError, StorageError
from ringkv.storage import manifest
from ringkv.storage.compaction import CompactionPolicy
from ringkv.storage.engine import LOG_FACTOR, Engine, EngineOptions
from ringkv.storage.entry import Entry
from ringkv.storage.wal import CommitLog, Durability, list_segments, segment_name

WAIT_S = 20.0  # deadline for conditions reached by background threads

Opener = Callable[..., Engine]


@pytest.fixture
def open_engine(tmp_path: Path) -> Iterator[Opener]:
    """`open_engine(path=tmp_path/"db", **options)`; every engine still open at the end is closed."""
    engines: list[Engine] = []

    def opener(path: Path | None = None, **options: Any) -> Engine:
        options.setdefault("durability", Durability.OFF)
        engine = Engine.open(str(path or tmp_path / "db"), EngineOptions(**options))
        engines.append(engine)
        return engine

    yield opener
    for engine in engines:
        engine.close(flush=False)


def _k(i: int) -> bytes:
    return b"key-%05d" % i


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# -- the basic contract ----------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", list(Durability))
def test_put_get_delete_scan(open_engine: Opener, durability: Durability) -> None:
    db = open_engine(durability=durability)
    assert db.get(b"a") is None
    db.put(b"b", b"2")
    db.put(b"a", b"1")
    db.put(b"c", b"3")
    db.put(b"empty", b"")
    assert db.get(b"a") == b"1" and db.get(b"empty") == b""
    db.delete(b"b")
    db.delete(b"never-written")
    assert db.get(b"b") is None
    assert list(db.scan()) == [(b"a", b"1"), (b"c", b"3"), (b"empty", b"")]
    assert list(db.scan(b"b", b"d")) == [(b"c", b"3")]
    assert list(db.scan(None, b"c")) == [(b"a", b"1")]
    assert list(db.scan(b"d")) == [(b"empty", b"")]
    tombstone = db.get_entry(b"b")
    assert tombstone is not None and tombstone.is_tombstone
    assert db.get_entry(b"zzz") is None
    assert db.stats.puts == 4 and db.stats.deletes == 2


def test_overwrite_returns_the_newest_value(open_engine: Opener) -> None:
    db = open_engine()
    for i in range(5):
        db.put(b"k", b"v%d" % i)
    assert db.get(b"k") == b"v4"
    assert list(db.scan()) == [(b"k", b"v4")]
    db.delete(b"k")
    db.put(b"k", b"back")
    assert db.get(b"k") == b"back"


def test_write_tickets_and_durability_callbacks(open_engine: Opener) -> None:
    db = open_engine(durability=Durability.SYNC)
    ticket = db.write(b"k", b"v")
    assert db.get(b"k") == b"v"  # visible before it is durable
    fired = threading.Event()
    db.when_durable(ticket, lambda err: fired.set() if err is None else None)
    assert fired.wait(WAIT_S)
    db.wait_durable(ticket)
    assert db.last_seq == 1


# -- flushes and tables ----------------------------------------------------------------------------------


def test_flush_then_reads_come_from_tables(open_engine: Opener) -> None:
    db = open_engine()
    model = {_k(i): b"v%d" % i for i in range(200)}
    for k, v in model.items():
        db.put(k, v)
    db.delete(_k(7))
    del model[_k(7)]
    db.flush()
    assert db.table_count == 1
    assert db.memtable_bytes == 0
    assert db.get_entry(_k(1), memory_only=True) is None  # nothing left in memory
    assert all(db.get(k) == v for k, v in model.items())
    assert db.get(_k(7)) is None
    assert dict(db.scan()) == model
    assert list(db.scan(_k(5), _k(9))) == [(_k(i), model[_k(i)]) for i in (5, 6, 8)]
    assert db.stats.flushes == 1
    db.flush()  # nothing in memory: no new table
    assert db.table_count == 1


def test_newer_memtable_shadows_older_tables(open_engine: Opener) -> None:
    db = open_engine(background_compaction=False)
    db.put(b"a", b"table-1")
    db.put(b"b", b"table-1")
    db.flush()
    db.put(b"a", b"table-2")
    db.delete(b"b")
    db.flush()
    db.put(b"a", b"memory")
    assert db.table_count == 2
    assert db.get(b"a") == b"memory"
    assert db.get(b"b") is None
    assert list(db.scan()) == [(b"a", b"memory")]


def test_writes_continue_during_background_flushes(open_engine: Opener) -> None:
    db = open_engine(memtable_bytes=4096, max_immutable_memtables=2, block_bytes=512)
    model: dict[bytes, bytes] = {}
    for i in range(3000):
        key = _k(i % 1700)  # some overwrites land in later memtables
        model[key] = b"%d" % i * 3
        db.put(key, model[key])
        if i % 500 == 0:  # reads interleaved with the flushes
            assert db.get(key) == model[key]
    assert db.stats.flushes > 0  # the flushes ran while the writer kept writing
    assert all(db.get(k) == v for k, v in model.items())
    assert dict(db.scan()) == model
    db.flush()
    assert dict(db.scan()) == model


# -- reopening and recovery ------------------------------------------------------------------------------


def test_reopen_after_close(open_engine: Opener) -> None:
    db = open_engine()
    for i in range(100):
        db.put(_k(i), b"v%d" % i)
    db.delete(_k(3))
    db.close()
    assert db.table_count == 1  # close flushed
    db = open_engine()
    assert db.get(_k(50)) == b"v50" and db.get(_k(3)) is None
    assert len(list(db.scan())) == 99
    assert db.last_seq == 101


@pytest.mark.parametrize("durability", list(Durability))
def test_reopen_after_close_without_flush_recovers_from_the_commit_log(
        open_engine: Opener, durability: Durability) -> None:
    db = open_engine(durability=durability)
    db.put(b"flushed", b"1")
    db.flush()
    db.put(b"logged", b"2")
    db.put(b"flushed", b"overwritten")
    db.delete(b"gone")
    seq = db.last_seq
    db.close(flush=False)
    db = open_engine(durability=durability)
    assert db.get(b"logged") == b"2"
    assert db.get(b"flushed") == b"overwritten"
    assert db.last_seq >= seq
    db.put(b"logged", b"after")  # numbering continues above the recovered writes
    db.close(flush=False)
    db = open_engine(durability=durability)
    assert db.get(b"logged") == b"after"
    assert list(db.scan()) == [(b"flushed", b"overwritten"), (b"logged", b"after")]


def test_recovery_cuts_a_torn_commit_log_tail(open_engine: Opener, tmp_path: Path) -> None:
    db = open_engine(durability=Durability.SYNC)
    db.put(b"a", b"1")
    db.put(b"b", b"2")
    db.close(flush=False)
    directory = tmp_path / "db"
    last = directory / segment_name(list_segments(str(directory))[-1])
    with open(last, "ab") as f:
        f.write(struct.pack("<II", 12345, 40) + b"partial")  # a record the crash cut short
    db = open_engine()
    assert db.stats.torn_tails_recovered == 1
    assert list(db.scan()) == [(b"a", b"1"), (b"b", b"2")]


def _crashed_log(directory: Path, segments: dict[int, list[tuple[bytes, bytes | None]]]) -> None:
    """What a crash leaves: commit-log segments nobody flushed, and no manifest."""
    directory.mkdir()
    seq = 0
    for segment, writes in segments.items():
        log = CommitLog(str(directory), segment, Durability.SYNC)
        for key, value in writes:
            seq += 1
            log.append(Entry(key, seq, value, 0))
        log.close()


def test_recovery_replays_every_segment_in_order(open_engine: Opener, tmp_path: Path) -> None:
    directory = tmp_path / "db"
    _crashed_log(directory, {3: [(b"a", b"old"), (b"b", b"1"), (b"c", b"1")],
                             4: [(b"a", b"new"), (b"b", None)]})
    db = open_engine()
    assert list(db.scan()) == [(b"a", b"new"), (b"c", b"1")]
    assert db.last_seq == 5
    db.put(b"c", b"2")  # numbered above the recovered writes, so it wins after another recovery
    db.close(flush=False)
    db = open_engine()
    assert db.get(b"c") == b"2"
    assert len(list_segments(str(directory))) == 1  # replayed segments are gone once in a table


def test_corruption_in_a_sealed_segment_fails_the_open(open_engine: Opener, tmp_path: Path) -> None:
    directory = tmp_path / "db"
    _crashed_log(directory, {1: [(b"a", b"1"), (b"b", b"2")], 2: [(b"c", b"3")]})
    sealed = directory / segment_name(1)
    data = bytearray(sealed.read_bytes())
    data[-3] ^= 0x01
    sealed.write_bytes(bytes(data))
    with pytest.raises(CorruptionError) as err:
        Engine.open(str(directory))
    assert err.value.path == str(sealed)


def test_concurrent_writers_in_sync_mode(open_engine: Opener) -> None:
    db = open_engine(durability=Durability.SYNC, memtable_bytes=16 * 1024)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(100):
                db.put(b"w%d-%03d" % (w, i), b"%d" % i)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(list(db.scan())) == 400
    db.close(flush=False)
    db = open_engine(durability=Durability.SYNC)
    assert len(list(db.scan())) == 400


def test_a_second_open_fails_while_the_first_is_open(open_engine: Opener, tmp_path: Path) -> None:
    db = open_engine()
    db.put(b"k", b"v")
    with pytest.raises(StorageError):
        Engine.open(str(tmp_path / "db"))
    assert db.get(b"k") == b"v"  # the failed open disturbed nothing
    db.close()
    again = open_engine()
    assert again.get(b"k") == b"v"


def test_unreferenced_files_are_removed_at_open(open_engine: Opener, tmp_path: Path) -> None:
    db = open_engine()
    db.put(b"k", b"v")
    db.close()
    directory = tmp_path / "db"
    strays = ["0000000099.sst", "0000000100.sst.tmp", "MANIFEST.tmp", segment_name(0)]
    for name in strays:
        (directory / name).write_bytes(b"junk")
    db = open_engine()
    left = set(os.listdir(directory))
    assert not left & set(strays)
    state = manifest.load(str(directory))
    assert state is not None
    live = {f"{t:010d}.sst" for t in state.tables}
    assert {n for n in left if n.endswith(".sst")} == live
    assert db.get(b"k") == b"v"


def test_flipped_byte_in_a_table_is_a_corruption_error_on_read(open_engine: Opener, tmp_path: Path) -> None:
    db = open_engine()
    for i in range(50):
        db.put(_k(i), b"value")
    db.close()
    directory = tmp_path / "db"
    (table,) = [directory / n for n in os.listdir(directory) if n.endswith(".sst")]
    data = bytearray(table.read_bytes())
    data[30] ^= 0x01  # inside the first data block (the first key's record)
    table.write_bytes(bytes(data))
    db = open_engine()  # data blocks are verified when read, not at open
    with pytest.raises(CorruptionError) as err:
        db.get(_k(0))
    assert err.value.path == str(table)
    with pytest.raises(CorruptionError):
        list(db.scan())


def test_a_damaged_table_footer_fails_the_open_loudly(open_engine: Opener, tmp_path: Path) -> None:
    db = open_engine()
    db.put(b"k", b"v")
    db.close()
    directory = tmp_path / "db"
    (table,) = [directory / n for n in os.listdir(directory) if n.endswith(".sst")]
    data = bytearray(table.read_bytes())
    data[-20] ^= 0x01  # the footer's checksum
    table.write_bytes(bytes(data))
    for _ in range(2):  # the failed open released the directory: the second attempt fails the same way
        with pytest.raises(CorruptionError) as err:
            Engine.open(str(directory))
        assert err.value.path == str(table)


def test_a_damaged_manifest_fails_the_open(open_engine: Opener, tmp_path: Path) -> None:
    db = open_engine()
    db.put(b"k", b"v")
    db.close()
    path = tmp_path / "db" / manifest.FILE_NAME
    path.write_bytes(path.read_bytes().replace(b'"tables":[', b'"tables":[7,'))
    with pytest.raises(CorruptionError):
        Engine.open(str(tmp_path / "db"))


def test_use_after_close_raises(open_engine: Opener) -> None:
    db = open_engine()
    db.put(b"k", b"v")
    db.close()
    db.close()  # idempotent
    for use in (lambda: db.put(b"k", b"v"), lambda: db.get(b"k"), lambda: db.delete(b"k"),
                lambda: db.scan(), lambda: db.scan_entries(), lambda: db.flush(), lambda: db.compact(),
                lambda: db.write(b"k", None)):
        with pytest.raises(EngineClosedError):
            use()


def test_context_manager_closes(tmp_path: Path) -> None:
    with Engine.open(str(tmp_path / "db"), EngineOptions(durability=Durability.OFF)) as db:
        db.put(b"k", b"v")
    with pytest.raises(EngineClosedError):
        db.get(b"k")
    with Engine.open(str(tmp_path / "db"), EngineOptions(durability=Durability.OFF)) as db:
        assert db.get(b"k") == b"v"


# -- compaction ------------------------------------------------------------------------------------------


def _fill_tables(db: Engine, rounds: int, keys: int = 30) -> dict[bytes, bytes | None]:
    """`rounds` flushed tables over the same keys; returns the expected newest value per key."""
    model: dict[bytes, bytes | None] = {}
    for r in range(rounds):
        for i in range(r, keys, r + 1):  # overlapping subsets, so versions of a key span tables
            value = b"round-%d" % r
            db.put(_k(i), value)
            model[_k(i)] = value
        if r % 2:
            db.delete(_k(r))
            model[_k(r)] = None
        db.flush()
    return model


def test_compaction_merges_tables_and_the_newest_value_wins(open_engine: Opener) -> None:
    db = open_engine(background_compaction=False)
    model = _fill_tables(db, rounds=4)
    assert db.table_count == 4
    assert db.compact() is True
    assert db.table_count == 1
    assert db.stats.compactions == 1 and db.stats.compaction_bytes_written > 0
    assert db.compact() is False  # nothing left to pick
    assert {k: db.get(k) for k in model} == model
    assert dict(db.scan()) == {k: v for k, v in model.items() if v is not None}
    db.close()
    db = open_engine(background_compaction=False)
    assert db.table_count == 1
    assert {k: db.get(k) for k in model} == model


def test_background_compaction_runs_on_its_own(open_engine: Opener) -> None:
    db = open_engine(compaction=CompactionPolicy(min_tables=3))
    model = _fill_tables(db, rounds=3)
    _wait_until(lambda: db.table_count == 1, "the background compaction")
    assert {k: db.get(k) for k in model} == model


def test_full_compaction_merges_everything(open_engine: Opener) -> None:
    db = open_engine(background_compaction=False)
    model = _fill_tables(db, rounds=3)
    assert db.compact() is False  # fewer than min_tables: the policy waits
    assert db.compact(full=True) is True
    assert db.table_count == 1
    assert {k: db.get(k) for k in model} == model


class _Clock:
    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


GRACE_S = 60.0


def _deleted_across_tables(db: Engine) -> None:
    """`gone` written in the oldest table and deleted in a newer one; `kept` alive."""
    db.put(b"gone", b"old value")
    db.put(b"kept", b"1")
    db.flush()
    db.delete(b"gone")
    db.flush()


def test_full_compaction_keeps_tombstones_inside_the_grace_period(open_engine: Opener) -> None:
    clock = _Clock(1_000_000)
    db = open_engine(background_compaction=False, tombstone_grace_s=GRACE_S, clock_ms=clock)
    _deleted_across_tables(db)
    clock.now_ms += int(GRACE_S * 1000) - 1
    assert db.compact(full=True)
    entry = db.get_entry(b"gone")
    assert entry is not None and entry.is_tombstone  # still there to shadow replicas' older copies
    assert db.get(b"gone") is None
    assert [e.key for e in db.scan_entries()] == [b"gone", b"kept"]


def test_full_compaction_drops_tombstones_after_the_grace_period(open_engine: Opener) -> None:
    clock = _Clock(1_000_000)
    db = open_engine(background_compaction=False, tombstone_grace_s=GRACE_S, clock_ms=clock)
    _deleted_across_tables(db)
    clock.now_ms += int(GRACE_S * 1000)
    assert db.compact(full=True)
    assert db.get_entry(b"gone") is None  # purged, and the older value did not come back
    assert [(e.key, e.value) for e in db.scan_entries()] == [(b"kept", b"1")]
    db.close()
    db = open_engine(background_compaction=False, tombstone_grace_s=GRACE_S, clock_ms=clock)
    assert db.get(b"gone") is None


def test_partial_compaction_never_drops_a_tombstone_that_shadows_an_older_table(open_engine: Opener) -> None:
    clock = _Clock(1_000_000)
    policy = CompactionPolicy(min_tables=2, max_tables=2)
    db = open_engine(background_compaction=False, tombstone_grace_s=GRACE_S, clock_ms=clock, compaction=policy)
    db.put(b"gone", b"old value")
    for i in range(300):  # a big oldest table: the cheaper run is the two newer ones
        db.put(_k(i), b"filler" * 4)
    db.flush()
    db.delete(b"gone")
    db.flush()
    db.put(b"other", b"x")
    db.flush()
    clock.now_ms += int(GRACE_S * 1000) * 10
    assert db.compact() is True
    assert db.table_count == 2
    assert db.get(b"gone") is None  # not resurrected from the oldest table


def test_all_data_deleted_and_purged(open_engine: Opener) -> None:
    clock = _Clock(0)
    db = open_engine(background_compaction=False, tombstone_grace_s=1.0, clock_ms=clock)
    db.put(b"a", b"1")
    db.flush()
    db.delete(b"a")
    db.flush()
    clock.now_ms = 10_000
    assert db.compact(full=True)
    assert db.table_count == 0
    db.put(b"b", b"2")
    db.close()
    db = open_engine(background_compaction=False, tombstone_grace_s=1.0, clock_ms=clock)
    assert list(db.scan()) == [(b"b", b"2")]


# -- bloom filters ---------------------------------------------------------------------------------------


def test_bloom_counters_move(open_engine: Opener) -> None:
    db = open_engine(background_compaction=False)
    for i in range(0, 400, 2):
        db.put(_k(i), b"v")
    db.flush()
    assert db.get(_k(10)) == b"v"
    assert db.stats.bloom_positives == 1
    misses = [_k(i) for i in range(1, 398, 2)]  # inside the table's key range, never written
    assert all(db.get(k) is None for k in misses)
    assert db.stats.bloom_negatives + db.stats.bloom_false_positives == len(misses)
    assert db.stats.bloom_negatives > len(misses) * 0.9  # the filter spared most block reads
    assert db.stats.gets == 1 + len(misses)
    before = db.stats.bloom_negatives
    db.get(b"zzz")  # outside every table's key range: the filter is not even asked
    assert db.stats.bloom_negatives == before


# -- snapshots -------------------------------------------------------------------------------------------


def test_scan_is_a_snapshot_of_the_moment_it_was_called(open_engine: Opener) -> None:
    db = open_engine(background_compaction=False)
    for i in range(0, 20):
        db.put(_k(i), b"old")
    db.flush()
    for i in range(20, 40):
        db.put(_k(i), b"old")  # these stay in the memtable
    scan = db.scan()
    assert next(scan) == (_k(0), b"old")
    for i in range(0, 40):
        db.put(_k(i), b"new")
    db.put(_k(999), b"new key")
    db.delete(_k(30))
    db.flush()
    db.compact(full=True)
    assert list(scan) == [(_k(i), b"old") for i in range(1, 40)]


def test_scan_sees_a_consistent_snapshot_while_writes_continue(open_engine: Opener) -> None:
    """Round r of the writer puts `z`=r, then `a`=r, then a new key `n<r>` (which sorts between them). At any
    one moment, therefore, z is a or a+1 and there are a-1 or a `n` keys; a scan must show such a moment."""
    db = open_engine(memtable_bytes=4096, max_immutable_memtables=2, compaction=CompactionPolicy(min_tables=3))
    db.put(b"a", b"0")
    db.put(b"z", b"0")
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for r in range(1, 1_000_000):
                if stop.is_set():
                    return
                db.put(b"z", b"%d" % r)
                db.put(b"a", b"%d" % r)
                db.put(b"n%07d" % r, b"x" * 20)
        except BaseException as e:  # surfaced below
            errors.append(e)

    thread = threading.Thread(target=writer)
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the writer with the scans as finely as the GIL allows
    thread.start()
    deadline = time.monotonic() + WAIT_S
    try:
        scans = 0
        while scans < 100 or db.stats.flushes < 3:  # until the scans have crossed memtables and tables
            assert time.monotonic() < deadline, "the writer made too little progress"
            scans += 1
            seen = dict(db.scan())
            a, z, n = int(seen.pop(b"a")), int(seen.pop(b"z")), len(seen)
            assert a <= z <= a + 1, (a, z)
            assert a - 1 <= n <= a, (a, n)
    finally:
        sys.setswitchinterval(switch_interval)
        stop.set()
        thread.join(WAIT_S)
    assert not thread.is_alive()
    assert errors == []


def test_full_compaction_purges_expired_tombstones_from_a_single_table(tmp_path) -> None:
    now = [0]
    options = EngineOptions(durability=Durability.OFF, tombstone_grace_s=1.0, clock_ms=lambda: now[0])
    with Engine.open(str(tmp_path / "db"), options) as db:
        db.put(b"a", b"1")
        db.flush()
        db.delete(b"a")
        db.flush()
        assert db.compact(full=True)  # inside the grace period: the tombstone stays
        assert [e.key for e in db.scan_entries()] == [b"a"]
        now[0] = 10_000
        assert db.compact(full=True)
        assert list(db.scan_entries()) == []
        assert db.table_count == 0


def test_overwriting_a_hot_set_smaller_than_the_memtable_still_bounds_the_commit_log(tmp_path: Path) -> None:
    """A memtable that never fills (a few keys overwritten) is frozen once LOG_FACTOR x its size went through
    its commit-log segment: the log does not grow without bound, nor the replay at the next start."""
    limit = 64 * 1024
    engine = Engine.open(str(tmp_path / "db"), EngineOptions(durability=Durability.OFF, memtable_bytes=limit))
    try:
        for i in range(3000):  # ~3 MB written, 10 live keys (~10 KB): the memtable alone would never fill
            engine.put(b"hot%d" % (i % 10), b"%06d" % i + b"v" * 1000)
        deadline = time.monotonic() + WAIT_S
        while engine._view.frozen:  # the background thread flushes them and deletes their segments
            assert time.monotonic() < deadline, "frozen memtables were not flushed"
            time.sleep(0.01)
        logs = sum(p.stat().st_size for p in (tmp_path / "db").glob("wal-*.log"))
        assert logs <= (LOG_FACTOR + 2) * limit, f"{logs} bytes of commit log for ~10 KB of data"
        assert engine.stats.flushes >= 1
        assert engine.get(b"hot9") == b"%06d" % 2999 + b"v" * 1000
    finally:
        engine.close()
