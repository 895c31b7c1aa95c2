"""Hinted handoff: writes held for a replica that was down, delivered when it is back.

Hints live in their own storage engine under `DATA_DIR/hints` (durability `sync`: a hint is fsynced before
it counts as an acknowledgement). Key and value::

    key   := target_node_id (UTF-8)  0x00  sequence:u64 (big-endian; from the wall clock at startup or past the
             highest stored one, whichever is larger, then +1)
    value := msgpack [data_key: bin, record: bin (versions.encode_record), created_ms: int]

so one target's hints are one contiguous, time-ordered key range.

Delivery (`deliver_pending`) sends each hint's record to the target as an ordinary replica merge
(idempotent, order-free), several at a time, and deletes the hint only after the target acknowledged it.
It goes on batch after batch until the target has no hints left, within a byte rate (`RateLimiter`; a
hint's bytes are its data key plus its record, the same measure as `delivered_bytes`). A hint's age does
not matter (up to the tombstone grace, below): hints count toward W, so dropping one whose target is back
would lose an acknowledged write.
Per hint:

- acknowledged: deleted, counted `delivered`.
- `TransportError` (the target is unreachable): delivery stops; the sends in flight finish and the error is
  re-raised. Whatever was not delivered stays for the next pass.
- `RemoteError` "invalid_record" (the target cannot decode the record), or `InvalidRecordError` raised by
  `send` itself: the hint is bad and can never be delivered. It is dropped, counted `corrupt` and
  `dropped`, logged, and delivery goes on.
- any other `RemoteError`: the hint stays, counted `delivery_failures`, and delivery goes on with the next
  ones (it is retried on the next pass). One bad hint never holds up the others.

A stored value that does not decode (garbage, wrong shape) is treated like a bad hint wherever it is met
(`load`, `batch`, delivery, dropping): deleted, counted `corrupt` and `dropped`, logged.

With tombstone collection on (anti-entropy), a hint older than the tombstone grace (`max_age_s`) is dropped
when its turn comes (counted `expired` and `dropped`), never delivered: the tombstone that superseded it
may have been collected on every replica, and delivering it would resurrect the value. Anti-entropy has had
the whole grace period to copy the write from the replicas that hold it. Otherwise the hint window bounds
how long a target may be *down*, not how old a hint may be (as Cassandra's
max_hint_window): while a target has been down longer than the window, `accepts` is False (no new hints)
and `drop_for_downtime` drops all its hints; anti-entropy repairs what they carried. The caller passes how
long gossip has judged the target continuously down. Separately, a store over `max_bytes` refuses new hints.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import msgpack

from ringkv.cluster.ids import NodeId
from ringkv.errors import HintsFullError, InvalidRecordError
from ringkv.net.throttle import RateLimiter
from ringkv.net.transport import RemoteError
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
        """What the hint counts for in the store's size bound (`HintStore.bytes`)."""
        return len(self.hint_key) + len(self.key) + len(self.record) + 16

    @property
    def payload_bytes(self) -> int:
        """What delivering it sends: the data key and the record (for the rate limit and `delivered_bytes`)."""
        return len(self.key) + len(self.record)


class CorruptHint(ValueError):
    """A stored hint that does not decode."""


def _prefix(target: NodeId) -> bytes:
    return target.encode() + b"\x00"


def _end(target: NodeId) -> bytes:
    return target.encode() + b"\x01"


def _decode(hint_key: bytes, value: bytes) -> Hint:
    """Parse one stored hint; raises CorruptHint on anything but the format above."""
    target, sep, seq = hint_key.partition(b"\x00")
    if not sep or not target or len(seq) != _SEQ.size:
        raise CorruptHint(f"malformed hint key {hint_key!r}")
    try:
        target_id = target.decode()
        fields = msgpack.unpackb(value, raw=False)
    except Exception as e:  # msgpack raises several types (ExtraData, FormatError, ValueError, ...)
        raise CorruptHint(f"undecodable hint: {e!r}") from None
    if not isinstance(fields, list) or len(fields) != 3:
        raise CorruptHint(f"hint value is not [key, record, created_ms]: {type(fields).__name__}")
    key, record, created_ms = fields
    if not isinstance(key, bytes) or not isinstance(record, bytes) or type(created_ms) is not int:
        raise CorruptHint("hint value has fields of the wrong types")
    return Hint(hint_key, NodeId(target_id), key, record, created_ms)


