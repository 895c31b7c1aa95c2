"""Streaming token ranges between nodes, throttled, with progress, verified with Merkle trees afterwards.

A node that gains a range (a join, or a decommission's successor) pulls it from a node that holds it:

    stream_range {"lo", "hi", "cursor": bin | nil, "limit": int (<= 1024)}
        -> {"records": [[key, record], ...], "cursor": bin | nil}      (nil: the range is done)

The source reads one batch of its token-ordered storage (`Replica.scan_range`, a consistent snapshot per
batch, cost proportional to the batch) per call; the receiver merges every record of a batch into its own
storage at once (`Replica.merge_in`: the DVV merge, so a record that also arrived by a write meanwhile loses
nothing; one group commit makes the batch durable), counts it and takes the batch's bytes from a token bucket
(`stream_mb_s`); the next batch is already on its way meanwhile (one ahead). A join streams a few ranges at
once, from different sources where it can (`net/join.py`). Progress per range: keys, bytes, done.

Writes go on during the stream (the coordinator sends them to the gaining node as a pending replica too), and
a batch is a snapshot only of itself, so a streamed range is then **verified**: both sides build a
temporary Merkle tree of exactly that range (`aae_prepare`), and one anti-entropy exchange compares them and
merges whatever differs both ways (`net/antientropy.py`). The range counts as verified once an exchange
completes with nothing left over; the trees are dropped (`aae_release`).

A source that dies mid-stream fails the range; the caller retries it from another source, resuming nothing:
re-streaming is idempotent (merges), so a retry simply starts over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ringkv.cluster import versions
from ringkv.cluster.ids import NodeId
from ringkv.errors import RequestError
from ringkv.net.throttle import RateLimiter
from ringkv.replica import Replica

log = logging.getLogger("ringkv.streaming")

MAX_BATCH = 1024
BATCH = 512

Call = Callable[[NodeId, str, dict[str, Any], float], Awaitable[Any]]


@dataclass
class RangeProgress:
    lo: int
    hi: int
    source: NodeId
    state: str = "pending"  # pending | streaming | verifying | done | failed
    keys: int = 0
    bytes: int = 0
    verify_repaired: int = 0
    error: str = ""
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def to_json(self) -> dict[str, Any]:
        end = self.finished if self.finished is not None else time.monotonic()
        return {"range": f"{self.lo}:{self.hi}", "source": self.source, "state": self.state, "keys": self.keys,
                "bytes": self.bytes, "verify_repaired": self.verify_repaired, "error": self.error,
                "elapsed_s": round(end - self.started, 3)}


@dataclass
class StreamStats:
    ranges_streamed: int = 0
    ranges_failed: int = 0
    keys_received: int = 0
    bytes_received: int = 0
    keys_sent: int = 0
    bytes_sent: int = 0


class Streamer:
    def __init__(self, replica: Replica, call: Call, limiter: RateLimiter, timeout_s: float = 10.0) -> None:
        self.replica = replica
        self.call = call
        self.limiter = limiter
        self.timeout_s = timeout_s
        self.stats = StreamStats()
        self.active: dict[str, RangeProgress] = {}

    async def receive(self, progress: RangeProgress) -> None:
        """Pull every record of `progress`'s range from its source and merge it here (raises on failure). The
        next batch is asked for before this one is merged, so the source's scan and the transfer overlap the
        local merge (one batch ahead at most; the rate limit is paid per batch as before)."""
        progress.state = "streaming"
        self.active[f"{progress.lo}:{progress.hi}"] = progress

        def fetch(cursor: bytes | None) -> asyncio.Future[Any]:
            return asyncio.ensure_future(self.call(
                progress.source, "stream_range",
                {"lo": progress.lo, "hi": progress.hi, "cursor": cursor, "limit": BATCH}, self.timeout_s))

        ahead = fetch(None)
        try:
            while True:
                records, size, cursor = _parse_batch(await ahead)
                if cursor is not None:
                    ahead = fetch(cursor)
                await asyncio.gather(*(self.replica.merge_in(key, record) for key, record in records))
                progress.keys += len(records)
                progress.bytes += size
                self.stats.keys_received += len(records)
                self.stats.bytes_received += size
                await self.limiter.acquire(size)  # the pace of the stream
                if cursor is None:
                    return
        finally:
            if not ahead.done():
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)

    async def handle_stream_range(self, body: Any, peer: str) -> Any:
        if not isinstance(body, dict):
            raise RequestError("bad_request", "stream_range takes a map")
        lo, hi, cursor, limit = body.get("lo"), body.get("hi"), body.get("cursor"), body.get("limit")
        if (type(lo) is not int or type(hi) is not int or not -(2**63) <= lo < 2**63 or not -(2**63) <= hi < 2**63
                or (cursor is not None and not (isinstance(cursor, bytes) and len(cursor) >= 1))
                or type(limit) is not int or not 1 <= limit <= MAX_BATCH):
            raise RequestError("bad_request", "stream_range needs lo, hi (tokens), cursor (bin or nil), limit")
        pairs, next_cursor = await self.replica.scan_range(lo, hi, cursor, limit)
        self.stats.keys_sent += len(pairs)
        self.stats.bytes_sent += sum(len(k) + len(v) for k, v in pairs)
        return {"records": [[k, v] for k, v in pairs], "cursor": next_cursor}


def _parse_batch(reply: Any) -> tuple[list[tuple[bytes, versions.Record]], int, bytes | None]:
    """The batch's records (decoded: an invalid one fails the batch), its size in bytes, and the cursor."""
    if not isinstance(reply, dict) or not isinstance(reply.get("records"), list):
        raise RequestError("bad_reply", "stream_range answered with something else than a batch")
    cursor = reply.get("cursor")
    if cursor is not None and not isinstance(cursor, bytes):
        raise RequestError("bad_reply", "stream_range answered with a bad cursor")
    out = []
    size = 0
    for item in reply["records"]:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], bytes) and item[0]
                and isinstance(item[1], bytes)):
            raise RequestError("bad_reply", "stream_range answered with a malformed record")
        out.append((item[0], versions.decode_record(item[1])))
        size += len(item[0]) + len(item[1])
    return out, size, cursor
