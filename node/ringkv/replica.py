"""A node's versioned records on top of its storage engine.

Keys are UTF-8 strings; each engine value is a `versions.Record` (siblings + causal context) in the record
encoding of `ringkv.cluster.versions`. Records are stored in token order, so that the records of a token range
are one contiguous engine range (anti-entropy and streaming scan ranges, not the whole store)::

    engine key := token:u64 (big-endian; the key's ring token + 2**63)  key (UTF-8)
    b"layout"  := b"2"   (a 6-byte key no record key can equal: those are at least 9 bytes)
    b"floor"   := decimal ASCII integer: the reap floor (see `reap`; absent = 0)

A data directory written before the token layout (no `layout` key, records under their bare keys) is
rewritten on open (`open_layout`), once. Writes coordinated here are read-modify-write cycles on the local
record, serialised per key by an asyncio lock so two concurrent writes never derive from the same state
(which would reuse a dot). Merging records that arrive from elsewhere (replication, repair, hints) goes
through the same lock and `versions.merge`.

Rules this module keeps, so that a dot is never issued twice (see `docs/consistency.md`):

- **Nothing is observed before it is durable.** The engine makes a write visible before its fsync; a write
  holds its key's lock until the fsync (even when its caller is cancelled), and `read` waits for a held lock,
  so no read (and so no read repair on another node) can see a version this node could still lose in a
  crash. A failed fsync of a new version renews the actor; if even that fails, the replica takes no more
  writes.
- **A context may not claim more of this node than it issued.** A client context naming this node's actor
  at a counter beyond what the local record has seen is refused (`InvalidContextError`): it is forged, and
  accepting it would exhaust or skip the counter; nor may it claim any actor far (2**32) beyond the record.
- **A reaped record's counters survive it.** Collecting a deleted record (`reap`, driven by anti-entropy
  once every replica holds the same tombstone) first raises a node-wide *floor* to this actor's counter in
  it, durably; every dot issued afterwards, for any key, is above the floor, so none is ever reissued.
- **A corrupt record is quarantined, not fatal.** Its bytes are kept aside (`DATA_DIR/quarantine/`, counted,
  logged), the key reads as empty locally (the other replicas and read repair supply the data), and the
  node renews its actor (a new incarnation) before its next write, because the lost record was the only
  proof of the counters this node had issued for that key.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import msgpack

from ringkv.cluster import ids, versions
from ringkv.cluster.ids import NodeId
from ringkv.cluster.merkle import record_digest
from ringkv.cluster.ring import token_for
from ringkv.cluster.versions import Record, VersionVector, deleted_at
from ringkv.errors import CorruptionError, InvalidContextError, InvalidRecordError, StorageError
from ringkv.storage.aio import AsyncEngine
from ringkv.storage.fsutil import write_atomically

log = logging.getLogger("ringkv.replica")

QUARANTINE_DIR = "quarantine"
LAYOUT_KEY, LAYOUT = b"layout", b"2"
FLOOR_KEY = b"floor"
_TOKEN = struct.Struct(">Q")
_OFFSET = 2**63


def storage_key(key: bytes) -> bytes:
    """Where `key`'s record lives in the engine: behind its token, so records sort in ring order."""
    return _TOKEN.pack(token_for(key) + _OFFSET) + key


def _bound(token: int) -> bytes:
    return _TOKEN.pack(token + _OFFSET)


def token_segments(lo: int, hi: int) -> list[tuple[bytes, bytes | None]]:
    """The engine key ranges [start, end) holding the records whose token is in (lo, hi] (wrapping past the
    top of the ring; lo == hi is the whole ring)."""
    top = 2**63 - 1

    def seg(a: int, b: int) -> tuple[bytes, bytes | None]:  # tokens a..b inclusive
        return _bound(a), None if b == top else _bound(b + 1)

    if lo < hi:
        return [seg(lo + 1, hi)]
    upper = [] if lo == top else [seg(lo + 1, top)]
    return [*upper, seg(-(2**63), hi)]
# A client context may be ahead of this replica's record (it read newer replicas), but never by this much: a
# counter that far ahead is forged, and accepting it could exhaust that actor's counter for the key.
MAX_CONTEXT_LEAD = 2**32


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Change(NamedTuple):
    """One change of a local record, as the engine made it visible: the encoded record before and after
    (None: absent), the engine sequence number of the write, and, when the new record holds only tombstones,
    when it was deleted."""

    key: bytes
    old: bytes | None
    new: bytes | None
    seq: int
    deleted_at_ms: int | None = None


