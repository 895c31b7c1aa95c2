"""A node's Merkle trees, kept current from the replica's changes: a tree kept by the changes equals a
rebuild from a scan; a tree built from a scan while writers keep writing equals a rebuild from a quiet scan
(the build reconciles what it reads with what it is told by engine sequence numbers); saved trees are taken
back only if nothing was written since; leaf reads return exactly the leaves asked and heal a leaf that
went wrong; the tombstone registry follows deletes."""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ringkv.cluster import merkle, versions
from ringkv.cluster.aae import ReplicaRange
from ringkv.cluster.ids import NodeId
from ringkv.cluster.merkle import MerkleTree
from ringkv.cluster.ring import token_for
from ringkv.errors import TooManySiblingsError
from ringkv.net.trees import RangeTree, TreeSet
from ringkv.replica import Change, Replica, storage_key
from ringkv.storage.aio import AsyncEngine
from ringkv.storage.engine import Engine, EngineOptions
from ringkv.storage.wal import Durability

T = TypeVar("T")
TOP, BOTTOM = 2**63 - 1, -(2**63)
ME = NodeId("n1#a")
OTHERS = [NodeId("n2#b"), NodeId("n3#c")]
ScanEntries = tuple[list[tuple[bytes, bytes | None, int]], bytes | None]
Scan = tuple[list[tuple[bytes, bytes]], bytes | None]
WHOLE = (123, 123)
PLAIN = (-(2**62), 2**62)
WRAPPING = (2**62, -(2**62))


def run(coro: Coroutine[Any, Any, T], limit_s: float = 20.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit_s):
            return await coro

    return asyncio.run(bounded())


def exists(path: str) -> bool:
    return Path(path).exists()


def options(**extra: Any) -> EngineOptions:
    return EngineOptions(durability=Durability.OFF, **extra)


async def open_replica(path: Path, clock: list[int] | None = None, **extra: Any) -> Replica:
    engine = await AsyncEngine.open(str(path), options(**extra))
    replica = Replica(engine, ME) if clock is None else Replica(engine, ME, clock_ms=lambda: clock[0])
    await replica.open_layout()
    return replica


def rrange(bounds: tuple[int, int]) -> ReplicaRange:
    return ReplicaRange(bounds[0], bounds[1], (NodeId("n1"),))


async def quiet_tree(replica: Replica, target: RangeTree) -> MerkleTree:
    """The tree of the range as a scan of a store nobody writes to sees it."""
    pairs, cursor = await replica.scan_range(target.range.lo, target.range.hi, None, 10**7)
    assert cursor is None
    return MerkleTree.build(target.shape, ((token_for(k), k, merkle.record_digest(v)) for k, v in pairs))


async def deleted_records(replica: Replica) -> dict[bytes, int]:
    pairs, _ = await replica.scan_range(0, 0, None, 10**7)
    out = {}
    for key, raw in pairs:
        when = versions.deleted_at(versions.decode_record(raw))
        if when is not None:
            out[key] = when
    return out


class Writer:
    """Random writes on a replica, as clients and other replicas make them: puts, puts with an old context
    (siblings), deletes, records merged from other actors, reaps of deleted records, reads."""

    def __init__(self, replica: Replica, rng: random.Random, keys: list[bytes],
                 remote: dict[tuple[NodeId, bytes], versions.Record]) -> None:
        self.replica = replica
        self.rng = rng
        self.keys = keys
        self.remote = remote  # each other actor's own record of a key (shared by all writers)
        self.contexts: dict[bytes, versions.VersionVector] = {}
        self.ops = 0

    async def step(self) -> None:
        rng, replica = self.rng, self.replica
        key = rng.choice(self.keys)
        op = rng.random()
        try:
            if op < 0.30:
                await replica.write(key, b'"v%d"' % rng.randrange(10**6), None)
            elif op < 0.40 and key in self.contexts:
                await replica.write(key, b'"s%d"' % rng.randrange(10**6), self.contexts[key])  # a sibling
            elif op < 0.55:
                await replica.write(key, None, None)
            elif op < 0.75:
                actor = rng.choice(OTHERS)
                mine = self.remote.get((actor, key), versions.empty_record())
                value = None if rng.random() < 0.2 else b'"r%d"' % rng.randrange(10**6)
                self.remote[(actor, key)] = record = versions.update(mine, None, actor, value, rng.randrange(10**9))
                await replica.merge_in(key, record)
            elif op < 0.85:
                raw = await replica.engine.get(storage_key(key))
                if raw is not None and versions.deleted_at(versions.decode_record(raw)) is not None:
                    await replica.reap(key, merkle.record_digest(raw))
            else:
                self.contexts[key] = (await replica.read(key)).context
        except TooManySiblingsError:
            pass
        self.ops += 1

    async def run(self, stop: asyncio.Event, until: int = 0) -> None:
        while not stop.is_set() or self.ops < until:
            await self.step()
            await asyncio.sleep(0)  # let the build and the other writers in between any two operations


