"""The commit log: append-only segments, group commit, three durability modes, recovery.

Layout: one directory of segment files `wal-NNNNNNNNNN.log`. A segment starts with the 8-byte header
`RKVWAL` + format version (u16, currently 1) and then holds records framed by `ringkv.storage.record`.
Exactly one segment is open for appends; the engine rotates to a new segment whenever it freezes its
memtable, so each segment holds the writes of exactly one memtable and is deleted once that memtable is
safely in an SSTable listed by the manifest.

Durability modes:

- `sync`  (default): a write returns only after an fsync covering it. Group commit: one background thread
  writes and fsyncs everything appended since its last fsync, so concurrent writers share one fsync.
- `batch`: the thread fsyncs at most every `batch_interval_s`; writers still wait for the fsync that
  covers them (more writers per fsync, higher latency).
- `off`: writes are buffered and handed to the OS in 64 KiB chunks, never fsynced. For tests and benchmarks:
  a crash may lose recent writes.

Recovery (`read_segments`): segments are read in order; the last segment's torn tail (see `record`) is cut
off, truncated on disk and reported. A torn record in any earlier segment cannot come from a crash (a segment
is fsynced before rotation), so it raises `CorruptionError` naming the file rather than drop data silently.
A failed write or fsync poisons the log: every waiter and every later append gets a `StorageError`.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ringkv.errors import CorruptionError, StorageError
from ringkv.storage import record
from ringkv.storage.entry import Entry
from ringkv.storage.fsutil import fsync_dir

SEGMENT_MAGIC = b"RKVWAL" + (1).to_bytes(2, "little")
_SEGMENT_RE = re.compile(r"^wal-(\d{10})\.log$")
_OFF_MODE_CHUNK = 64 * 1024


class Durability(enum.StrEnum):
    SYNC = "sync"
    BATCH = "batch"
    OFF = "off"


def segment_name(segment_id: int) -> str:
    return f"wal-{segment_id:010d}.log"


def list_segments(directory: str) -> list[int]:
    ids = []
    for name in os.listdir(directory):
        m = _SEGMENT_RE.match(name)
        if m:
            ids.append(int(m.group(1)))
    return sorted(ids)


@dataclass
class Recovered:
    """What replaying the commit log found."""

    entries: list[Entry] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)  # human-readable reports of cut-off tails


def read_segments(directory: str, segment_ids: list[int]) -> Recovered:
    """Replay the given segments in order, cutting off (and truncating) a torn tail of the last one."""
    out = Recovered(segments=list(segment_ids))
    for i, seg in enumerate(segment_ids):
        path = os.path.join(directory, segment_name(seg))
        with open(path, "rb") as f:
            data = f.read()
        last = i == len(segment_ids) - 1
        if len(data) < len(SEGMENT_MAGIC):
            if data and not last:
                raise CorruptionError(path, "segment header is incomplete")
            if data:
                out.torn.append(f"{path}: incomplete segment header ({len(data)} bytes) cut off")
                _truncate(path, 0)
            continue
        if data[: len(SEGMENT_MAGIC)] != SEGMENT_MAGIC:
            raise CorruptionError(path, "bad commit-log segment header")
        decoded = record.decode_all(memoryview(data)[len(SEGMENT_MAGIC) :])
        out.entries.extend(decoded.entries)
        if decoded.torn is not None:
            if not last:
                raise CorruptionError(path, f"{decoded.torn} in a sealed segment")
            good = len(SEGMENT_MAGIC) + decoded.good_bytes
            out.torn.append(f"{path}: {decoded.torn}; {len(data) - good} bytes cut off")
            _truncate(path, good)
    return out


def _truncate(path: str, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


DurableCallback = Callable[[BaseException | None], None]


class CommitLog:
    """The open commit log. Thread-safe; `append` is cheap (memory only), durability is waited for apart."""

    def __init__(
        self,
        directory: str,
        segment_id: int,
        durability: Durability,
        batch_interval_s: float = 0.002,
        on_fsync: Callable[[float], None] | None = None,
    ) -> None:
        self._dir = directory
        self._durability = durability
        self._batch_interval_s = batch_interval_s
        self._on_fsync = on_fsync
        self._cond = threading.Condition(threading.Lock())
        self._io_lock = threading.Lock()  # serialises file writes, fsyncs and rotation
        self._buf = bytearray()
        self._appended = 0  # tickets handed out
        self._durable = 0  # highest ticket known durable
        self._callbacks: list[tuple[int, DurableCallback]] = []
        self._error: BaseException | None = None
        self._closing = False
        self.segment_id = segment_id
        self._fd = self._create_segment(segment_id)
        self._thread: threading.Thread | None = None
        if durability is not Durability.OFF:
            self._thread = threading.Thread(target=self._sync_loop, name="ringkv-wal-sync", daemon=True)
            self._thread.start()

    # -- writers ---------------------------------------------------------------------------------------

    def append(self, entry: Entry) -> int:
        """Buffer one record; returns a ticket to wait on. Cheap: no syscall in sync/batch mode."""
        data = record.encode(entry)
        with self._cond:
            if self._error is not None:
                raise StorageError(f"commit log is failed: {self._error}")
            if self._closing:
                raise StorageError("commit log is closed")
            was_empty = not self._buf
            self._buf += data
            self._appended += 1
            ticket = self._appended
            if self._durability is Durability.OFF:
                if len(self._buf) >= _OFF_MODE_CHUNK:
                    self._write_buffer_locked()
                self._durable = ticket
            elif was_empty:  # the sync thread waits only for an empty buffer to fill: wake it once, not per write
                self._cond.notify_all()
            return ticket

    def wait_durable(self, ticket: int) -> None:
        """Block until the record with `ticket` is durable (per the mode)."""
        with self._cond:
            while self._durable < ticket and self._error is None:
                self._cond.wait()
            if self._durable < ticket:
                raise StorageError(f"commit log write failed: {self._error}")

    def is_durable(self, ticket: int) -> bool:
        """Whether `ticket` is durable already (a monotonic read: no lock needed)."""
        return self._durable >= ticket

    def when_durable(self, ticket: int, callback: DurableCallback) -> None:
        """Call `callback(None)` once `ticket` is durable, or `callback(error)` if it never will be.

        The callback runs on the commit-log thread (or right away): it must be quick and thread-safe."""
        with self._cond:
            if self._durable >= ticket:
                err = None
            elif self._error is not None:
                err = self._error
            else:
                self._callbacks.append((ticket, callback))
                return
        callback(err)

    # -- segment management (called by the engine under its write lock) --------------------------------

    def rotate(self, new_segment_id: int) -> int:
        """Seal the current segment (write + fsync what is pending) and continue in a new one.

        Returns the sealed segment's id."""
        with self._io_lock:
            self._drain_and_sync(force_fsync=True)
            os.close(self._fd)
            old = self.segment_id
            self._fd = self._create_segment(new_segment_id)
            self.segment_id = new_segment_id
            return old

    def delete_segment(self, segment_id: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self._dir, segment_name(segment_id)))

    def close(self) -> None:
        """Write and fsync everything pending, stop the thread, close the file."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._io_lock:
            if self._fd >= 0:
                try:
                    self._drain_and_sync(force_fsync=True)
                finally:
                    os.close(self._fd)
                    self._fd = -1

    # -- internals ------------------------------------------------------------------------------------

    def _create_segment(self, segment_id: int) -> int:
        path = os.path.join(self._dir, segment_name(segment_id))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if os.fstat(fd).st_size == 0:
            os.write(fd, SEGMENT_MAGIC)
            os.fsync(fd)
        fsync_dir(self._dir)
        return fd

    def _write_buffer_locked(self) -> None:
        """Off mode: hand the buffer to the OS (caller holds `_cond`)."""
        data, self._buf = self._buf, bytearray()
        _write_all(self._fd, data)

    def _drain_and_sync(self, force_fsync: bool) -> None:
        """Write what is buffered and fsync it; mark those tickets durable. Caller holds `_io_lock`."""
        with self._cond:
            data, self._buf = self._buf, bytearray()
            upto = self._appended
        err: BaseException | None = None
        try:
            if data:
                _write_all(self._fd, data)
            if (data or force_fsync) and (self._durability is not Durability.OFF or force_fsync):
                started = time.perf_counter()
                os.fdatasync(self._fd)
                if self._on_fsync is not None:
                    self._on_fsync(time.perf_counter() - started)
        except OSError as e:
            err = e
        with self._cond:
            if err is not None:
                self._error = err
                ready, self._callbacks = self._callbacks, []
            else:
                self._durable = max(self._durable, upto)
                ready = [cb for cb in self._callbacks if cb[0] <= upto]
                if ready:
                    self._callbacks = [cb for cb in self._callbacks if cb[0] > upto]
            self._cond.notify_all()
        for _, cb in ready:
            cb(err)

    def _sync_loop(self) -> None:
        last_sync = 0.0
        while True:
            with self._cond:
                while not self._buf and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return  # close() drains the rest
            if self._durability is Durability.BATCH:
                # At most one fsync per interval, measured start to start: a slow fsync eats into the pause.
                pause = last_sync + self._batch_interval_s - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            last_sync = time.monotonic()
            with self._io_lock:
                if self._fd >= 0:
                    self._drain_and_sync(force_fsync=False)
            if self._error is not None:
                return


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
