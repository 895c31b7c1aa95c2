"""The Merkle trees of the replica ranges this node holds, kept current with every local change.

Each replica range (`cluster.aae`) has one `merkle.MerkleTree` of shape `ReplicaRange.shape()`. The replica
reports every change of a local record the moment the engine makes it visible (`replica.Change`, with the
write's engine sequence number); the tree of the range holding the key's token XORs the old entry out and
the new one in — O(depth) per write, no rebuild.

Building a tree from a scan while writes go on
----------------------------------------------
A tree is built from `Replica.scan_range_entries` in batches (each read in a thread), while changes keep
arriving. The build takes `s0`, the engine's last sequence number, before its first batch. A change is
applied to a tree being built only when the scan cannot have seen it:

- its sequence number is at most `s0`: it was visible before the scan started, so the scan sees it (or a
  later state): skip;
- its key lies beyond what the scan has read so far: the scan will read it (or a later state): skip;
- its key has been scanned: apply it unless the scan (or a change already applied) reflected a state at
  least as new, which `applied` (key -> sequence number, kept only for keys written during the build) says.

Changes arriving while a batch is being read are held back and settled when the batch returns, against
what it read. After the build, `applied` is kept a little longer (`LATE_S`) for changes of writes that
stalled in a thread. The result equals a tree built from a quiet store (`tests/unit/net/test_trees.py`
checks this under concurrent writes).

Leaves are also rebuilt on their own when an exchange scans them and finds the tree disagreeing with the
scan while no change touched the tree during the scan (`heal_leaf`): a tree that went wrong for any reason
heals as it is used.

Tombstones: the keys whose local record holds only tombstones are remembered with their deletion time
(`tombstones`), from the scans and the changes, for the reaper; the reaper re-checks each under the key's
lock, so a stale entry costs a check, never a wrong removal.

Persisted state (`save` at a clean stop, `load` at start), `DATA_DIR/aae/trees.bin`::

    file     := magic "RKVAAE" version:u8 = 1  last_seq:u64  body_len:u32  body  crc32:u32 (of all before)
    body     := msgpack map {"trees": [tree bytes (merkle.MerkleTree.to_bytes), ...],
                             "tombstones": [[key (bin), deleted_at_ms (int)], ...]}

The file is used only when the engine's last sequence number at start equals `last_seq` (nothing was
written since the trees were saved) and it is deleted once read, so a crash never leaves a stale one
behind; otherwise the trees are rebuilt from scans.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgpack

from ringkv.cluster import merkle, versions
from ringkv.cluster.aae import RangeId, ReplicaRange
from ringkv.cluster.merkle import MerkleTree, Shape
from ringkv.cluster.ring import token_for
from ringkv.replica import Change, Replica, storage_key, token_segments
from ringkv.storage.fsutil import write_atomically

log = logging.getLogger("ringkv.antientropy")

LATE_S = 30.0
FILE_MAGIC = b"RKVAAE"
FILE_VERSION = 1
_FILE_HEAD = struct.Struct(">6sBQI")
_CRC = struct.Struct(">I")
_NIL = b"\xc0"  # msgpack nil: a tombstone's value (JSON values, UTF-8, never hold this byte)


@dataclass
class _Build:
    s0: int
    segments: list[tuple[bytes, bytes | None]]
    scanned: tuple[int, bytes] | None = None  # (segment, last engine key read); None: nothing yet
    done: bool = False
    reading: bool = False
    held: list[tuple[Change, int]] = field(default_factory=list)
    applied: dict[bytes, int] = field(default_factory=dict)
    reported: dict[bytes, int] = field(default_factory=dict)  # newest change seen per key during the build
    late_until: float = 0.0

    def has_scanned(self, key: bytes) -> bool:
        if self.done:
            return True
        if self.scanned is None:
            return False
        at = storage_key(key)
        # A wrapping range has two segments: the tokens above lo first, then those from the bottom up to hi.
        index = 0 if len(self.segments) == 1 or at >= self.segments[0][0] else 1
        segment, last = self.scanned
        return index < segment or (index == segment and at <= last)


class RangeTree:
    """One replica range's tree, and its build state."""

    def __init__(self, replica_range: ReplicaRange, shape: Shape) -> None:
        self.range = replica_range
        self.shape = shape
        self.tree = MerkleTree(shape)
        self.ready = False
        self.build: _Build | None = None
        self.changes = 0  # bumped on every change applied (a leaf heal needs none during its scan)
        self.build_seconds = 0.0
        self.built_at = 0.0  # monotonic
        self.built = asyncio.Event()  # set when a build ends (ready, or failed)

    def apply(self, token: int, change: Change) -> None:
        self.tree.update(token, change.key, None if change.old is None else merkle.record_digest(change.old),
                         None if change.new is None else merkle.record_digest(change.new))
        self.changes += 1