# --- a tree kept by changes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bounds", [WHOLE, PLAIN, WRAPPING])
def test_a_tree_kept_by_the_changes_equals_a_rebuild(tmp_path: Path, bounds: tuple[int, int]) -> None:
    async def main() -> None:
        replica = await open_replica(tmp_path / "d", memtable_bytes=8192)
        try:
            trees = TreeSet(replica, total_leaves=256, fanout=4, batch=50)
            (target,) = trees.set_ranges([rrange(bounds)])
            await trees.build(target)
            assert target.ready and target.tree.count == 0
            writer = Writer(replica, random.Random(7), [b"key-%d" % i for i in range(120)], {})
            for _ in range(1500):
                await writer.step()
            rebuilt = await quiet_tree(replica, target)
            assert target.tree == rebuilt and target.tree.count == rebuilt.count > 0
            assert replica.reaped > 0  # removals by reap were among the changes
            for key in (b"key-1", b"key-2", b"key-3"):
                token = token_for(key)
                assert trees.tree_for(token) is (target if target.shape.holds(token) else None)
        finally:
            await replica.engine.close()

    run(main())


# --- builds under concurrent writes ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("bounds", [WHOLE, PLAIN, WRAPPING, (TOP, 0), (0, TOP), (BOTTOM, BOTTOM)])
def test_a_tree_built_while_writers_keep_writing_equals_a_rebuild_from_a_quiet_scan(
        tmp_path: Path, bounds: tuple[int, int], seed: int) -> None:
    async def main() -> None:
        # small memtables: flushes happen during the build, so the scans read tables as well as memory
        replica = await open_replica(tmp_path / "d", memtable_bytes=16 * 1024)
        try:
            rng = random.Random(seed)
            keys = [b"key-%d" % i for i in range(400)]
            remote: dict[tuple[NodeId, bytes], versions.Record] = {}
            trees = TreeSet(replica, total_leaves=128, fanout=4, batch=7)
            preload = Writer(replica, random.Random(seed + 1000), keys, remote)
            for _ in range(600):  # a store with history: live records, siblings, tombstones, reaped keys
                await preload.step()
            (target,) = trees.set_ranges([rrange(bounds)])

            seen = {"scanned": 0, "ahead": 0, "after": 0}

            def count(change: Change) -> None:  # which of the build's cases each change is
                build = target.build
                if build is None or build.done:
                    seen["after"] += 1
                elif target.shape.holds(token_for(change.key)):
                    seen["scanned" if build.has_scanned(change.key) else "ahead"] += 1

            replica.observers.append(count)
            writers = [Writer(replica, random.Random(rng.randrange(2**32)), keys, remote) for _ in range(4)]
            stop = asyncio.Event()
            tasks = [asyncio.create_task(w.run(stop)) for w in writers]
            await trees.build(target)
            built_at = sum(w.ops for w in writers)
            stop.set()
            await asyncio.gather(*tasks)
            # and more writes after the build, while it is still remembered for late changes
            await asyncio.gather(*(w.run(stop, until=w.ops + 40) for w in writers))
            assert target.ready
            assert built_at > 50 and min(seen.values()) > 0
            rebuilt = await quiet_tree(replica, target)
            assert target.tree == rebuilt
            assert target.tree.count == rebuilt.count
            # every deleted record is known to the reaper (entries for keys rewritten since may linger)
            tombstones = await deleted_records(replica)
            assert {k for k in tombstones if target.shape.holds(token_for(k))} <= set(trees.tombstones)
        finally:
            await replica.engine.close()

    run(main())


