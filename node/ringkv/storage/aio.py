"""An asyncio shell over the engine: nothing here blocks the event loop for long.

- Writes append to the commit log and memtable on the loop thread (microseconds, memory only) and then
  await the group-commit fsync without holding the loop; a write that would stall on flushes moves to a
  thread instead.
- Point reads answered from the memtables or the block cache, or ruled out for every SSTable by key range
  and bloom filter, stay on the loop (a thread hop costs a read ~100 µs of CPU in GIL hand-offs, five times
  the read itself); reads that must read an SSTable block from the file, scans,
  flushes, compactions, open and close run in a thread.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Awaitable, Callable

from ringkv.errors import StorageError
from ringkv.storage.engine import Engine, EngineOptions
from ringkv.storage.entry import Entry


class AsyncEngine:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Writes waiting for durability, in the order they were made; one commit-log callback at a time
        # covers the newest of them (durability is a prefix of the log), so an fsync that makes a hundred
        # writes durable costs the log thread one callback and the loop one wake-up, not a hundred of each.
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._watching = 0  # the ticket the outstanding commit-log callback waits for (0: none)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._settle_lock = threading.Lock()
        self._wakeup_pending = False
        self._log_error: BaseException | None = None
        self.unreported = 0  # writes running in a thread: possibly visible, `on_visible` not yet called
        self.unreported_started = 0

    @classmethod
    async def open(cls, path: str, options: EngineOptions | None = None) -> AsyncEngine:
        return cls(await asyncio.to_thread(Engine.open, path, options))

    def _durable(self, ticket: int) -> Awaitable[None]:
        loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append((ticket, future))
        if not self._watching:
            self._watch(ticket)
        return future

    def _watch(self, ticket: int) -> None:
        self._watching = ticket
        self.engine.when_durable(ticket, self._from_log_thread)

    def _from_log_thread(self, error: BaseException | None) -> None:
        # On the commit-log thread (or right here, when the ticket was durable already): wake the loop once.
        with self._settle_lock:
            if error is not None:
                self._log_error = error
            if self._wakeup_pending:
                return
            self._wakeup_pending = True
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._settle_all)

    def _settle_all(self) -> None:
        with self._settle_lock:
            self._wakeup_pending = False
            error = self._log_error
        self._watching = 0
        waiting, is_durable = self._waiting, self.engine.is_durable
        while waiting and (error is not None or is_durable(waiting[0][0])):
            _, future = waiting.popleft()
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(StorageError(f"commit log write failed: {error}"))
        if waiting:  # made after the fsync that woke us: watch the newest
            self._watch(max(ticket for ticket, _ in waiting))

    async def write(self, key: bytes, value: bytes | None,
                    on_visible: Callable[[int], None] | None = None) -> int:
        """Put (or delete with `value=None`) and return once durable per the engine's durability mode; returns
        the entry's sequence number. `on_visible(seq)` is called on the event loop as soon as the write is
        visible to readers (before it is durable), with no await in between when the write did not stall."""
        if self.engine.write_would_stall():
            # Visible in the thread, reported back here later: readers that must not see a write before it is
            # reported (anti-entropy's leaf heals) check `unreported`.
            self.unreported += 1
            self.unreported_started += 1
            try:
                ticket, seq = await asyncio.to_thread(self.engine.write_entry, key, value)
                if on_visible is not None:
                    on_visible(seq)
            finally:
                self.unreported -= 1
        else:
            ticket, seq = self.engine.write_entry(key, value)
            if on_visible is not None:
                on_visible(seq)
        if not self.engine.is_durable(ticket):  # durability off: it is already
            await self._durable(ticket)
        return seq

    def write_nowait(self, key: bytes, value: bytes | None,
                     on_visible: Callable[[int], None] | None = None) -> tuple[int, asyncio.Future[None] | None]:
        """`write` without a coroutine, for callers that must not be cancelled while a write is in flight:
        applies the write now (visible at once, `on_visible(seq)` called before returning) and returns its
        sequence number and a future done once it is durable (None: durable already). Only when
        `write_would_stall()` is false; otherwise use `write`."""
        ticket, seq = self.engine.write_entry(key, value)
        if on_visible is not None:
            on_visible(seq)
        if self.engine.is_durable(ticket):
            return seq, None
        future = self._durable(ticket)
        assert isinstance(future, asyncio.Future)
        return seq, future

    async def put(self, key: bytes, value: bytes) -> int:
        return await self.write(key, value)

    async def delete(self, key: bytes) -> int:
        return await self.write(key, None)

    async def get_entry(self, key: bytes) -> Entry | None:
        entry = self.engine.get_entry(key, memory_only=True)
        if entry is not None:
            return entry
        tables = self.engine.tables_to_read(key)  # key ranges + bloom filters, on the loop
        if not tables:
            return None  # no table can hold it (a new key: the common write case)
        resolved, entry = self.engine.read_tables_cached(key, tables)  # the block cache, on the loop
        if resolved:
            return entry
        return await asyncio.to_thread(self.engine.read_tables, key, tables)

    async def get(self, key: bytes) -> bytes | None:
        self.engine.stats.gets += 1
        entry = await self.get_entry(key)
        return None if entry is None else entry.value

    async def scan(self, start: bytes | None = None, end: bytes | None = None,
                   limit: int | None = None) -> list[tuple[bytes, bytes]]:
        """Up to `limit` live pairs in [start, end), read in a thread."""

        def run() -> list[tuple[bytes, bytes]]:
            out: list[tuple[bytes, bytes]] = []
            for pair in self.engine.scan(start, end):
                if limit is not None and len(out) >= limit:
                    break
                out.append(pair)
            return out

        return await asyncio.to_thread(run)

    async def scan_entries(self, start: bytes | None = None, end: bytes | None = None,
                           limit: int | None = None) -> list[Entry]:
        """Up to `limit` entries in [start, end), tombstones included (with their sequence numbers), in a
        thread."""

        def run() -> list[Entry]:
            out: list[Entry] = []
            for entry in self.engine.scan_entries(start, end):
                if limit is not None and len(out) >= limit:
                    break
                out.append(entry)
            return out

        return await asyncio.to_thread(run)

    @property
    def last_seq(self) -> int:
        return self.engine.last_seq

    async def flush(self) -> None:
        await asyncio.to_thread(self.engine.flush)

    async def compact(self, full: bool = False) -> bool:
        return await asyncio.to_thread(self.engine.compact, full)

    async def close(self, flush: bool = True) -> None:
        await asyncio.to_thread(self.engine.close, flush)