class TreeSet:
    def __init__(self, replica: Replica, total_leaves: int = 65536, fanout: int = 16, batch: int = 512,
                 track: bool = True) -> None:
        self.replica = replica
        self.total_leaves = total_leaves
        self.fanout = fanout
        self.batch = batch
        self.trees: dict[RangeId, RangeTree] = {}
        self._bounds: list[int] = []  # sorted upper bounds of the tree intervals (wrapping ones split)
        self._owners: list[RangeTree] = []
        self.tombstones: dict[bytes, int] = {}
        self.extras: dict[RangeId, RangeTree] = {}  # temporary trees (`prepare`), e.g. of a streamed range
        self.builds = 0
        self.build_seconds_total = 0.0
        self.heals = 0
        self.loaded = False
        if track:  # anti-entropy off: no trees to keep, and no cost on the write path
            replica.observers.append(self.observe)

    # -- which trees ----------------------------------------------------------------------------------

    def set_ranges(self, ranges: Iterable[ReplicaRange]) -> list[RangeTree]:
        """Keep a tree for exactly these ranges; returns the new ones (to build). The tree of a range whose
        bounds did not change is kept as it is (a tree covers tokens, whoever else replicates them)."""
        wanted = {r.id: r for r in ranges}
        kept = {rid: t for rid, t in self.trees.items() if rid in wanted}
        for rid, t in kept.items():
            t.range = wanted[rid]
        new = [RangeTree(r, r.shape(self.total_leaves, self.fanout)) for rid, r in sorted(wanted.items())
               if rid not in kept]
        self.trees = {**kept, **{t.range.id: t for t in new}}
        intervals: list[tuple[int, RangeTree]] = []
        for t in self.trees.values():
            lo, hi = t.range.lo, t.range.hi
            if lo < hi:
                intervals.append((hi, t))
            else:  # wraps (or is the whole ring): (lo, top] and [bottom, hi]
                intervals.append((2**63 - 1, t))
                intervals.append((hi, t))
        intervals.sort(key=lambda item: item[0])
        self._bounds = [b for b, _ in intervals]
        self._owners = [t for _, t in intervals]
        return new

    def tree_for(self, token: int) -> RangeTree | None:
        i = bisect.bisect_left(self._bounds, token)
        while i < len(self._bounds):
            t = self._owners[i]
            if t.shape.holds(token):
                return t
            i += 1
            if i < len(self._bounds) and self._bounds[i] != self._bounds[i - 1]:
                break
        return None

    def get(self, lo: int, hi: int) -> RangeTree | None:
        return self.trees.get((lo, hi)) or self.extras.get((lo, hi))

    # -- temporary trees ------------------------------------------------------------------------------

    async def prepare(self, lo: int, hi: int) -> RangeTree:
        """A temporary tree of exactly (lo, hi] (to verify a streamed range), built and then kept current
        like the others until `release`; one that already exists (of the node's own ranges too) is reused."""
        existing = self.get(lo, hi)
        if existing is not None and existing.ready:
            return existing
        if existing is None:
            shape = merkle.shape_for(lo, hi, self.total_leaves, fanout=self.fanout)
            existing = RangeTree(ReplicaRange(lo, hi, ()), shape)
            self.extras[(lo, hi)] = existing
        if existing.build is None or existing.build.done:
            await self.build(existing)
        else:  # another caller is building it
            await existing.built.wait()
        return existing

    def release(self, lo: int, hi: int) -> None:
        self.extras.pop((lo, hi), None)

    # -- changes --------------------------------------------------------------------------------------

    def observe(self, change: Change) -> None:
        if change.deleted_at_ms is not None:
            self.tombstones[change.key] = change.deleted_at_ms
        elif change.key in self.tombstones:
            del self.tombstones[change.key]
        token = token_for(change.key)
        for extra in self.extras.values():
            if extra.shape.holds(token):
                self._observe_in(extra, change, token)
        target = self.tree_for(token)
        if target is None:
            return  # not a key of a range we replicate (a hint for ourselves, a stale copy)
        self._observe_in(target, change, token)

    def _observe_in(self, target: RangeTree, change: Change, token: int) -> None:
        build = target.build
        if build is not None:
            build.reported[change.key] = change.seq
            if build.reading:
                build.held.append((change, token))
                return
            if not self._settle(build, change):
                return
        target.apply(token, change)

    @staticmethod
    def _settle(build: _Build, change: Change) -> bool:
        """Whether a change must be applied to a tree being built (see the module docstring)."""
        if change.seq <= build.s0 or not build.has_scanned(change.key):
            return False
        seen = build.applied.get(change.key)
        if seen is not None and seen >= change.seq:
            return False
        build.applied[change.key] = change.seq
        return True

    # -- builds ---------------------------------------------------------------------------------------

    async def build(self, target: RangeTree) -> None:
        """(Re)build one tree from a scan, concurrently with writes; `target.ready` once done."""
        started = time.monotonic()
        target.ready = False
        target.built.clear()
        target.tree = MerkleTree(target.shape)
        build = _Build(self.replica.engine.last_seq, token_segments(target.range.lo, target.range.hi))
        target.build = build
        cursor: bytes | None = None
        try:
            while True:
                build.reading = True
                try:
                    entries, cursor = await self.replica.scan_range_entries(
                        target.range.lo, target.range.hi, cursor, self.batch)
                    contribution = await asyncio.to_thread(_contributions, target.shape, entries)
                finally:
                    build.reading = False
                if target.build is not build or self.get(*target.range.id) is not target:
                    return  # superseded by a newer build, or the range is no longer ours
                leaves = target.tree.levels[0]
                for leaf, delta, count in contribution.leaves:
                    leaves[leaf] ^= delta
                    target.tree.count += count
                for key, deleted_at_ms, seq in contribution.tombstones:
                    if build.reported.get(key, 0) < seq:  # not superseded by a change reported meanwhile
                        self.tombstones[key] = deleted_at_ms
                for key, _, seq in entries:
                    if seq > build.s0:
                        build.applied[key] = max(seq, build.applied.get(key, 0))
                if cursor is None:
                    build.done = True
                else:
                    build.scanned = (cursor[0], cursor[1:])
                held, build.held = build.held, []
                for change, token in held:
                    if self._settle(build, change):
                        target.apply(token, change)
                if build.done:
                    break
            target.tree.recompute()  # the batches XORed into the leaves only
            target.ready = True
            target.built.set()
            target.build_seconds = time.monotonic() - started
            target.built_at = time.monotonic()
            self.builds += 1
            self.build_seconds_total += target.build_seconds
            build.late_until = time.monotonic() + LATE_S
            asyncio.get_running_loop().call_later(LATE_S, self._forget_build, target, build)
        except BaseException:
            if target.build is build:
                target.build = None  # a failed build leaves the tree not ready; the caller retries
            target.built.set()
            raise

    @staticmethod
    def _forget_build(target: RangeTree, build: _Build) -> None:
        if target.build is build:
            target.build = None

    async def build_all(self) -> None:
        for target in list(self.trees.values()):
            if not target.ready and target.build is None and self.trees.get(target.range.id) is target:
                await self.build(target)

    # -- leaves ---------------------------------------------------------------------------------------

    async def leaf_digests(self, target: RangeTree, leaves: list[int], max_keys: int,
                           ) -> tuple[dict[int, dict[bytes, bytes]], list[int]]:
        """The keys and record digests of `leaves` (sorted), read from storage: ({leaf: {key: digest}}, the
        leaves covered). Stops after the leaf that takes it past `max_keys` keys (the rest are not covered).
        Heals leaves whose tree hash disagrees with what was read, if nothing changed the tree meanwhile."""
        out: dict[int, dict[bytes, bytes]] = {}
        covered: list[int] = []
        wanted = set(leaves)
        total = 0
        engine = self.replica.engine
        for first, last in _runs(leaves):
            changes, stalls = target.changes, engine.unreported_started + engine.unreported
            lo, hi = target.shape.leaf_bounds(first, last)
            run: dict[int, dict[bytes, bytes]] = {leaf: {} for leaf in range(first, last + 1)}
            cursor: bytes | None = None
            while True:
                pairs, cursor = await self.replica.scan_range(lo, hi, cursor, self.batch)
                for key, value in pairs:
                    run[target.shape.leaf_of(token_for(key))][key] = merkle.record_digest(value)
                if cursor is None:
                    break
            quiet = target.changes == changes and engine.unreported_started + engine.unreported == stalls
            if target.ready and quiet and not engine.unreported:  # no change the scan may have seen unreported
                for leaf, digests in run.items():
                    self._heal(target, leaf, digests)
            for leaf in range(first, last + 1):
                if leaf in wanted:
                    out[leaf] = run[leaf]
                    covered.append(leaf)
                    total += len(run[leaf])
                    if total >= max_keys:
                        return out, covered
        return out, covered

    def _heal(self, target: RangeTree, leaf: int, digests: dict[bytes, bytes]) -> None:
        value = 0
        for key, digest in digests.items():
            value ^= merkle.entry(key, digest)
        if target.tree.levels[0][leaf] != value:
            self.heals += 1
            log.warning("tree leaf %d of range %s disagreed with storage; rebuilt it", leaf, target.range.name)
            target.tree.set_leaf(leaf, value)

    # -- persistence ----------------------------------------------------------------------------------

    def save(self, path: str, last_seq: int) -> None:
        """Write every ready tree (blocking: call in a thread, after the last write)."""
        trees = [t.tree.to_bytes() for t in self.trees.values() if t.ready]
        body = msgpack.packb({"trees": trees, "tombstones": [[k, v] for k, v in self.tombstones.items()]},
                             use_bin_type=True)
        data = _FILE_HEAD.pack(FILE_MAGIC, FILE_VERSION, last_seq, len(body)) + body
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomically(path, data + _CRC.pack(zlib.crc32(data)))

    @staticmethod
    def read_saved(path: str) -> tuple[list[MerkleTree], dict[bytes, int], int] | None:
        """The saved trees, tombstones and sequence number, or None; the file is removed either way, so a
        crash never leaves a stale one behind (blocking: call in a thread)."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        os.unlink(path)
        try:
            return _parse(data)
        except ValueError as e:
            log.warning("ignoring saved anti-entropy trees in %s: %s", path, e)
            return None

    def install(self, saved: tuple[list[MerkleTree], dict[bytes, int], int] | None, last_seq: int) -> int:
        """Take saved trees if nothing was written since they were saved (`last_seq`, read in the same step
        of the event loop, so no write can come between); returns how many were taken."""
        if saved is None:
            return 0
        trees, tombstones, seq = saved
        if seq != last_seq:
            log.info("saved anti-entropy trees are older than the data (seq %d, now %d): rebuilding", seq,
                     last_seq)
            return 0
        taken = 0
        for tree in trees:
            target = self.trees.get((tree.shape.lo, tree.shape.hi))
            if target is not None and target.shape == tree.shape and not target.ready and target.build is None:
                target.tree = tree
                target.ready = True
                target.built_at = time.monotonic()
                taken += 1
        self.tombstones.update(tombstones)
        self.loaded = taken > 0
        return taken

    # -- status ---------------------------------------------------------------------------------------

    @property
    def pending_builds(self) -> int:
        return sum(1 for t in self.trees.values() if not t.ready)


@dataclass
class _Contribution:
    leaves: list[tuple[int, int, int]]  # (leaf, xor of entries, keys)
    tombstones: list[tuple[bytes, int, int]]  # (key, deleted at, seq)


def _contributions(shape: Shape, entries: list[tuple[bytes, bytes | None, int]]) -> _Contribution:
    """A batch's share of the tree (computed in a thread)."""
    acc: dict[int, list[int]] = {}
    tombstones: list[tuple[bytes, int, int]] = []
    for key, value, seq in entries:
        if value is None:
            continue
        leaf = shape.leaf_of(token_for(key))
        slot = acc.setdefault(leaf, [0, 0])
        slot[0] ^= merkle.entry(key, merkle.record_digest(value))
        slot[1] += 1
        if _NIL in value:
            try:
                when = versions.deleted_at(versions.decode_record(value))
            except Exception:  # a corrupt record: the replica quarantines it when it is read
                continue
            if when is not None:
                tombstones.append((key, when, seq))
    return _Contribution([(leaf, v[0], v[1]) for leaf, v in acc.items()], tombstones)