def test_writes_while_a_batch_is_read_are_settled_against_what_it_read(tmp_path: Path) -> None:
    """Deterministic versions of the races: a write of a key the running batch has read (after its
    snapshot), of a key it is about to read, and of a key it read before the write (the snapshot saw it)."""

    async def main() -> None:
        replica = await open_replica(tmp_path / "d")
        try:
            # in scan order: ring order from the range's lo
            keys = sorted((b"k%d" % i for i in range(60)), key=lambda k: ((token_for(k) - WHOLE[0] - 1) % 2**64, k))
            for key in keys:
                await replica.write(key, b'"0"', None)
            trees = TreeSet(replica, total_leaves=64, fanout=4, batch=10)
            (target,) = trees.set_ranges([rrange(WHOLE)])
            original = replica.scan_range_entries
            batches = 0

            async def racing_scan(lo: int, hi: int, cursor: bytes | None, limit: int) -> ScanEntries:
                nonlocal batches
                batches += 1
                if batches == 2:  # before the snapshot: the scan sees these
                    await replica.write(keys[0], b'"before-snapshot, scanned"', None)
                    await replica.write(keys[15], b'"before-snapshot, in this batch"', None)
                result = await original(lo, hi, cursor, limit)
                if batches == 2:  # after the snapshot, while the batch is still being read
                    await replica.write(keys[5], b'"after, scanned"', None)
                    await replica.write(keys[12], b'"after, in this batch"', None)
                    await replica.write(keys[12], b'"after, in this batch, twice"', None)
                    await replica.write(keys[45], b'"after, not yet scanned"', None)
                    await replica.write(keys[30], None, None)
                return result

            replica.scan_range_entries = racing_scan  # type: ignore[method-assign, assignment]
            await trees.build(target)
            assert batches >= 6
            assert target.tree == await quiet_tree(replica, target)
        finally:
            await replica.engine.close()

    run(main())


def stall_next_write(engine: Engine) -> tuple[threading.Event, threading.Event]:
    """Make the next write stall as it does when flushes lag behind (`AsyncEngine.write` runs it in a thread):
    it becomes visible in the engine, then waits for `release` before its change is reported. Returns
    (visible, release)."""
    visible, release = threading.Event(), threading.Event()
    real_write_entry = engine.write_entry

    def stalling_write_entry(k: bytes, v: bytes | None) -> tuple[int, int]:
        engine.write_would_stall = lambda: False  # type: ignore[method-assign]
        engine.write_entry = real_write_entry  # type: ignore[method-assign]
        result = real_write_entry(k, v)  # visible to readers from here on
        visible.set()
        release.wait(10)
        return result

    engine.write_would_stall = lambda: True  # type: ignore[method-assign]
    engine.write_entry = stalling_write_entry  # type: ignore[method-assign, assignment]
    return visible, release


def test_a_write_that_stalled_across_the_start_of_a_build_is_counted_once(tmp_path: Path) -> None:
    """Its sequence number is below the build's start (the scan sees it) but its change arrives during the
    build: it must not be applied on top of what the scan read."""

    async def main() -> None:
        replica = await open_replica(tmp_path / "d")
        try:
            for i in range(50):
                await replica.write(b"k%d" % i, b'"0"', None)
            trees = TreeSet(replica, total_leaves=64, fanout=4, batch=10)
            (target,) = trees.set_ranges([rrange(WHOLE)])
            visible, release = stall_next_write(replica.engine.engine)
            write = asyncio.create_task(replica.write(b"k3", b'"stalled"', None))
            await asyncio.to_thread(visible.wait, 10)
            await trees.build(target)
            release.set()
            await write
            assert target.tree == await quiet_tree(replica, target)
        finally:
            await replica.engine.close()

    run(main())


# --- persistence -------------------------------------------------------------------------------------------


