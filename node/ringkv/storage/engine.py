"""The LSM engine: the write path, the read path, flushes, compaction and recovery, tied together.

Directory layout::

    LOCK                 flock'ed while open (one process per directory)
    MANIFEST             live tables and the commit-log floor (`manifest`)
    wal-NNNNNNNNNN.log   commit-log segments (`wal`)
    NNNNNNNNNN.sst       SSTables (`sstable`)

File numbers for segments and tables come from one counter.

Write path: under the write lock, take the next sequence number, append the record to the commit log, put
the entry in the active memtable; then (outside the lock) wait until the log says the record is durable.
When the memtable holds `memtable_bytes`, or when `LOG_FACTOR` times that was written to it (overwrites of a
hot set that fits in the memtable would otherwise grow its commit-log segment without bound, and with it the
replay at the next start), it is frozen and the log rotates, so each segment holds exactly one memtable.
Frozen memtables are flushed to SSTables by the background thread, oldest first; writers stall
when `max_immutable_memtables` are waiting.

Read path: active memtable, frozen memtables (newest first), then tables newest first; for a table the key
range and the bloom filter are checked before any block is read. The first entry found is the newest
version (see `compaction` for why that invariant holds). Entries written but not yet durable are visible
to readers, as in Cassandra and RocksDB.

The engine's view (`_View`: memtables + tables) is an immutable snapshot replaced whole under a lock, so
readers never lock and a scan keeps a consistent set of tables while flushes and compactions go on.

Recovery at open: load the manifest, delete files it does not name, replay the commit-log segments at or
above its floor (cutting a torn tail), write what they held into one table, and start a fresh segment.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from ringkv.errors import EngineClosedError, StorageError
from ringkv.storage import compaction, manifest
from ringkv.storage.cache import BlockCache
from ringkv.storage.entry import Entry
from ringkv.storage.iterators import live, merge_newest
from ringkv.storage.memtable import Memtable
from ringkv.storage.sstable import SSTableReader, SSTableWriter, table_name
from ringkv.storage.wal import CommitLog, Durability, DurableCallback, list_segments, read_segments

log = logging.getLogger("ringkv.storage")
LOG_FACTOR = 4  # a memtable is frozen once this many times `memtable_bytes` went through it


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class EngineOptions:
    durability: Durability = Durability.SYNC
    batch_interval_s: float = 0.002
    memtable_bytes: int = 32 * 1024 * 1024
    max_immutable_memtables: int = 4
    block_bytes: int = 4096
    bloom_bits_per_key: float = 10.0
    block_cache_bytes: int = 64 * 1024 * 1024  # 0: no block cache (every SSTable read is a pread, in a thread)
    tombstone_grace_s: float = 10 * 24 * 3600.0
    compaction: compaction.CompactionPolicy = field(default_factory=compaction.CompactionPolicy)
    background_compaction: bool = True
    on_fsync: Callable[[float], None] | None = None  # observer: seconds one commit-log fsync took
    clock_ms: Callable[[], int] = _wall_clock_ms  # wall clock, used only for tombstone grace


@dataclass
class EngineStats:
    """Counters for metrics. Updated without locks: exact enough for monitoring."""

    puts: int = 0
    deletes: int = 0
    gets: int = 0
    bloom_negatives: int = 0  # the filter ruled a table out
    bloom_positives: int = 0  # the filter said maybe and the table had the key
    bloom_false_positives: int = 0  # the filter said maybe and the table did not have it
    flushes: int = 0
    compactions: int = 0
    compaction_bytes_written: int = 0
    write_stalls: int = 0
    torn_tails_recovered: int = 0


@dataclass(frozen=True)
class _View:
    active: Memtable
    frozen: tuple[Memtable, ...]  # newest first
    tables: tuple[SSTableReader, ...]  # newest first


class Engine:
    """An open LSM store. Thread-safe. Use `Engine.open`."""

    def __init__(self, path: str, options: EngineOptions) -> None:
        self.path = path
        self.options = options
        self.cache = BlockCache(options.block_cache_bytes) if options.block_cache_bytes > 0 else None
        self.stats = EngineStats()
        self._write_lock = threading.Lock()
        self._view_lock = threading.Lock()  # guards replacing `_view` and the file counter
        self._manifest_lock = threading.Lock()  # serialises manifest writes (flush vs compaction)
        self._compaction_lock = threading.Lock()  # one compaction at a time
        self._work = threading.Condition()  # wakes the background thread; signals finished flushes
        self._closed = False
        self._failure: BaseException | None = None
        self._lock_fd = -1
        self._seq = 0
        self._manifest_seq = 0  # last_seq as the manifest records it: never decreases
        self.lost_tables: list[int] = []  # tables the manifest named that were missing at open
        self._next_file = 1
        self._view: _View
        self._wal: CommitLog
        self._thread: threading.Thread | None = None

    # -- opening and recovery --------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str, options: EngineOptions | None = None) -> Engine:
        engine = cls(path, options or EngineOptions())
        try:
            engine._open()
        except BaseException:
            engine._release_lock()
            raise
        return engine

    def _open(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.path, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageError(f"{self.path} is in use by another process") from None
        state = manifest.load(self.path) or manifest.ManifestState()
        found = []
        for t in state.tables:
            try:
                found.append(SSTableReader(os.path.join(self.path, table_name(t)), t, self.cache))
            except FileNotFoundError:  # deleted behind our back: open with what is left, and say so
                log.error("storage: table %s named by the manifest is missing; its data is lost", table_name(t))
                self.lost_tables.append(t)
        tables = tuple(found)
        self._manifest_seq = state.last_seq
        segments = [s for s in list_segments(self.path) if s >= state.log_floor]
        self._collect_garbage(state, segments)
        highest_file = max([state.next_file_id - 1, *state.tables, *segments])
        self._next_file = highest_file + 1
        self._seq = max([state.last_seq, *(t.info.max_seq for t in tables)])

        recovered = read_segments(self.path, segments)
        for report in recovered.torn:
            log.warning("commit log: torn tail recovered: %s", report)
        self.stats.torn_tails_recovered += len(recovered.torn)
        if recovered.entries:
            memtable = Memtable(segment_id=-1)
            for entry in recovered.entries:
                memtable.put(entry)
            self._seq = max(self._seq, memtable.max_seq)
            table = self._write_table(self._allocate_file(), memtable.entries())
            if table is not None:
                tables = (table, *tables)
        segment = self._allocate_file()
        self._store_manifest(tables, log_floor=segment)
        for old in segments:
            os.unlink(os.path.join(self.path, f"wal-{old:010d}.log"))
        self._wal = CommitLog(self.path, segment, self.options.durability, self.options.batch_interval_s,
                              self.options.on_fsync)
        self._view = _View(Memtable(segment), (), tables)
        self._thread = threading.Thread(target=self._background, name="ringkv-storage", daemon=True)
        self._thread.start()

    def _collect_garbage(self, state: manifest.ManifestState, live_segments: list[int]) -> None:
        """Delete files the manifest does not name: half-written or superseded tables, flushed segments."""
        live_tables = {table_name(t) for t in state.tables}
        live_logs = {f"wal-{s:010d}.log" for s in live_segments}
        for name in os.listdir(self.path):
            garbage = (
                name.endswith(".tmp")
                or (name.endswith(".sst") and name not in live_tables)
                or (name.startswith("wal-") and name.endswith(".log") and name not in live_logs)
            )
            if garbage:
                log.info("storage: removing unreferenced file %s", name)
                os.unlink(os.path.join(self.path, name))

    def _allocate_file(self) -> int:
        with self._view_lock:
            n = self._next_file
            self._next_file += 1
            return n

    def _store_manifest(self, tables: tuple[SSTableReader, ...], log_floor: int) -> None:
        state = manifest.ManifestState(
            tables=tuple(t.info.table_id for t in tables),
            next_file_id=self._next_file,
            log_floor=log_floor,
            last_seq=max([self._manifest_seq, *(t.info.max_seq for t in tables)]),
        )
        self._manifest_seq = state.last_seq
        manifest.store(self.path, state)

    def _write_table(self, table_id: int, entries: Iterator[Entry],
                     drop: Callable[[Entry], bool] | None = None) -> SSTableReader | None:
        """Write entries (sorted, unique keys) to a new table; None if nothing was left to write."""
        writer = SSTableWriter(self.path, table_id, self.options.block_bytes, self.options.bloom_bits_per_key,
                               self.cache)
        try:
            for entry in entries:
                if drop is None or not drop(entry):
                    writer.add(entry)
            if writer.entries == 0:
                writer.abort()
                return None
            info = writer.finish()
        except BaseException:
            writer.abort()
            raise
        return SSTableReader(info.path, table_id, self.cache)

    # -- writes ----------------------------------------------------------------------------------------

    def write(self, key: bytes, value: bytes | None) -> int:
        """Apply a put (or, with `value=None`, a delete) and return a commit-log ticket. Does not wait for
        durability: pass the ticket to `wait_durable` or `when_durable`. May block on a write stall."""
        return self.write_entry(key, value)[0]

    def write_entry(self, key: bytes, value: bytes | None) -> tuple[int, int]:
        """Like `write`; returns (ticket, sequence number of the entry written)."""
        with self._write_lock:
            self._check_usable()
            self._seq += 1
            seq = self._seq
            entry = Entry(key, seq, value, self.options.clock_ms())
            ticket = self._wal.append(entry)
            view = self._view
            view.active.put(entry)
            active = view.active
            if active.approximate_bytes >= self.options.memtable_bytes or \
                    active.logged_bytes >= self.options.memtable_bytes * LOG_FACTOR:
                self._freeze_locked()
        if value is None:
            self.stats.deletes += 1
        else:
            self.stats.puts += 1
        return ticket, seq

    def put(self, key: bytes, value: bytes) -> None:
        self.wait_durable(self.write(key, value))

    def delete(self, key: bytes) -> None:
        self.wait_durable(self.write(key, None))

    def wait_durable(self, ticket: int) -> None:
        self._wal.wait_durable(ticket)

    def when_durable(self, ticket: int, callback: DurableCallback) -> None:
        self._wal.when_durable(ticket, callback)

    def is_durable(self, ticket: int) -> bool:
        return self._wal.is_durable(ticket)

    def write_would_stall(self) -> bool:
        """True when the next write may block waiting for flushes (async callers move it to a thread)."""
        view = self._view
        return (len(view.frozen) >= self.options.max_immutable_memtables
                and (view.active.approximate_bytes >= self.options.memtable_bytes * 0.9
                     or view.active.logged_bytes >= self.options.memtable_bytes * LOG_FACTOR * 0.9))

    def _freeze_locked(self) -> None:
        """Freeze the active memtable and rotate the log. Caller holds the write lock."""
        with self._work:
            while len(self._view.frozen) >= self.options.max_immutable_memtables:
                self._check_usable()
                self.stats.write_stalls += 1
                self._work.wait(timeout=1.0)
        segment = self._allocate_file()
        self._wal.rotate(segment)
        with self._view_lock:
            view = self._view
            self._view = _View(Memtable(segment), (view.active, *view.frozen), view.tables)
        with self._work:
            self._work.notify_all()

    def _check_usable(self) -> None:
        if self._closed:
            raise EngineClosedError("the storage engine is closed")
        if self._failure is not None:
            raise StorageError(f"the storage engine failed in the background: {self._failure}")

    # -- reads -----------------------------------------------------------------------------------------

    def get_entry(self, key: bytes, memory_only: bool = False) -> Entry | None:
        """The newest entry (possibly a tombstone) for `key`, or None if the engine never saw it.

        With `memory_only`, only memtables are consulted and None means "not in memory"."""
        view = self._view
        entry = view.active.get(key)
        if entry is not None:
            return entry
        for memtable in view.frozen:
            entry = memtable.get(key)
            if entry is not None:
                return entry
        if memory_only:
            return None
        return self.read_tables(key, self.tables_to_read(key))

    def tables_to_read(self, key: bytes) -> list[SSTableReader]:
        """The SSTables that may hold `key`, newest first, by key range and bloom filter: no I/O, so an event
        loop may call it and skip the disk altogether when the list is empty."""
        stats = self.stats
        candidates = []
        for table in self._view.tables:
            info = table.info
            if info.first_key <= key <= info.last_key:
                if table.bloom.may_contain(key):
                    candidates.append(table)
                else:
                    stats.bloom_negatives += 1
        return candidates

    def read_tables(self, key: bytes, tables: list[SSTableReader]) -> Entry | None:
        """The first entry for `key` among `tables` (from `tables_to_read`): one block read per table tried."""
        stats = self.stats
        for table in tables:
            entry = table.get(key)
            if entry is not None:
                stats.bloom_positives += 1
                return entry
            stats.bloom_false_positives += 1
        return None

    def read_tables_cached(self, key: bytes, tables: list[SSTableReader]) -> tuple[bool, Entry | None]:
        """`(True, read_tables(key, tables))` when every block it needs is in the block cache (no I/O: an event
        loop may call it); `(False, None)` as soon as one is not."""
        stats = self.stats
        misses = 0
        for table in tables:
            resolved, entry = table.get_cached(key)
            if not resolved:
                return False, None  # nothing counted: `read_tables` will count this read
            if entry is not None:
                stats.bloom_positives += 1
                stats.bloom_false_positives += misses
                return True, entry
            misses += 1
        stats.bloom_false_positives += misses
        return True, None

    def get(self, key: bytes) -> bytes | None:
        """The current value of `key`, or None when absent or deleted."""
        if self._closed:
            raise EngineClosedError("the storage engine is closed")
        self.stats.gets += 1
        entry = self.get_entry(key)
        return None if entry is None else entry.value

    def scan(self, start: bytes | None = None, end: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Live (key, value) pairs with start <= key < end, in key order, from a consistent snapshot."""
        return live(self.scan_entries(start, end))

    def scan_entries(self, start: bytes | None = None, end: bytes | None = None) -> Iterator[Entry]:
        """Like `scan` but yields entries, tombstones included (for anti-entropy and streaming)."""
        if self._closed:
            raise EngineClosedError("the storage engine is closed")
        view = self._view
        sources: list[Iterator[Entry]] = [view.active.entries(start, end)]
        sources += [m.entries(start, end) for m in view.frozen]
        for table in view.tables:
            info = table.info
            if (end is not None and info.first_key >= end) or (start is not None and info.last_key < start):
                continue
            sources.append(table.entries(start, end))
        return merge_newest(sources)

    # -- flush and compaction --------------------------------------------------------------------------

    def flush(self) -> None:
        """Freeze the active memtable (if it holds anything) and wait until every memtable is in a table."""
        with self._write_lock:
            self._check_usable()
            if len(self._view.active):
                self._freeze_locked()
        with self._work:
            while self._view.frozen:
                self._check_usable()
                self._work.wait(timeout=1.0)

    def compact(self, full: bool = False) -> bool:
        """Run one compaction now (the policy's pick, or everything with `full`); False if none was due."""
        self._check_usable()
        return self._compact_once(full)

    def _flush_oldest(self) -> bool:
        view = self._view
        if not view.frozen:
            return False
        memtable = view.frozen[-1]
        table = self._write_table(self._allocate_file(), memtable.entries())
        with self._manifest_lock:
            with self._view_lock:
                view = self._view
                frozen = tuple(m for m in view.frozen if m is not memtable)
                tables = view.tables if table is None else (table, *view.tables)
                self._view = replace(view, frozen=frozen, tables=tables)
                self.stats.flushes += 1  # counted as the table appears
                floor = min(m.segment_id for m in (self._view.active, *frozen))
            self._store_manifest(tables, log_floor=floor)
        self._wal.delete_segment(memtable.segment_id)
        with self._work:
            self._work.notify_all()
        return True

    def _compact_once(self, full: bool) -> bool:
        with self._compaction_lock:
            tables = self._view.tables
            stats = [compaction.TableStat(t.info.table_id, t.info.size_bytes, t.info.tombstones) for t in tables]
            task = compaction.full(stats) if full else compaction.pick(stats, self.options.compaction)
            if task is None:
                return False
            run = tables[task.start : task.start + len(task.table_ids)]
            now_ms = self.options.clock_ms()
            grace_ms = int(self.options.tombstone_grace_s * 1000)

            def drop(entry: Entry) -> bool:
                return entry.value is None and compaction.may_drop_tombstone(
                    entry.ts_ms, now_ms, grace_ms, task.includes_oldest)

            merged = self._write_table(self._allocate_file(), merge_newest(t.entries() for t in run), drop)
            with self._manifest_lock:
                with self._view_lock:
                    view = self._view
                    current = list(view.tables)
                    at = current.index(run[0])  # flushes may have prepended tables since we picked
                    assert current[at : at + len(run)] == list(run)
                    current[at : at + len(run)] = [] if merged is None else [merged]
                    self._view = replace(view, tables=tuple(current))
                    floor = min(m.segment_id for m in (view.active, *view.frozen))
                self._store_manifest(self._view.tables, log_floor=floor)
            for table in run:
                os.unlink(table.path)  # open readers keep working; the fd closes when they are dropped
                if self.cache is not None:
                    self.cache.drop_table(table.info.table_id)
            self.stats.compactions += 1
            self.stats.compaction_bytes_written += 0 if merged is None else merged.info.size_bytes
            return True

    def _background(self) -> None:
        while True:
            with self._work:
                while not self._view.frozen and not self._closed and not self._compaction_due():
                    self._work.wait(timeout=1.0)
                if self._closed and not self._view.frozen:
                    return
            try:
                if not self._flush_oldest() and self.options.background_compaction:
                    self._compact_once(full=False)
            except BaseException as e:  # a failed flush or compaction must not vanish with the thread
                log.exception("storage: background work failed")
                self._failure = e
                with self._work:
                    self._work.notify_all()
                return

    def _compaction_due(self) -> bool:
        if not self.options.background_compaction:
            return False
        stats = [compaction.TableStat(t.info.table_id, t.info.size_bytes) for t in self._view.tables]
        return compaction.pick(stats, self.options.compaction) is not None

    # -- introspection and shutdown --------------------------------------------------------------------

    @property
    def memtable_bytes(self) -> int:
        view = self._view
        return view.active.approximate_bytes + sum(m.approximate_bytes for m in view.frozen)

    @property
    def table_count(self) -> int:
        return len(self._view.tables)

    @property
    def table_bytes(self) -> int:
        return sum(t.info.size_bytes for t in self._view.tables)

    @property
    def last_seq(self) -> int:
        return self._seq

    def close(self, flush: bool = True) -> None:
        """Stop background work, optionally flush the memtable, fsync the log and release the directory."""
        if self._closed:
            return
        try:
            if flush and self._failure is None:
                self.flush()
        finally:
            with self._write_lock:
                self._closed = True
            with self._work:
                self._work.notify_all()
            if self._thread is not None:
                self._thread.join()
            self._wal.close()
            self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