class KeyLocks:
    """One mutex per key in use, without an `asyncio.Lock` per key: a key held is an entry holding the futures
    of those waiting for it (in arrival order); a free key has no entry. Release hands the key straight to the
    first waiter still waiting, so it cannot be overtaken."""

    def __init__(self) -> None:
        self._waiters: dict[bytes, collections.deque[asyncio.Future[None]]] = {}

    def hold(self, key: bytes) -> _Held:
        """`async with locks.hold(key):` holds `key` for the block."""
        return _Held(self, key)

    async def acquire(self, key: bytes) -> None:
        waiters = self._waiters.get(key)
        if waiters is None:
            self._waiters[key] = collections.deque()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(key)  # handed the key as we were cancelled: pass it on
            else:
                waiters.remove(future)
            raise

    def release(self, key: bytes) -> None:
        waiters = self._waiters[key]
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)  # the key is theirs now
                return
        del self._waiters[key]

    def busy(self, key: bytes) -> bool:
        """Whether someone holds or waits for `key`."""
        return key in self._waiters

    def __len__(self) -> int:
        return len(self._waiters)


class _Held:
    __slots__ = ("_key", "_locks")

    def __init__(self, locks: KeyLocks, key: bytes) -> None:
        self._locks, self._key = locks, key

    async def __aenter__(self) -> None:
        await self._locks.acquire(self._key)

    async def __aexit__(self, *exc: object) -> None:
        self._locks.release(self._key)


class Quarantine:
    """Corrupt records kept aside for inspection: one file per record under `directory`::

        file := msgpack map {"key": bin, "raw": bin, "reason": str, "at_ms": int}

    named `<at_ms>-<crc32 of key, hex>.bin`, written atomically and fsynced.
    """

    def __init__(self, directory: str | None) -> None:
        self.directory = directory
        self.count = 0

    async def keep(self, key: bytes, raw: bytes, reason: str) -> None:
        self.count += 1
        log.error("quarantined the corrupt record of key %r (%d bytes): %s", key[:80], len(raw), reason)
        if self.directory is None:
            return
        at_ms = _wall_clock_ms()
        path = os.path.join(self.directory, f"{at_ms}-{zlib.crc32(key):08x}.bin")
        doc = msgpack.packb({"key": key, "raw": raw, "reason": reason, "at_ms": at_ms}, use_bin_type=True)

        def save() -> None:
            os.makedirs(self.directory or ".", exist_ok=True)
            write_atomically(path, doc)

        try:
            await asyncio.to_thread(save)
        except OSError as e:  # keeping a copy is best effort; the node goes on
            log.error("could not keep the quarantined record in %s: %s", path, e)


class _CorruptRecord(CorruptionError):
    def __init__(self, path: str, key: bytes, raw: bytes, reason: str) -> None:
        super().__init__(path, f"record of key {key!r}: {reason}")
        self.raw = raw
        self.reason = reason


async def _new_random_actor(actor: NodeId) -> NodeId:
    return ids.actor(ids.node_of(actor), os.urandom(4).hex())