def test_saved_trees_are_taken_back_when_nothing_was_written_since(tmp_path: Path) -> None:
    async def main() -> None:
        path = str(tmp_path / "aae" / "trees.bin")
        clock = [1_000_000]
        replica = await open_replica(tmp_path / "d", clock)
        halves = [rrange((0, 2**62)), rrange((2**62, 0))]
        trees = TreeSet(replica, total_leaves=128, fanout=4)
        trees.set_ranges(halves)
        await trees.build_all()
        for i in range(200):
            await replica.write(b"k%d" % i, b'"%d"' % i, None)
        for i in range(0, 200, 7):
            await replica.write(b"k%d" % i, None, None)
        expected = {rid: t.tree for rid, t in trees.trees.items()}
        assert all(t.ready for t in trees.trees.values())
        trees.save(path, replica.engine.last_seq)
        saved_tombstones = dict(trees.tombstones)
        assert len(saved_tombstones) == len(range(0, 200, 7))
        await replica.engine.close()

        replica = await open_replica(tmp_path / "d", clock)  # a clean restart: the same last_seq
        try:
            again = TreeSet(replica, total_leaves=128, fanout=4)
            again.set_ranges(halves)
            saved = TreeSet.read_saved(path)
            assert not exists(path)  # read once: a crash later cannot reuse a stale file
            assert again.install(saved, replica.engine.last_seq) == 2
            assert again.loaded and again.pending_builds == 0
            for rid, t in again.trees.items():
                assert t.tree == expected[rid] == await quiet_tree(replica, t)
                assert t.tree.count == expected[rid].count
            assert again.tombstones == saved_tombstones
            await replica.write(b"k1", b'"after"', None)  # and they are kept current from there on
            for t in again.trees.values():
                assert t.tree == await quiet_tree(replica, t)
        finally:
            await replica.engine.close()

    run(main())


def test_saved_trees_older_than_the_data_are_not_taken(tmp_path: Path) -> None:
    async def main() -> None:
        path = str(tmp_path / "trees.bin")
        replica = await open_replica(tmp_path / "d")
        try:
            trees = TreeSet(replica, total_leaves=64, fanout=4)
            trees.set_ranges([rrange(WHOLE)])
            await trees.build_all()
            await replica.write(b"a", None, None)
            trees.save(path, replica.engine.last_seq)
            await replica.write(b"b", b'"written after the save"', None)
            again = TreeSet(replica, total_leaves=64, fanout=4)
            (fresh,) = again.set_ranges([rrange(WHOLE)])
            assert again.install(TreeSet.read_saved(path), replica.engine.last_seq) == 0
            assert not fresh.ready and not again.loaded and again.tombstones == {}  # nothing taken
            assert not exists(path)
            # a tree of another shape (another leaf count) is not taken either
            trees.save(path, replica.engine.last_seq)
            other = TreeSet(replica, total_leaves=256, fanout=4)
            other.set_ranges([rrange(WHOLE)])
            assert other.install(TreeSet.read_saved(path), replica.engine.last_seq) == 0
            assert other.install(None, replica.engine.last_seq) == 0
        finally:
            await replica.engine.close()

    run(main())


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "magic", "garbage"])
def test_a_damaged_trees_file_is_ignored_and_removed(tmp_path: Path, damage: str) -> None:
    async def main() -> None:
        path = tmp_path / "trees.bin"
        replica = await open_replica(tmp_path / "d")
        try:
            trees = TreeSet(replica, total_leaves=64, fanout=4)
            trees.set_ranges([rrange(WHOLE)])
            await trees.build_all()
            for i in range(30):
                await replica.write(b"k%d" % i, b'"x"', None)
            trees.save(str(path), replica.engine.last_seq)
            data = path.read_bytes()
            broken = {"flip": data[:40] + bytes([data[40] ^ 0x10]) + data[41:], "truncate": data[:-3],
                      "empty": b"", "magic": b"RKVXXX" + data[6:], "garbage": os.urandom(300)}[damage]
            path.write_bytes(broken)
            assert TreeSet.read_saved(str(path)) is None
            assert not path.exists()
            assert TreeSet.read_saved(str(path)) is None  # no file: nothing
        finally:
            await replica.engine.close()

    run(main())


# --- leaves ------------------------------------------------------------------------------------------------