def _runs(leaves: list[int]) -> list[tuple[int, int]]:
    """Sorted leaf numbers grouped into runs of neighbours, a run bridging gaps of up to 3 leaves (scanning a
    few extra, nearly empty leaves is cheaper than another scan)."""
    out: list[tuple[int, int]] = []
    for leaf in sorted(leaves):
        if out and leaf - out[-1][1] <= 4:
            out[-1] = (out[-1][0], leaf)
        else:
            out.append((leaf, leaf))
    return out


def _parse(data: bytes) -> tuple[list[MerkleTree], dict[bytes, int], int]:
    if len(data) < _FILE_HEAD.size + _CRC.size:
        raise ValueError("file is shorter than its header")
    magic, version, seq, length = _FILE_HEAD.unpack_from(data)
    if magic != FILE_MAGIC or version != FILE_VERSION:
        raise ValueError("not a version 1 trees file")
    if len(data) != _FILE_HEAD.size + length + _CRC.size:
        raise ValueError("file size does not match its header")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[:-_CRC.size]) != crc:
        raise ValueError("checksum mismatch")
    try:
        body = msgpack.unpackb(data[_FILE_HEAD.size:-_CRC.size], raw=False)
        trees = [MerkleTree.from_bytes(bytes(t)) for t in body["trees"]]
        tombstones = {bytes(k): int(v) for k, v in body["tombstones"]}
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
        raise ValueError(f"malformed body: {e}") from None
    return trees, tombstones, seq


