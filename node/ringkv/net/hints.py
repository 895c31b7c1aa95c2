"""Hinted handoff: writes held for a replica that was down, delivered when it is back.

Hints live in their own storage engine under `DATA_DIR/hints` (durability `sync`: a hint is fsynced before
it counts as an acknowledgement). Key and value::

    key   := target_node_id (UTF-8)  0x00  sequence:u64 (big-endian; from the wall clock at startup, then +1)
    value := msgpack [data_key: bin, record: bin (versions.encode_record), created_ms: int]

so one target's hints are one contiguous, time-ordered key range. Delivery sends each hint's record to the
target as an ordinary replica merge (idempotent, order-free) and deletes the hint only after the target
acknowledged it. Bounded: hints older than the hint window are dropped (anti-entropy repairs what they
carried) and a store over `max_bytes` refuses new hints.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgpack

from ringkv.cluster.ids import NodeId
from ringkv.errors import HintsFullError
from ringkv.storage.aio import AsyncEngine

log = logging.getLogger("ringkv.hints")
_SEQ = struct.Struct(">Q")


@dataclass(frozen=True)
class Hint:
    hint_key: bytes
    target: NodeId
    key: bytes
    record: bytes
    created_ms: int

    @property
    def size(self) -> int:
        return len(self.hint_key) + len(self.key) + len(self.record) + 16


def _prefix(target: NodeId) -> bytes:
    return target.encode() + b"\x00"


def _decode(hint_key: bytes, value: bytes) -> Hint:
    target, _, _ = hint_key.partition(b"\x00")
    key, record, created_ms = msgpack.unpackb(value, raw=False)
    return Hint(hint_key, NodeId(target.decode()), bytes(key), bytes(record), int(created_ms))


class HintStore:
    def __init__(self, engine: AsyncEngine, max_bytes: int, window_s: float,
                 clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        self.engine = engine
        self.max_bytes = max_bytes
        self.window_ms = int(window_s * 1000)
        self._clock_ms = clock_ms
        self._seq = time.time_ns()
        self.pending: dict[NodeId, int] = {}  # hints per target
        self.bytes = 0
        self.stored = 0
        self.delivered = 0
        self.dropped = 0

    async def load(self) -> None:
        """Count what survived a restart (sizes and targets are kept in memory only)."""

        def count() -> tuple[dict[NodeId, int], int]:
            pending: dict[NodeId, int] = {}
            size = 0
            for hint_key, value in self.engine.engine.scan():
                hint = _decode(hint_key, value)
                pending[hint.target] = pending.get(hint.target, 0) + 1
                size += hint.size
            return pending, size

        self.pending, self.bytes = await asyncio.to_thread(count)

    async def store(self, target: NodeId, key: bytes, record: bytes) -> None:
        """Durably keep `record` for `target`. Raises HintsFullError over the size bound."""
        self._seq += 1
        hint = Hint(_prefix(target) + _SEQ.pack(self._seq), target, key, record, self._clock_ms())
        if self.bytes + hint.size > self.max_bytes:
            self.dropped += 1
            raise HintsFullError(f"hint store is full ({self.bytes} bytes); hint for {target} not stored")
        await self.engine.put(hint.hint_key, msgpack.packb([key, record, hint.created_ms], use_bin_type=True))
        self.pending[target] = self.pending.get(target, 0) + 1
        self.bytes += hint.size
        self.stored += 1

    async def batch(self, target: NodeId, limit: int = 128) -> list[Hint]:
        prefix = _prefix(target)
        end = prefix[:-1] + b"\x01"
        pairs = await self.engine.scan(prefix, end, limit)
        return [_decode(k, v) for k, v in pairs]

    async def remove(self, hint: Hint, delivered: bool) -> None:
        await self.engine.delete(hint.hint_key)
        left = self.pending.get(hint.target, 0) - 1
        if left > 0:
            self.pending[hint.target] = left
        else:
            self.pending.pop(hint.target, None)
        self.bytes = max(0, self.bytes - hint.size)
        if delivered:
            self.delivered += 1
        else:
            self.dropped += 1

    def expired(self, hint: Hint) -> bool:
        return self._clock_ms() - hint.created_ms > self.window_ms


async def deliver_pending(store: HintStore, target: NodeId,
                          send: Callable[[Hint], Awaitable[None]], batch: int = 128) -> int:
    """Deliver one batch of `target`'s hints in order; stop at the first failure. Returns how many went.

    Expired hints are dropped (counted) rather than delivered: past the window, anti-entropy repairs."""
    sent = 0
    for hint in await store.batch(target, batch):
        if store.expired(hint):
            log.info("dropping hint for %s older than the hint window", target)
            await store.remove(hint, delivered=False)
            continue
        await send(hint)
        await store.remove(hint, delivered=True)
        sent += 1
    return sent


async def drop_expired(store: HintStore, target: NodeId, batch: int = 128) -> int:
    """Drop (and count) `target`'s hints older than the hint window, so hints for a node that stays down do
    not fill the store. They are in time order: stops at the first one still in the window."""
    dropped = 0
    for hint in await store.batch(target, batch):
        if not store.expired(hint):
            break
        await store.remove(hint, delivered=False)
        dropped += 1
    return dropped