async def filled(tmp_path: Path, count: int = 400) -> tuple[Replica, TreeSet, RangeTree]:
    replica = await open_replica(tmp_path / "d")
    trees = TreeSet(replica, total_leaves=64, fanout=4, batch=13)
    (target,) = trees.set_ranges([rrange(WHOLE)])
    for i in range(count):
        await replica.write(b"k%d" % i, b'"%d"' % i, None)
    await trees.build(target)
    return replica, trees, target


async def truth(replica: Replica, target: RangeTree) -> dict[int, dict[bytes, bytes]]:
    pairs, _ = await replica.scan_range(target.range.lo, target.range.hi, None, 10**7)
    out: dict[int, dict[bytes, bytes]] = {i: {} for i in range(target.shape.leaves)}
    for key, raw in pairs:
        out[target.shape.leaf_of(token_for(key))][key] = merkle.record_digest(raw)
    return out


def test_leaf_digests_are_exactly_the_keys_of_the_leaves_asked(tmp_path: Path) -> None:
    async def main() -> None:
        replica, trees, target = await filled(tmp_path)
        try:
            real = await truth(replica, target)
            rng = random.Random(3)
            for _ in range(20):
                asked = sorted(rng.sample(range(target.shape.leaves), rng.randint(1, 20)))
                got, covered = await trees.leaf_digests(target, asked, 10**9)
                assert covered == asked
                assert got == {leaf: real[leaf] for leaf in asked}  # bridged neighbours are not returned
            got, covered = await trees.leaf_digests(target, list(range(target.shape.leaves)), 10**9)
            assert covered == list(range(target.shape.leaves)) and got == real
            assert sum(len(d) for d in got.values()) == 400
            assert trees.heals == 0  # a correct tree needs no healing
        finally:
            await replica.engine.close()

    run(main())


@pytest.mark.parametrize("max_keys", [1, 5, 17, 40, 399, 400, 10_000])
def test_leaf_digests_stop_after_the_leaf_that_crosses_max_keys(tmp_path: Path, max_keys: int) -> None:
    async def main() -> None:
        replica, trees, target = await filled(tmp_path)
        try:
            real = await truth(replica, target)
            asked = [*range(0, target.shape.leaves, 2), target.shape.leaves - 1]
            got, covered = await trees.leaf_digests(target, asked, max_keys)
            assert covered == asked[:len(covered)] and set(got) == set(covered)
            sizes = [len(real[leaf]) for leaf in covered]
            if len(covered) < len(asked):
                assert sum(sizes) >= max_keys > sum(sizes[:-1])  # the last leaf taken crossed the bound
            else:
                assert sum(sizes[:-1]) < max_keys
            assert got == {leaf: real[leaf] for leaf in covered}
        finally:
            await replica.engine.close()

    run(main())


def test_a_corrupted_leaf_heals_when_it_is_read(tmp_path: Path) -> None:
    async def main() -> None:
        replica, trees, target = await filled(tmp_path)
        try:
            rebuilt = await quiet_tree(replica, target)
            target.tree.set_leaf(9, 0xDEADBEEF)
            target.tree.set_leaf(10, 0)
            assert target.tree != rebuilt
            got, _ = await trees.leaf_digests(target, [3, 9, 10], 10**9)
            assert trees.heals == 2
            assert target.tree == rebuilt
            assert got == {leaf: (await truth(replica, target))[leaf] for leaf in (3, 9, 10)}
            await trees.leaf_digests(target, [9, 10], 10**9)
            assert trees.heals == 2  # healed once, then right
        finally:
            await replica.engine.close()

    run(main())


def test_a_leaf_is_not_healed_from_a_scan_a_change_raced_with(tmp_path: Path) -> None:
    """A write during the leaf's scan makes the scan stale: the tree (kept by the change) is right, the scan
    may not be, so the leaf is left alone."""

    async def main() -> None:
        replica, trees, target = await filled(tmp_path)
        try:
            key = b"k17"
            leaf = target.shape.leaf_of(token_for(key))
            original = replica.scan_range

            async def racing(lo: int, hi: int, cursor: bytes | None, limit: int) -> Scan:
                result = await original(lo, hi, cursor, limit)
                await replica.write(key, b'"changed during the scan"', None)
                return result

            replica.scan_range = racing  # type: ignore[method-assign, assignment]
            await trees.leaf_digests(target, [leaf], 10**9)
            replica.scan_range = original  # type: ignore[method-assign]
            assert trees.heals == 0
            assert target.tree == await quiet_tree(replica, target)
        finally:
            await replica.engine.close()

    run(main())