class HintStore:
    def __init__(self, engine: AsyncEngine, max_bytes: int, window_s: float,
                 clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
                 max_age_s: float | None = None) -> None:
        self.engine = engine
        self.max_age_s = max_age_s  # hints older than this are dropped at delivery (the tombstone grace)
        self.max_bytes = max_bytes
        self.window_s = window_s  # a target down longer than this gets no hints and loses the ones it had
        self._clock_ms = clock_ms
        self._seq = time.time_ns()
        self.pending: dict[NodeId, int] = {}  # hints per target
        self.bytes = 0
        self.stored = 0
        self.delivered = 0
        self.delivered_bytes = 0  # payload bytes (data key + record) of delivered hints
        self.dropped = 0  # refused (store full), dropped for downtime, or corrupt
        self.corrupt = 0  # undecodable here, or refused by the target as an invalid record
        self.delivery_failures = 0  # sends the target answered with an error other than invalid_record
        self.expired = 0  # older than max_age_s when their turn came (also counted in dropped)

    def expired_hint(self, hint: Hint) -> bool:
        """Whether a hint is older than `max_age_s`: a tombstone that superseded it may have been collected
        everywhere since, and delivering it would bring the deleted value back (see `cluster.aae`)."""
        return self.max_age_s is not None and self._clock_ms() - hint.created_ms > self.max_age_s * 1000

    def accepts(self, down_for_s: float) -> bool:
        """Whether to keep a new hint for a target judged down for `down_for_s`: not past the window."""
        return down_for_s <= self.window_s

    async def load(self) -> None:
        """Count what survived a restart (sizes and targets are kept in memory only); corrupt ones go."""

        def count() -> tuple[dict[NodeId, int], int, list[tuple[bytes, str]]]:
            pending: dict[NodeId, int] = {}
            size = 0
            bad: list[tuple[bytes, str]] = []
            for hint_key, value in self.engine.engine.scan():
                if len(hint_key) >= _SEQ.size:  # never reuse a sequence, whatever the clock did meanwhile
                    self._seq = max(self._seq, _SEQ.unpack(hint_key[-_SEQ.size:])[0])
                try:
                    hint = _decode(hint_key, value)
                except CorruptHint as e:
                    bad.append((hint_key, str(e)))
                    continue
                pending[hint.target] = pending.get(hint.target, 0) + 1
                size += hint.size
            return pending, size, bad

        self.pending, self.bytes, bad = await asyncio.to_thread(count)
        for hint_key, reason in bad:
            await self._drop_corrupt(hint_key, reason)

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
        """Up to `limit` of `target`'s hints, oldest first (fewer if corrupt ones were met and dropped)."""
        hints, _, _ = await self.scan_from(target, None, limit)
        return hints

    async def scan_from(self, target: NodeId, after: bytes | None, limit: int) -> tuple[list[Hint], bytes | None, int]:
        """Up to `limit` stored entries of `target` with hint keys after `after` (None: from the first).

        Returns the hints that decode, the last hint key scanned (None: nothing left after `after`; pass it
        as the next `after`) and how many corrupt entries were dropped on the way."""
        start = _prefix(target) if after is None else after + b"\x00"
        pairs = await self.engine.scan(start, _end(target), limit)
        hints: list[Hint] = []
        corrupt = 0
        for hint_key, value in pairs:
            try:
                hints.append(_decode(hint_key, value))
            except CorruptHint as e:
                # Never counted in pending/bytes: load drops every corrupt entry, store writes none.
                await self._drop_corrupt(hint_key, str(e))
                corrupt += 1
        return hints, (pairs[-1][0] if pairs else None), corrupt

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
            self.delivered_bytes += hint.payload_bytes
        else:
            self.dropped += 1

    async def remove_corrupt(self, hint: Hint, reason: str) -> None:
        """Drop a hint that can never be delivered (counted `corrupt` and `dropped`)."""
        log.warning("dropping corrupt hint %r (key %r) for %s: %s", hint.hint_key, hint.key, hint.target, reason)
        await self.remove(hint, delivered=False)
        self.corrupt += 1

    async def _drop_corrupt(self, hint_key: bytes, reason: str) -> None:
        log.warning("dropping corrupt hint %r: %s", hint_key, reason)
        await self.engine.delete(hint_key)
        self.corrupt += 1
        self.dropped += 1


