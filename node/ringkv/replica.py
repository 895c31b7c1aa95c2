"""A node's versioned records on top of its storage engine.

Keys are UTF-8 strings; each engine value is a `versions.Record` (siblings + causal context) in the record
encoding of `ringkv.cluster.versions`. Writes coordinated here are read-modify-write cycles on the local
record, serialised per key by an asyncio lock so two concurrent writes never derive from the same state
(which would reuse a dot). Merging records that arrive from elsewhere (replication, repair, hints) goes
through the same lock and `versions.merge`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from ringkv.cluster import versions
from ringkv.cluster.ids import NodeId
from ringkv.cluster.versions import Record, VersionVector
from ringkv.errors import CorruptionError, InvalidRecordError
from ringkv.storage.aio import AsyncEngine


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class KeyLocks:
    """One asyncio lock per key in use; entries disappear when nobody holds or waits for them."""

    def __init__(self) -> None:
        self._locks: dict[bytes, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: bytes) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class Replica:
    def __init__(self, engine: AsyncEngine, node_id: NodeId,
                 clock_ms: Callable[[], int] = _wall_clock_ms) -> None:
        self.engine = engine
        self.node_id = node_id
        self._clock_ms = clock_ms
        self._locks = KeyLocks()

    async def read(self, key: bytes) -> Record:
        """The local record for `key` (empty if never written)."""
        raw = await self.engine.get(key)
        if raw is None:
            return versions.empty_record()
        try:
            return versions.decode_record(raw)
        except InvalidRecordError as e:
            raise CorruptionError(self.engine.engine.path, f"record of key {key!r}: {e}") from None

    async def write(self, key: bytes, value: bytes | None, context: VersionVector | None) -> Record:
        """Coordinate a put (or a delete with `value=None`) on the local record; durable on return."""
        async with self._locks.hold(key):
            current = await self.read(key)
            updated = versions.update(current, context, self.node_id, value, self._clock_ms())
            await self.engine.put(key, versions.encode_record(updated))
            return updated

    async def merge_in(self, key: bytes, incoming: Record) -> Record:
        """Merge a record from another replica into the local one; durable on return. Returns the result."""
        async with self._locks.hold(key):
            current = await self.read(key)
            merged = versions.merge(current, incoming)
            if merged != current:
                await self.engine.put(key, versions.encode_record(merged))
            return merged