def test_a_leaf_is_not_healed_from_a_write_visible_before_its_change_was_reported(tmp_path: Path) -> None:
    """A write that stalls (`AsyncEngine.write` runs it in a thread when flushes lag behind) is visible in the
    engine before its change reaches the trees. A leaf scan in between must not take it as the truth."""

    async def main() -> None:
        replica, trees, target = await filled(tmp_path)
        try:
            key = b"k17"
            leaf = target.shape.leaf_of(token_for(key))
            visible, release = stall_next_write(replica.engine.engine)
            write = asyncio.create_task(replica.write(key, b'"stalled"', None))
            await asyncio.to_thread(visible.wait, 10)
            await trees.leaf_digests(target, [leaf], 10**9)
            release.set()
            await write
            assert target.tree == await quiet_tree(replica, target)
        finally:
            await replica.engine.close()

    run(main())


# --- tombstones --------------------------------------------------------------------------------------------


def test_deleted_records_are_registered_with_their_deletion_time(tmp_path: Path) -> None:
    async def main() -> None:
        clock = [5_000]
        replica = await open_replica(tmp_path / "d", clock)
        try:
            await replica.write(b"old", None, None)  # before the trees exist: found by the build's scan
            await replica.write(b"old-live", b'"x"', None)
            trees = TreeSet(replica, total_leaves=64, fanout=4)
            trees.set_ranges([rrange(PLAIN), rrange(WRAPPING)])
            await trees.build_all()
            assert trees.tombstones == {b"old": 5_000}
            clock[0] = 7_000
            await replica.write(b"k", b'"v"', None)
            assert b"k" not in trees.tombstones
            await replica.write(b"k", None, None)
            assert trees.tombstones[b"k"] == 7_000
            clock[0] = 9_000
            other = versions.update(versions.empty_record(), None, OTHERS[0], None, 8_500)
            merged = await replica.merge_in(b"k", other)  # a concurrent tombstone from elsewhere
            assert trees.tombstones[b"k"] == versions.deleted_at(merged) == 8_500
            assert trees.tombstones[b"k"] == (await deleted_records(replica))[b"k"]
            await replica.write(b"k", b'"back"', None)  # rewritten: no longer a tombstone
            assert b"k" not in trees.tombstones
            await replica.write(b"gone", None, None)
            raw = await replica.engine.get(storage_key(b"gone"))
            assert raw is not None and await replica.reap(b"gone", merkle.record_digest(raw))
            assert b"gone" not in trees.tombstones  # reaped: nothing left to reap
            assert set(trees.tombstones) == {b"old"} == set(await deleted_records(replica))
        finally:
            await replica.engine.close()

    run(main())


def test_a_tombstone_rewritten_during_a_build_keeps_its_newest_deletion_time(tmp_path: Path) -> None:
    async def main() -> None:
        clock = [1_000]
        replica = await open_replica(tmp_path / "d", clock)
        try:
            await replica.write(b"k", None, None)  # deleted at 1_000
            trees = TreeSet(replica, total_leaves=64, fanout=4, batch=5)
            (target,) = trees.set_ranges([rrange(WHOLE)])
            original = replica.scan_range_entries

            async def racing(lo: int, hi: int, cursor: bytes | None, limit: int) -> ScanEntries:
                result = await original(lo, hi, cursor, limit)
                if clock[0] == 1_000:
                    clock[0] = 500_000
                    await replica.write(b"k", None, None)  # deleted again, later, while the batch is read
                return result

            replica.scan_range_entries = racing  # type: ignore[method-assign, assignment]
            await trees.build(target)
            assert target.tree == await quiet_tree(replica, target)  # the tree is right...
            assert (await deleted_records(replica))[b"k"] == 500_000
            assert trees.tombstones[b"k"] == 500_000  # ...but the registry says 1_000
        finally:
            await replica.engine.close()

    run(main())