class _Pass:
    """One `deliver_pending` call: its counts, and the error that stopped it."""

    def __init__(self) -> None:
        self.delivered = 0
        self.failures = 0
        self.last_failure: RemoteError | None = None
        self.stop: Exception | None = None


async def deliver_pending(store: HintStore, target: NodeId, send: Callable[[Hint], Awaitable[None]],
                          limiter: RateLimiter | None = None, batch: int = 128, concurrency: int = 16) -> int:
    """Deliver `target`'s hints until none are left (see the module docstring); returns how many went.

    Up to `concurrency` sends are in flight at once; each hint's payload bytes are taken from `limiter`
    before it is sent. Raises the `TransportError` (or any unexpected error) that stopped delivery, once
    the sends in flight have finished; what was not delivered stays. Hints that fail in this call are not
    retried in it: each batch starts after the last one, so the call ends once the range is exhausted.
    Run one call per target at a time (two could send a hint twice and count its removal twice)."""
    if batch < 1 or concurrency < 1:
        raise ValueError(f"batch ({batch}) and concurrency ({concurrency}) must be >= 1")
    state = _Pass()

    async def one(hint: Hint) -> None:
        if store.expired_hint(hint):
            log.warning("dropping a hint for %s older than the tombstone grace (key %r)", target, hint.key[:80])
            await store.remove(hint, delivered=False)
            store.expired += 1
            return
        if limiter is not None:
            await limiter.acquire(hint.payload_bytes)
            if state.stop is not None:
                return
        try:
            await send(hint)
        except InvalidRecordError as e:  # a `send` that decodes the record here (delivery to this node)
            await store.remove_corrupt(hint, str(e))
            return
        except RemoteError as e:
            if e.code == InvalidRecordError.code:
                await store.remove_corrupt(hint, f"{target} refused it: {e}")
            else:
                store.delivery_failures += 1
                state.failures += 1
                state.last_failure = e
            return
        await store.remove(hint, delivered=True)
        state.delivered += 1

    async def worker(queue: Iterator[Hint]) -> None:
        for hint in queue:  # shared by the workers: each hint is taken by exactly one of them
            if state.stop is not None:
                return
            try:
                await one(hint)
            except Exception as e:  # TransportError: the target is gone; anything else: do not guess on
                if state.stop is None:
                    state.stop = e
                return

    after: bytes | None = None  # every hint up to here was delivered, dropped, or failed in this call
    try:
        while state.stop is None:
            hints, after, _ = await store.scan_from(target, after, batch)
            if after is None:
                break
            queue = iter(hints)
            await asyncio.gather(*(worker(queue) for _ in range(min(concurrency, len(hints)))))
    finally:
        if state.failures:
            log.warning("%d hints for %s failed and stay for the next pass; last error: %s",
                        state.failures, target, state.last_failure)
    if state.stop is not None:
        raise state.stop
    return state.delivered


async def drop_for_downtime(store: HintStore, target: NodeId, down_for_s: float, batch: int = 1024) -> int:
    """Drop all of `target`'s hints if it has been down longer than the hint window, else none: anti-entropy
    repairs what they carried. Returns how many were dropped (each counted `dropped`)."""
    if down_for_s <= store.window_s:
        return 0
    log.info("%s has been down %.0fs, longer than the %.0fs hint window: dropping its hints",
             target, down_for_s, store.window_s)
    dropped = 0
    after: bytes | None = None
    while True:
        hints, after, corrupt = await store.scan_from(target, after, batch)
        if after is None:
            return dropped
        for hint in hints:
            await store.remove(hint, delivered=False)
        dropped += len(hints) + corrupt
