"""Active anti-entropy: replicas compare Merkle trees in the background and merge what differs.

The policy (ranges, schedule, tombstone rule) is `cluster.aae`; the trees are `net.trees`. This module is
the I/O: the exchange loop, the internode handlers, on-demand repair and the tombstone reaper.

Exchange protocol (node A starts it with peer B for one replica range; every call names the range and its
tree shape, `{"lo", "hi", "leaves", "fanout"}`, and B refuses with `aae_unavailable` unless it has a ready
tree of exactly that shape)::

    aae_hashes  {shape, "level": int, "nodes": [int, ...] (<= 4096)}  -> bin: 16 bytes per node hash
    aae_leaves  {shape, "ids": [leaf, ...] (<= 1024), "max_keys": int} -> [[leaf, [[key, digest], ...]], ...]
                (B reads the leaves' keys from storage; it may cover only a prefix of `ids` to stay
                 near max_keys)
    aae_fetch   {"keys": [key, ...] (<= 1024)}                        -> [record (bin) | nil, ...]
    aae_push    {"records": [[key, record], ...] (<= 1024)}           -> int (records merged)
    aae_reap_check {"keys": [[key, digest], ...] (<= 1024)}           -> [bool, ...] (same record, or none)

1. A asks for B's root; equal roots: the range is in sync (verified).
2. A descends level by level, asking only for the children of the nodes that differ, down to the leaves.
3. For the differing leaves, in chunks, A asks B for the leaves' keys and digests and reads its own; the
   keys whose digests differ (or that one side lacks) are repaired: A fetches B's records and merges them
   into its own (`Replica.merge_in`: the DVV merge never loses a version), then pushes the merged record to
   B wherever B's digest differs from it. Both sides end with the merge of both. (Except a tombstone past its
   grace for a replica that lacks the key: not copied, see `cluster.aae`.)
4. An exchange stops after `max_keys` keys repaired (the pair is due again soon) and every byte of records
   moved goes through a rate limiter (`mb_s`). A peer that dies or refuses mid-way fails the exchange; what
   was merged stays merged (every step is an idempotent merge) and the pair is retried later.

Exchanges run only with peers that are up and `normal` (or `leaving`: they still hold their data).

Reaper: every `reap_interval_s`, the node's tombstones past their grace are grouped by range; every other
replica of the range is asked whether it holds the same record (or none); those all confirm are reaped
(`Replica.reap`). A replica that is down or does not answer blocks the reap of its ranges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ringkv.cluster import aae, merkle, versions
from ringkv.cluster.aae import Pair, RangeId, ReplicaRange
from ringkv.cluster.ids import NodeId
from ringkv.cluster.ring import Replication, Ring, token_for
from ringkv.errors import AntiEntropyUnavailableError, RequestError, RingkvError
from ringkv.net.operations import Operation, Operations
from ringkv.net.throttle import RateLimiter
from ringkv.net.transport import RemoteError, TransportError
from ringkv.net.trees import RangeTree, TreeSet
from ringkv.net.wire import is_key
from ringkv.replica import Replica

log = logging.getLogger("ringkv.antientropy")

MAX_NODES = 4096
MAX_LEAVES = 1024
MAX_KEYS = 1024
LEAF_CHUNK = 256
KEY_CHUNK = 256
MAX_PREPARED = 32  # temporary trees peers may hold here at once (a joiner verifies 3 ranges at a time)

Call = Callable[[NodeId, str, dict[str, Any], float], Awaitable[Any]]


@dataclass(frozen=True)
class AaeSettings:
    enabled: bool = True
    interval_s: float = 60.0
    ranges_per_s: float = 4.0
    mb_s: float = 8.0  # records moved by exchanges, per node (0: unlimited)
    max_keys: int = 10_000  # keys repaired per exchange
    tombstone_grace_s: float = 24 * 3600.0
    reap_interval_s: float = 10.0
    total_leaves: int = 65536
    timeout_s: float = 10.0  # one exchange call


@dataclass
class AaeStats:
    exchanges: dict[str, int] = field(default_factory=dict)  # by result
    hashes_compared: int = 0
    leaves_compared: int = 0
    keys_compared: int = 0
    keys_pulled: int = 0  # records merged here from a peer
    keys_pushed: int = 0  # records sent to a peer to merge
    bytes: int = 0
    reap_checks: int = 0
    reaped: int = 0


@dataclass
class ExchangeResult:
    result: str  # in_sync | repaired | failed | unavailable | skipped
    hashes: int = 0
    leaves: int = 0
    keys_compared: int = 0
    pulled: int = 0
    pushed: int = 0
    bytes: int = 0
    more: bool = False
    error: str = ""

    @property
    def keys_repaired(self) -> int:
        return self.pulled + self.pushed


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class AntiEntropy:
    def __init__(self, node_id: NodeId, replica: Replica, trees: TreeSet, call: Call, settings: AaeSettings,
                 eligible: Callable[[NodeId], bool], operations: Operations,
                 clock_ms: Callable[[], int] = _wall_clock_ms) -> None:
        self.node_id = node_id
        self.replica = replica
        self.trees = trees
        self.call = call
        self.settings = settings
        self.eligible = eligible
        self.operations = operations
        self.clock_ms = clock_ms
        self.stats = AaeStats()
        self.ranges: dict[RangeId, ReplicaRange] = {}
        self.schedule = aae.Schedule(settings.interval_s)
        self.verified: dict[Pair, float] = {}  # monotonic time of the last completed exchange of a pair
        self.started_at = time.monotonic()
        self.limiter = RateLimiter(settings.mb_s * 1024 * 1024 if settings.mb_s > 0 else None)
        self._rng = random.Random()
        self._wake = asyncio.Event()
        self._busy: set[Pair] = set()
        self._last_reap = 0.0
        self._prepared: dict[RangeId, None] = {}  # temporary trees held for peers, oldest first

    # -- ring -----------------------------------------------------------------------------------------

    def set_ring(self, ring: Ring, replication: Replication) -> None:
        """The ring changed: track the replica ranges this node now holds (new trees get built)."""
        mine = aae.ranges_of(aae.replica_ranges(ring, replication), self.node_id) if len(ring) else []
        self.ranges = {r.id: r for r in mine}
        self.trees.set_ranges(mine)
        pairs = [(r.id, peer) for r in mine for peer in r.peers(self.node_id)]
        self.schedule.sync(pairs, time.monotonic(), self._rng)
        wanted = set(pairs)
        self.verified = {p: t for p, t in self.verified.items() if p in wanted}
        self._wake.set()

    # -- the background loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Build trees, then exchange whatever is due, forever (cancelled at stop)."""
        pause = 1.0 / self.settings.ranges_per_s if self.settings.ranges_per_s > 0 else 0.0
        while True:
            try:
                await self.trees.build_all()
            except (RingkvError, OSError) as e:
                log.error("building anti-entropy trees failed: %s; retrying", e)
                await asyncio.sleep(5.0)
                continue
            now = time.monotonic()
            if now - self._last_reap >= self.settings.reap_interval_s:
                self._last_reap = now
                try:
                    await self.reap_once()
                except Exception:
                    log.exception("tombstone reaping failed")
            pair = self.schedule.next_due(now, self._eligibility())
            if pair is None:
                await self._sleep_until_due()
                continue
            result = await self.exchange_pair(pair)
            if result.result in ("in_sync", "repaired"):
                self.schedule.done(pair, time.monotonic(), self._rng, more=result.more)
            else:
                self.schedule.failed(pair, time.monotonic(), self._rng)
            if pause:
                await asyncio.sleep(pause * self._rng.uniform(0.8, 1.2))

    def _eligibility(self) -> dict[NodeId, bool]:
        peers = {peer for r in self.ranges.values() for peer in r.peers(self.node_id)}
        return {p: self.eligible(p) for p in peers}

    async def _sleep_until_due(self) -> None:
        self._wake.clear()
        next_at = self.schedule.next_time()
        delay = 1.0 if next_at is None else min(1.0, max(0.05, next_at - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    async def exchange_pair(self, pair: Pair) -> ExchangeResult:
        replica_range = self.ranges.get(pair[0])
        if replica_range is None or pair in self._busy:
            return ExchangeResult("skipped")
        self._busy.add(pair)
        try:
            result = await self.exchange(replica_range, pair[1])
        finally:
            self._busy.discard(pair)
        self.stats.exchanges[result.result] = self.stats.exchanges.get(result.result, 0) + 1
        if result.result in ("in_sync", "repaired") and not result.more:
            self.verified[pair] = time.monotonic()
        if result.keys_repaired:
            log.info("anti-entropy with %s over range %s: %d keys compared, %d pulled, %d pushed, %d bytes",
                     pair[1], replica_range.name, result.keys_compared, result.pulled, result.pushed, result.bytes)
        return result

    # -- one exchange ---------------------------------------------------------------------------------

    async def exchange(self, replica_range: ReplicaRange, peer: NodeId) -> ExchangeResult:
        """Compare one range's tree with `peer`'s and repair the differences (see the module docstring)."""
        target = self.trees.get(replica_range.lo, replica_range.hi)
        if target is None or not target.ready:
            return ExchangeResult("skipped", error="local tree not ready")
        out = ExchangeResult("in_sync")
        try:
            leaves = await self._differing_leaves(target, peer, out)
            if leaves:
                await self._repair_leaves(target, peer, leaves, out)
                out.result = "repaired"
        except RemoteError as e:
            out.result = "unavailable" if e.code == AntiEntropyUnavailableError.code else "failed"
            out.error = f"{e.code}: {e}"
        except (TransportError, RingkvError) as e:
            out.result, out.error = "failed", str(e)
        if out.result in ("failed", "unavailable"):
            log.info("anti-entropy exchange with %s over range %s stopped: %s", peer, replica_range.name,
                     out.error)
        return out

    def _shape_body(self, target: RangeTree) -> dict[str, Any]:
        s = target.shape
        return {"lo": s.lo, "hi": s.hi, "leaves": s.leaves, "fanout": s.fanout}

    async def _differing_leaves(self, target: RangeTree, peer: NodeId, out: ExchangeResult) -> list[int]:
        tree = target.tree
        sizes = target.shape.level_sizes()
        fanout = target.shape.fanout
        top = len(sizes) - 1
        frontier = [0]
        level = top
        while True:
            theirs = await self._hashes(target, peer, level, frontier)
            mine = tree.hashes(level, frontier)
            out.hashes += len(frontier)
            frontier = [i for i, a, b in zip(frontier, mine, theirs, strict=True) if a != b]
            if not frontier or level == 0:
                break
            level -= 1
            frontier = [c for i in frontier for c in range(i * fanout, min((i + 1) * fanout, sizes[level]))]
        self.stats.hashes_compared += out.hashes
        return frontier

    async def _hashes(self, target: RangeTree, peer: NodeId, level: int, nodes: list[int]) -> list[int]:
        out: list[int] = []
        for i in range(0, len(nodes), MAX_NODES):
            chunk = nodes[i:i + MAX_NODES]
            raw = await self.call(peer, "aae_hashes", {**self._shape_body(target), "level": level, "nodes": chunk},
                                  self.settings.timeout_s)
            if not isinstance(raw, bytes) or len(raw) != len(chunk) * merkle.HASH_BYTES:
                got = f"{len(raw)} bytes" if isinstance(raw, bytes) else f"a {type(raw).__name__}"
                raise RequestError("bad_reply", f"{peer} answered aae_hashes with {got}")
            out.extend(int.from_bytes(raw[j:j + merkle.HASH_BYTES], "big")
                       for j in range(0, len(raw), merkle.HASH_BYTES))
        return out

    async def _repair_leaves(self, target: RangeTree, peer: NodeId, leaves: list[int], out: ExchangeResult) -> None:
        budget = self.settings.max_keys
        todo = list(leaves)
        while todo:
            chunk = todo[:LEAF_CHUNK]
            reply = await self.call(peer, "aae_leaves", {**self._shape_body(target), "ids": chunk,
                                                         "max_keys": max(KEY_CHUNK, budget)}, self.settings.timeout_s)
            theirs = _parse_leaves(reply, set(chunk))
            if not theirs:
                raise RequestError("bad_reply", f"{peer} covered none of the leaves asked for")
            covered = sorted(theirs)
            mine, _ = await self.trees.leaf_digests(target, covered, 10**9)
            todo = [leaf for leaf in todo if leaf not in theirs]
            out.leaves += len(covered)
            self.stats.leaves_compared += len(covered)
            differing: list[tuple[bytes, bytes | None, bytes | None]] = []
            for leaf in covered:
                a, b = mine.get(leaf, {}), theirs[leaf]
                out.keys_compared += len(a.keys() | b.keys())
                differing.extend((k, a.get(k), b.get(k)) for k in merkle.differing_keys(a, b))
            self.stats.keys_compared += sum(len(mine.get(leaf, {}).keys() | theirs[leaf].keys()) for leaf in covered)
            for i in range(0, len(differing), KEY_CHUNK):
                await self._repair_keys(peer, differing[i:i + KEY_CHUNK], out)
                if out.keys_repaired >= budget:
                    out.more = True
                    return

    async def _repair_keys(self, peer: NodeId, keys: list[tuple[bytes, bytes | None, bytes | None]],
                           out: ExchangeResult) -> None:
        """Merge `keys` (key, our digest, their digest) both ways."""
        now_ms = self.clock_ms()
        grace = self.settings.tombstone_grace_s
        fetch = [k for k, _, theirs in keys if theirs is not None]
        fetched: dict[bytes, bytes] = {}
        if fetch:
            reply = await self.call(peer, "aae_fetch", {"keys": fetch}, self.settings.timeout_s)
            if not isinstance(reply, list) or len(reply) != len(fetch):
                raise RequestError("bad_reply", f"{peer} answered aae_fetch with the wrong number of records")
            for key, raw in zip(fetch, reply, strict=True):
                if isinstance(raw, bytes):
                    fetched[key] = raw
            moved = sum(len(r) for r in fetched.values())
            await self.limiter.acquire(moved)
            out.bytes += moved
            self.stats.bytes += moved

        async def settle(key: bytes, mine: bytes | None) -> list[bytes] | None:
            """Merge the peer's record of `key` here; the record to push back, if the peer lacks any of it."""
            raw = fetched.get(key)
            if raw is not None:
                incoming = versions.decode_record(raw)
                if mine is None and aae.past_grace(versions.deleted_at(incoming), now_ms, grace):
                    return None  # a tombstone on its way out: not copied to a replica that lacks the key
                before = await self.replica.read(key)
                record = await self.replica.merge_in(key, incoming)
                if record != before:
                    out.pulled += 1
                    self.stats.keys_pulled += 1
            else:
                record = await self.replica.read(key)
                if not record.versions:
                    return None  # gone on both sides meanwhile
            encoded = versions.encode_record(record)
            if raw is not None and merkle.record_digest(encoded) == merkle.record_digest(raw):
                return None  # the peer already holds exactly this
            if raw is None and not aae.should_copy(aae.past_grace(versions.deleted_at(record), now_ms, grace),
                                                   theirs_present=False):
                return None
            return [key, encoded]

        # All at once: each merge waits for its own durability, and one group commit serves them all.
        settled = await asyncio.gather(*(settle(key, mine) for key, mine, _ in keys))
        push = [item for item in settled if item is not None]
        if push:
            moved = sum(len(r) for _, r in push)
            await self.limiter.acquire(moved)
            await self.call(peer, "aae_push", {"records": push}, self.settings.timeout_s)
            out.pushed += len(push)
            out.bytes += moved
            self.stats.keys_pushed += len(push)
            self.stats.bytes += moved

    # -- internode handlers (the peer side) -----------------------------------------------------------

    def _tree(self, body: Any) -> RangeTree:
        if not isinstance(body, dict):
            raise RequestError("bad_request", "an anti-entropy call takes a map")
        try:
            shape = merkle.Shape(int(body["lo"]), int(body["hi"]), int(body["leaves"]), int(body["fanout"]))
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise RequestError("bad_request", f"malformed tree shape: {e}") from None
        target = self.trees.get(shape.lo, shape.hi)
        if target is None or target.shape != shape or not target.ready:
            raise AntiEntropyUnavailableError(
                f"{self.node_id} has no ready tree for range {shape.lo}:{shape.hi} with {shape.leaves} leaves")
        return target

    async def handle_hashes(self, body: Any, peer: str) -> Any:
        target = self._tree(body)
        level = body.get("level")
        nodes = _int_list(body.get("nodes"), MAX_NODES, "nodes")
        sizes = target.shape.level_sizes()
        if type(level) is not int or not 0 <= level < len(sizes) or any(not 0 <= n < sizes[level] for n in nodes):
            raise RequestError("bad_request", "level or node index out of range")
        return b"".join(h.to_bytes(merkle.HASH_BYTES, "big") for h in target.tree.hashes(level, nodes))

    async def handle_leaves(self, body: Any, peer: str) -> Any:
        target = self._tree(body)
        ids = sorted(set(_int_list(body.get("ids"), MAX_LEAVES, "ids")))
        max_keys = body.get("max_keys")
        if any(not 0 <= i < target.shape.leaves for i in ids) or type(max_keys) is not int or max_keys < 1:
            raise RequestError("bad_request", "leaf index out of range or bad max_keys")
        digests, covered = await self.trees.leaf_digests(target, ids, min(max_keys, 100_000))
        return [[leaf, [[k, d] for k, d in digests[leaf].items()]] for leaf in covered]

    async def handle_fetch(self, body: Any, peer: str) -> Any:
        keys = _bytes_list(body.get("keys") if isinstance(body, dict) else None, MAX_KEYS, "keys")
        records = await asyncio.gather(*(self.replica.read(key) for key in keys))
        return [versions.encode_record(r) if r.versions else None for r in records]

    async def handle_push(self, body: Any, peer: str) -> Any:
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list) or len(records) > MAX_KEYS:
            raise RequestError("bad_request", f"records must be a list of at most {MAX_KEYS}")
        parsed = []
        for item in records:
            if not (isinstance(item, list) and len(item) == 2 and is_key(item[0]) and isinstance(item[1], bytes)):
                raise RequestError("bad_request", "each record must be [key, record]")
            parsed.append((item[0], versions.decode_record(item[1])))  # InvalidRecordError: refused whole
        await asyncio.gather(*(self.replica.merge_in(key, record) for key, record in parsed))  # one group commit
        return len(parsed)

    async def handle_reap_check(self, body: Any, peer: str) -> Any:
        items = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(items, list) or len(items) > MAX_KEYS:
            raise RequestError("bad_request", f"keys must be a list of at most {MAX_KEYS}")
        out = []
        for item in items:
            if not (isinstance(item, list) and len(item) == 2 and is_key(item[0]) and isinstance(item[1], bytes)):
                raise RequestError("bad_request", "each entry must be [key, digest]")
            record = await self.replica.read(item[0])
            out.append(not record.versions or merkle.record_digest(versions.encode_record(record)) == item[1])
        return out

    async def handle_prepare(self, body: Any, peer: str) -> Any:
        """Build (or reuse) a tree of exactly the given range, to verify a streamed range against it. At most
        `MAX_PREPARED` are held for peers: past that the oldest is dropped (a peer that died before its
        `aae_release`, or one asking for range after range, must not grow this node's memory without bound;
        an exchange still using a dropped tree is answered `aae_unavailable`, and its verification retried)."""
        lo, hi = _bounds(body)
        self._prepared.pop((lo, hi), None)
        self._prepared[(lo, hi)] = None
        while len(self._prepared) > MAX_PREPARED:
            oldest = next(iter(self._prepared))
            del self._prepared[oldest]
            self.trees.release(*oldest)
            log.info("dropped the temporary tree of range %s:%s: %d are held for peers", *oldest, MAX_PREPARED)
        target = await self.trees.prepare(lo, hi)
        return {"leaves": target.shape.leaves, "fanout": target.shape.fanout, "keys": target.tree.count}

    async def handle_release(self, body: Any, peer: str) -> Any:
        lo, hi = _bounds(body)
        self._prepared.pop((lo, hi), None)
        self.trees.release(lo, hi)
        return True

    # -- verification of a streamed range ------------------------------------------------------------

    async def verify_range(self, lo: int, hi: int, peer: NodeId, attempts: int = 5) -> ExchangeResult:
        """Compare (lo, hi] here with `peer` through temporary trees on both sides and merge what differs,
        until an exchange finds the two in sync or repairs every difference it found (writes in flight may
        keep a few keys apart for a moment). Raises if the peer cannot take part."""
        await self.call(peer, "aae_prepare", {"lo": lo, "hi": hi}, self.settings.timeout_s * 6)
        await self.trees.prepare(lo, hi)
        total = ExchangeResult("in_sync")
        try:
            for _ in range(attempts):
                result = await self.exchange(ReplicaRange(lo, hi, tuple(sorted((self.node_id, peer)))), peer)
                if result.result in ("failed", "unavailable", "skipped"):
                    raise RingkvError(f"verifying range {lo}:{hi} with {peer} failed: {result.error}")
                for name in ("hashes", "leaves", "keys_compared", "pulled", "pushed", "bytes"):
                    setattr(total, name, getattr(total, name) + getattr(result, name))
                if result.result == "in_sync" or not result.more:
                    total.result = result.result if total.keys_repaired == 0 else "repaired"
                    return total
            total.result, total.more = "repaired", True
            return total
        finally:
            self.trees.release(lo, hi)
            try:
                await self.call(peer, "aae_release", {"lo": lo, "hi": hi}, self.settings.timeout_s)
            except (TransportError, RemoteError) as e:
                log.info("could not release the temporary tree on %s: %s", peer, e)

    # -- tombstones -----------------------------------------------------------------------------------

    async def reap_once(self) -> int:
        """Reap the tombstones past their grace that every replica confirms (see the module docstring)."""
        now_ms = self.clock_ms()
        grace = self.settings.tombstone_grace_s
        groups: dict[RangeId, list[bytes]] = {}
        for key, deleted_at_ms in list(self.trees.tombstones.items()):
            if not aae.past_grace(deleted_at_ms, now_ms, grace):
                continue
            target = self.trees.tree_for(token_for(key))
            if target is not None:
                groups.setdefault(target.range.id, []).append(key)
        reaped = 0
        for range_id, keys in groups.items():
            replica_range = self.ranges.get(range_id)
            if replica_range is None:
                continue
            peers = replica_range.peers(self.node_id)
            if not all(self.eligible(p) for p in peers):
                continue  # a replica we cannot ask blocks the reap
            for i in range(0, len(keys), MAX_KEYS):
                reaped += await self._reap_chunk(replica_range, keys[i:i + MAX_KEYS])
        return reaped

    async def _reap_chunk(self, replica_range: ReplicaRange, keys: list[bytes]) -> int:
        digests: dict[bytes, bytes] = {}
        now_ms = self.clock_ms()
        for key in keys:
            record = await self.replica.read(key)
            deleted_at_ms = versions.deleted_at(record)
            if deleted_at_ms is None:
                self.trees.tombstones.pop(key, None)  # rewritten (or gone) since: not a tombstone any more
                continue
            if not aae.past_grace(deleted_at_ms, now_ms, self.settings.tombstone_grace_s):
                self.trees.tombstones[key] = deleted_at_ms  # deleted again since the registry noted it
                continue
            digests[key] = merkle.record_digest(versions.encode_record(record))
        if not digests:
            return 0
        ask = [[k, d] for k, d in digests.items()]
        answers: dict[NodeId, list[bool]] = {}
        for peer in replica_range.peers(self.node_id):
            self.stats.reap_checks += 1
            try:
                reply = await self.call(peer, "aae_reap_check", {"keys": ask}, self.settings.timeout_s)
            except (TransportError, RemoteError, RingkvError) as e:
                log.info("reap check with %s failed: %s", peer, e)
                return 0
            if not isinstance(reply, list) or len(reply) != len(ask):
                return 0
            answers[peer] = [x is True for x in reply]
        reaped = 0
        for i, (key, digest) in enumerate(ask):
            confirmed = aae.all_confirm(replica_range.replicas, self.node_id, {p: a[i] for p, a in answers.items()})
            if confirmed and await self.replica.reap(key, digest):
                reaped += 1
                self.stats.reaped += 1
        if reaped:
            log.info("reaped %d tombstones of range %s", reaped, replica_range.name)
        return reaped

    # -- on-demand repair -----------------------------------------------------------------------------

    def start_repair(self, range_ids: Iterable[RangeId] | None = None) -> Operation:
        """Exchange every range this node holds (or the given ones) with every other replica, now."""
        wanted = None if range_ids is None else set(range_ids)
        targets = [r for rid, r in sorted(self.ranges.items()) if wanted is None or rid in wanted]
        if wanted is not None and len(targets) != len(wanted):
            unknown = sorted(wanted - set(self.ranges))
            raise RequestError("unknown_range", f"this node does not replicate range(s) "
                                                f"{', '.join(f'{lo}:{hi}' for lo, hi in unknown)}")

        async def run(op: Operation) -> None:
            op.progress.update(ranges_total=len(targets), ranges_done=0, exchanges=0, exchanges_failed=0,
                               peers_skipped=0, keys_compared=0, keys_repaired=0, bytes=0)
            for replica_range in targets:
                target = self.trees.get(replica_range.lo, replica_range.hi)
                while target is not None and not target.ready:  # being built: wait for it
                    await asyncio.sleep(0.2)
                    target = self.trees.get(replica_range.lo, replica_range.hi)
                for peer in replica_range.peers(self.node_id):
                    if not self.eligible(peer):
                        op.add(peers_skipped=1)
                        continue
                    while True:
                        result = await self.exchange_pair((replica_range.id, peer))
                        op.add(exchanges=1, keys_compared=result.keys_compared, keys_repaired=result.keys_repaired,
                               bytes=result.bytes)
                        if result.result == "skipped" and target is not None and (replica_range.id, peer) in self._busy:
                            await asyncio.sleep(0.2)  # the background loop is on this pair: wait, then redo
                            continue
                        if result.result not in ("in_sync", "repaired"):
                            op.add(exchanges_failed=1)
                        if not result.more:
                            break
                op.add(ranges_done=1)
            if op.progress["exchanges_failed"] or op.progress["peers_skipped"]:
                raise RingkvError(f"{op.progress['exchanges_failed']} exchanges failed and "
                                  f"{op.progress['peers_skipped']} peers were down or not normal")

        params: dict[str, Any] = {"ranges": "all" if wanted is None else [f"{lo}:{hi}" for lo, hi in sorted(wanted)]}
        return self.operations.start("repair", params, run)

    # -- status ---------------------------------------------------------------------------------------

    def range_verified_at(self, range_id: RangeId) -> float | None:
        """When the range was last compared with every other replica (the oldest of its pairs), or None."""
        replica_range = self.ranges[range_id]
        times = [self.verified.get((range_id, p)) for p in replica_range.peers(self.node_id)]
        if any(t is None for t in times):
            return None
        return min((t for t in times if t is not None), default=time.monotonic())

    def oldest_unverified_s(self) -> float:
        """Seconds since the least recently verified range was verified (since start if it never was)."""
        now = time.monotonic()
        ages = [now - (self.range_verified_at(rid) or self.started_at) for rid in self.ranges]
        return max(ages, default=0.0)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        ranges = []
        for rid, replica_range in sorted(self.ranges.items()):
            target = self.trees.get(*rid)
            verified = self.range_verified_at(rid)
            ranges.append({
                "range": replica_range.name, "replicas": list(replica_range.replicas),
                "tree": "ready" if target is not None and target.ready else "building",
                "keys": target.tree.count if target is not None else 0,
                "leaves": target.shape.leaves if target is not None else 0,
                "verified_s_ago": None if verified is None else round(now - verified, 3),
                "peers": {p: (None if (rid, p) not in self.verified else round(now - self.verified[(rid, p)], 3))
                          for p in replica_range.peers(self.node_id)},
            })
        s = self.stats
        return {"enabled": self.settings.enabled, "ranges": ranges, "tombstones": len(self.trees.tombstones),
                "tree_builds": self.trees.builds, "tree_build_seconds": round(self.trees.build_seconds_total, 3),
                "tree_heals": self.trees.heals, "exchanges": dict(s.exchanges),
                "hashes_compared": s.hashes_compared, "leaves_compared": s.leaves_compared,
                "keys_compared": s.keys_compared,
                "keys_pulled": s.keys_pulled, "keys_pushed": s.keys_pushed, "bytes": s.bytes,
                "reaped": s.reaped, "floor": self.replica.floor,
                "oldest_unverified_s": round(self.oldest_unverified_s(), 3)}


def _bounds(body: Any) -> tuple[int, int]:
    lo = body.get("lo") if isinstance(body, dict) else None
    hi = body.get("hi") if isinstance(body, dict) else None
    if type(lo) is not int or type(hi) is not int or not (-(2**63) <= lo < 2**63 and -(2**63) <= hi < 2**63):
        raise RequestError("bad_request", "lo and hi must be signed 64-bit tokens")
    return lo, hi


def _int_list(value: Any, limit: int, name: str) -> list[int]:
    if not isinstance(value, list) or len(value) > limit or any(type(v) is not int for v in value):
        raise RequestError("bad_request", f"{name} must be a list of at most {limit} integers")
    return value


def _bytes_list(value: Any, limit: int, name: str) -> list[bytes]:
    if not isinstance(value, list) or len(value) > limit or any(not is_key(v) for v in value):
        raise RequestError("bad_request", f"{name} must be a list of at most {limit} keys")
    return value


def _parse_leaves(reply: Any, asked: set[int]) -> dict[int, dict[bytes, bytes]]:
    if not isinstance(reply, list):
        raise RequestError("bad_reply", "aae_leaves answered with a non-list")
    out: dict[int, dict[bytes, bytes]] = {}
    for item in reply:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int and item[0] in asked
                and isinstance(item[1], list)):
            raise RequestError("bad_reply", "malformed aae_leaves entry")
        leaf: dict[bytes, bytes] = {}
        for pair in item[1]:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], bytes)
                    and isinstance(pair[1], bytes)):
                raise RequestError("bad_reply", "malformed aae_leaves key")
            leaf[pair[0]] = pair[1]
        out[item[0]] = leaf
    return out