class Replica:
    """The local records of one node. `actor` names the dots this node issues; `renew_actor` persists and
    returns a new one (a new incarnation) and is called when a corrupt record destroyed the proof of counters
    already issued."""

    def __init__(self, engine: AsyncEngine, actor: NodeId,
                 clock_ms: Callable[[], int] = _wall_clock_ms,
                 renew_actor: Callable[[NodeId], Awaitable[NodeId]] = _new_random_actor,
                 quarantine: Quarantine | None = None) -> None:
        self.engine = engine
        self.actor = actor
        self._clock_ms = clock_ms
        self._renew_actor = renew_actor
        self.quarantine = quarantine or Quarantine(None)
        self._locks = KeyLocks()
        self._renewing = asyncio.Lock()
        self._fenced = False
        # Called with a `Change` for every change of a local record, as the engine makes it visible (anti-
        # entropy keeps its Merkle trees current with it). Must not block or raise.
        self.observers: list[Callable[[Change], None]] = []
        self.floor = 0  # every dot this actor issues from now on is above it (see `reap`)
        self.reaped = 0

    def _changed(self, change: Change) -> None:
        for observer in self.observers:
            try:
                observer(change)
            except Exception:  # an observer's bug must not fail the write
                log.exception("record observer failed for key %r", change.key[:80])

    async def _engine_write(self, key: bytes, encoded: bytes | None, old: bytes | None,
                            deleted_at_ms: int | None = None) -> int:
        """Write one record (None: remove it) to the engine, telling the observers the moment it is visible."""
        if not self.observers:
            return await self.engine.write(storage_key(key), encoded)
        return await self.engine.write(storage_key(key), encoded,
                                       lambda seq: self._changed(Change(key, old, encoded, seq, deleted_at_ms)))

    def _engine_write_nowait(self, key: bytes, encoded: bytes | None, old: bytes | None,
                             deleted_at_ms: int | None = None) -> asyncio.Future[None] | None:
        """`_engine_write` without a coroutine (`AsyncEngine.write_nowait`): the durability future, or None."""
        on_visible = None if not self.observers else \
            (lambda seq: self._changed(Change(key, old, encoded, seq, deleted_at_ms)))
        return self.engine.write_nowait(storage_key(key), encoded, on_visible)[1]

    @property
    def node_id(self) -> NodeId:
        return ids.node_of(self.actor)

    async def read(self, key: bytes) -> Record:
        """The local record for `key` (empty if never written); only durable state is ever returned."""
        if not self._locks.busy(key):
            # No write of this key is in flight: what the engine holds is durable. (Its memtable lookup runs
            # before the first await, so no write can slip in between the check and the read.)
            try:
                return await self._decoded(key)
            except CorruptionError:
                pass  # quarantined below, under the lock
        async with self._locks.hold(key):
            return (await self._current(key))[0]

    async def _decoded(self, key: bytes) -> Record:
        return (await self._decoded_raw(key))[0]

    async def _decoded_raw(self, key: bytes) -> tuple[Record, bytes | None]:
        raw = await self.engine.get(storage_key(key))
        if raw is None:
            return versions.empty_record(), None
        try:
            return versions.decode_record(raw), raw
        except InvalidRecordError as e:
            raise _CorruptRecord(self.engine.engine.path, key, raw, str(e)) from None

    async def _current(self, key: bytes) -> tuple[Record, bytes | None]:
        """The local record and its stored bytes, with the key's lock held: a corrupt one is quarantined and
        reads as empty."""
        try:
            return await self._decoded_raw(key)
        except _CorruptRecord as corrupt:
            await self.quarantine.keep(key, corrupt.raw, corrupt.reason)
            await self._renew()
            await self._engine_write(key, None, corrupt.raw)
            return versions.empty_record(), None

    async def _renew(self) -> None:
        async with self._renewing:
            old = self.actor
            try:
                self.actor = await self._renew_actor(old)
            except BaseException:
                self._fenced = True  # no proof of a fresh actor: issue no more dots at all
                log.critical("could not renew the dot actor %s; this node refuses writes from now on", old)
                raise
            log.warning("dot actor renewed: %s -> %s", old, self.actor)

    async def _store(self, key: bytes, record: Record, own: bool, previous: bytes | None) -> None:
        """Put `record` and wait for it to be durable, holding the caller's key lock throughout, even if the
        caller is cancelled (a dropped connection cancels its handlers): releasing the lock before the fsync
        would let a lock-free read see a version that is not durable. A failed put of our own new version
        (`own`) renews the actor: the version may be visible in memory without being durable."""
        encoded = versions.encode_record(record)
        if not self.engine.engine.write_would_stall():  # the usual case: no task, the write applied right here
            try:
                durable = self._engine_write_nowait(key, encoded, previous, deleted_at(record))
            except StorageError:
                if own:
                    await self._renew()
                raise
            if durable is None:
                return
            try:
                await asyncio.shield(durable)
            except asyncio.CancelledError:
                await asyncio.wait([durable])
                if durable.exception() is not None and own:
                    await self._renew()
                raise
            except StorageError:
                if own:
                    await self._renew()
                raise
            return

        async def put() -> None:
            try:
                await self._engine_write(key, encoded, previous, deleted_at(record))
            except StorageError:
                if own:
                    await self._renew()
                raise

        task = asyncio.ensure_future(put())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait([task])
            raise

    def _check_context(self, current: Record, context: VersionVector) -> None:
        actor = self.actor
        issued = max(current.context.get(actor), self.floor)  # a reaped record's counters are below the floor
        if context.get(actor) > issued:
            raise InvalidContextError(
                f"context claims version {context.get(actor)} of {actor}, which issued only "
                f"{current.context.get(actor)} for this key")
        for node, counter in context.counters:
            if counter - current.context.get(node) > MAX_CONTEXT_LEAD:
                raise InvalidContextError(f"context claims version {counter} of {node}, far beyond any seen")

    async def write(self, key: bytes, value: bytes | None, context: VersionVector | None) -> Record:
        """Coordinate a put (or a delete with `value=None`) on the local record; durable on return.

        Raises `InvalidContextError` when `context` claims a version of this node's actor that this node
        never issued for the key, or of any actor far beyond what the record has seen (a forged context that
        would exhaust a counter)."""
        if self._fenced:
            raise StorageError("this node could not renew its dot actor after a storage failure; it takes no "
                               "writes until restarted")
        async with self._locks.hold(key):
            current, raw = await self._current(key)
            if context is not None:
                self._check_context(current, context)
            updated = versions.update(current, context, self.actor, value, self._clock_ms(), self.floor)
            await self._store(key, updated, own=True, previous=raw)
            return updated

    async def merge_in(self, key: bytes, incoming: Record) -> Record:
        """Merge a record from another replica into the local one; durable on return. Returns the result."""
        async with self._locks.hold(key):
            current, raw = await self._current(key)
            merged = versions.merge(current, incoming)
            if merged != current:
                await self._store(key, merged, own=False, previous=raw)
            return merged

    async def reap(self, key: bytes, digest: bytes) -> bool:
        """Collect a deleted record: remove it if it still holds only tombstones and its digest is still
        `digest` (what every replica was found to hold). First the floor is raised to this actor's counter in
        the record, durably, so that no dot it issued for the key is ever issued again (the record was the
        only place that counter lived). Returns whether it was removed."""
        async with self._locks.hold(key):
            raw = await self.engine.get(storage_key(key))
            if raw is None or record_digest(raw) != digest:
                return False
            record = versions.decode_record(raw)
            if deleted_at(record) is None:
                return False
            counter = record.context.get(self.actor)
            if counter > self.floor:
                await self.engine.put(FLOOR_KEY, b"%d" % counter)  # in the commit log before the removal
                self.floor = counter
            await self._engine_write(key, None, raw)
            self.reaped += 1
            return True

    async def drop(self, key: bytes) -> bool:
        """Remove a record this node no longer replicates (cleanup after a topology change), raising the floor
        past this actor's counter in it first, as `reap` does. Returns whether there was one."""
        async with self._locks.hold(key):
            raw = await self.engine.get(storage_key(key))
            if raw is None:
                return False
            try:
                counter = versions.decode_record(raw).context.get(self.actor)
            except InvalidRecordError:
                counter = 0  # a corrupt record's counters are unknown: renew the actor instead
                await self._renew()
            if counter > self.floor:
                await self.engine.put(FLOOR_KEY, b"%d" % counter)
                self.floor = counter
            await self._engine_write(key, None, raw)
            return True

    # -- layout and token-range scans -----------------------------------------------------------------

    async def open_layout(self) -> int:
        """Make sure the engine holds records in the token layout; rewrite an older directory (returns how
        many records were moved); load the reap floor. Run before serving."""
        moved = await self._migrate()
        floor = await self.engine.get(FLOOR_KEY)  # after the migration: an old layout may hold a key "floor"
        self.floor = int(floor) if floor is not None else 0
        return moved

    async def _migrate(self) -> int:
        if await self.engine.get(LAYOUT_KEY) == LAYOUT:
            return 0
        moved = 0
        after: bytes | None = None
        while True:  # over the whole store in batches; rewritten keys land elsewhere and are recognised
            batch = await self.engine.scan(None if after is None else after + b"\x00", None, 1024)
            if not batch:
                break
            after = batch[-1][0]
            for old_key, value in batch:
                if old_key == LAYOUT_KEY or (len(old_key) > _TOKEN.size
                                             and old_key[:_TOKEN.size] == storage_key(old_key[_TOKEN.size:])[:8]):
                    continue  # already in the token layout
                await self.engine.put(storage_key(old_key), value)
                await self.engine.delete(old_key)
                moved += 1
        await self.engine.put(LAYOUT_KEY, LAYOUT)
        if moved:
            log.warning("rewrote %d records into the token-ordered layout", moved)
        return moved

    async def scan_range(self, lo: int, hi: int, cursor: bytes | None = None,
                         limit: int = 512) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        """Up to `limit` (key, encoded record) pairs whose token is in (lo, hi], in ring order from lo,
        resuming from `cursor` (None: from the start); returns them and the cursor of the next batch (None
        when the range is done). Each batch reads one consistent snapshot of the engine, in a thread; its cost
        is proportional to the batch, not the store. The cursor is opaque: segment index:u8, last engine key."""
        entries, cursor = await self.scan_range_entries(lo, hi, cursor, limit)
        return [(key, value) for key, value, _ in entries if value is not None], cursor

    async def scan_range_entries(self, lo: int, hi: int, cursor: bytes | None = None, limit: int = 512,
                                 ) -> tuple[list[tuple[bytes, bytes | None, int]], bytes | None]:
        """Like `scan_range`, but records removed from the engine (reaped or quarantined) are included with
        value None, and each comes with the engine sequence number of its last write (anti-entropy's tree
        builds reconcile the scan with writes made during it by these numbers)."""
        segments = token_segments(lo, hi)
        first, after = (0, None) if cursor is None else (cursor[0], cursor[1:])
        out: list[tuple[bytes, bytes | None, int]] = []
        for index in range(first, len(segments)):
            start, end = segments[index]
            if after is not None and index == first:
                start = max(start, after + b"\x00")
            want = limit - len(out)
            entries = await self.engine.scan_entries(start, end, want)
            out.extend((e.key[_TOKEN.size:], e.value, e.seq) for e in entries if len(e.key) > _TOKEN.size)
            if len(entries) == want:  # the segment may hold more: resume right after the last one
                return out, bytes([index]) + entries[-1].key
        return out, None
