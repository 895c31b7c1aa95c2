"""Anti-entropy exchanges between in-process nodes (each with its own engine, replica, trees): divergent
replicas end with the merge of every copy, bounded exchanges finish in follow-ups, a peer failing mid-way
corrupts nothing, the handlers refuse garbage with ringkv errors only, tombstones are reaped only when past
their grace and held by every replica (and never copied back to a replica that lacks the key), and an
on-demand repair runs to completion."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import struct
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringkv.cluster import aae, merkle, versions
from ringkv.cluster import ring as r
from ringkv.cluster.aae import ReplicaRange
from ringkv.cluster.ids import NodeId
from ringkv.cluster.merkle import MerkleTree
from ringkv.cluster.ring import NodeInfo, Replication, Ring, token_for
from ringkv.cluster.versions import Record
from ringkv.errors import AntiEntropyUnavailableError, RequestError, RingkvError
from ringkv.net.antientropy import MAX_KEYS, MAX_LEAVES, MAX_NODES, MAX_PREPARED, AaeSettings, AntiEntropy
from ringkv.net.operations import Operations
from ringkv.net.transport import RemoteError, TransportError
from ringkv.net.trees import RangeTree, TreeSet
from ringkv.replica import Replica, storage_key
from ringkv.storage.aio import AsyncEngine
from ringkv.storage.engine import EngineOptions
from ringkv.storage.wal import Durability

T = TypeVar("T")
N1, N2, N3 = NodeId("n1"), NodeId("n2"), NodeId("n3")
T0 = 1_700_000_000_000
GRACE_S = 3600.0
PAST_GRACE = T0 + int(GRACE_S * 1000) + 1
LEAVES = 256


def run(coro: Coroutine[Any, Any, T], limit_s: float = 20.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit_s):
            return await coro

    return asyncio.run(bounded())


def wire(value: Any) -> Any:
    """What the other side of the transport sees (msgpack, as `ringkv.net.transport` frames it)."""
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)


@dataclass
class Node:
    id: NodeId
    replica: Replica
    trees: TreeSet
    aae: AntiEntropy

    async def record(self, key: bytes) -> Record:
        return await self.replica.read(key)

    async def keys(self) -> set[bytes]:
        pairs, _ = await self.replica.scan_range(0, 0, None, 10**7)
        return {k for k, _ in pairs}

    def tree(self, replica_range: ReplicaRange) -> RangeTree:
        target = self.trees.get(replica_range.lo, replica_range.hi)
        assert target is not None
        return target


@dataclass
class Cluster:
    nodes: dict[NodeId, Node] = field(default_factory=dict)
    clock: list[int] = field(default_factory=lambda: [T0])
    # (caller, target, method) -> exception to raise instead of delivering the call
    faults: dict[tuple[NodeId, NodeId, str], Exception] = field(default_factory=dict)
    calls: list[tuple[NodeId, NodeId, str]] = field(default_factory=list)

    async def call(self, caller: NodeId, target: NodeId, method: str, body: dict[str, Any],
                   timeout: float) -> Any:  # noqa: ASYNC109 (the transport's call signature)
        self.calls.append((caller, target, method))
        fault = self.faults.get((caller, target, method))
        if fault is not None:
            raise fault
        node = self.nodes[target]
        handler: Callable[[Any, str], Awaitable[Any]] = {
            "aae_hashes": node.aae.handle_hashes, "aae_leaves": node.aae.handle_leaves,
            "aae_fetch": node.aae.handle_fetch, "aae_push": node.aae.handle_push,
            "aae_reap_check": node.aae.handle_reap_check}[method]
        try:
            reply = await handler(wire(body), caller)
        except RingkvError as e:  # as the transport reports a handler's error to the caller
            raise RemoteError(e.code, str(e)) from None
        return wire(reply)

    @property
    def all(self) -> list[Node]:
        return list(self.nodes.values())

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.replica.engine.close()


def three_node_ring() -> Ring:
    ring = Ring()
    for i, name in enumerate((N1, N2, N3)):
        ring = r.join(ring, NodeInfo(name, "dc1", f"r{i}"), replication=3, tokens_per_unit=4)
    return ring


async def start_cluster(tmp_path: Path, ring: Ring | None = None, replication: Replication = 3,
                        build: bool = True, **overrides: Any) -> Cluster:
    cluster = Cluster()
    ring = ring or three_node_ring()
    settings_ = AaeSettings(**{"mb_s": 0.0, "tombstone_grace_s": GRACE_S, "total_leaves": LEAVES,
                               "timeout_s": 5.0, **overrides})
    for name in ring.nodes:
        engine = await AsyncEngine.open(str(tmp_path / name), EngineOptions(durability=Durability.OFF))
        replica = Replica(engine, NodeId(f"{name}#inc"), clock_ms=lambda: cluster.clock[0])
        await replica.open_layout()
        trees = TreeSet(replica, total_leaves=LEAVES, fanout=16, batch=64)
        node_aae = AntiEntropy(name, replica, trees, functools.partial(cluster.call, name), settings_,
                               eligible=lambda peer: True, operations=Operations(),
                               clock_ms=lambda: cluster.clock[0])
        node_aae.set_ring(ring, replication)
        cluster.nodes[name] = Node(name, replica, trees, node_aae)
    if build:
        for node in cluster.all:
            await node.trees.build_all()
    return cluster


def whole_range(cluster: Cluster) -> ReplicaRange:
    (only,) = cluster.nodes[N1].aae.ranges.values()
    assert only.lo == only.hi and only.replicas == (N1, N2, N3)
    return only


async def quiet_tree(node: Node, target: RangeTree) -> MerkleTree:
    pairs, _ = await node.replica.scan_range(target.range.lo, target.range.hi, None, 10**7)
    return MerkleTree.build(target.shape, ((token_for(k), k, merkle.record_digest(v)) for k, v in pairs))


async def assert_trees_match_storage(cluster: Cluster) -> None:
    for node in cluster.all:
        for target in node.trees.trees.values():
            assert target.tree == await quiet_tree(node, target), node.id


async def merged_copies(cluster: Cluster, keys: set[bytes]) -> dict[bytes, Record]:
    expected: dict[bytes, Record] = {}
    for key in keys:
        merged = versions.empty_record()
        for node in cluster.all:
            merged = versions.merge(merged, await node.record(key))
        expected[key] = merged
    return expected


async def replicate(source: Node, key: bytes, *targets: Node) -> None:
    """Copy `source`'s record of `key` to `targets`, as a write's replication would."""
    record = await source.record(key)
    for target in targets:
        await target.replica.merge_in(key, record)


async def diverge(cluster: Cluster, rng: random.Random, prefix: bytes = b"") -> set[bytes]:
    """Replicas that disagree in every way anti-entropy must repair; returns the keys."""
    n1, n2, n3 = cluster.nodes[N1], cluster.nodes[N2], cluster.nodes[N3]
    keys: set[bytes] = set()

    def key(name: str) -> bytes:
        k = prefix + name.encode()
        keys.add(k)
        return k

    for i in range(40):  # on one node only
        only = rng.choice(cluster.all)
        await only.replica.write(key(f"only-{i}"), b'"%d"' % i, None)
    for i in range(15):  # written on two nodes independently: concurrent siblings
        await n1.replica.write(key(f"both-{i}"), b'"n1"', None)
        await n2.replica.write(key(f"both-{i}"), b'"n2"', None)
    for i in range(15):  # replicated everywhere, then deleted on one node
        k = key(f"deleted-{i}")
        await n1.replica.write(k, b'"alive"', None)
        await replicate(n1, k, n2, n3)
        await rng.choice(cluster.all).replica.write(k, None, None)
    for i in range(15):  # an overwrite that reached only some replicas
        k = key(f"stale-{i}")
        await n2.replica.write(k, b'"v1"', None)
        await replicate(n2, k, n1, n3)
        await n2.replica.write(k, b'"v2"', None)
        await replicate(n2, k, rng.choice([n1, n3]))
    for i in range(10):  # the same everywhere: nothing to do
        k = key(f"same-{i}")
        await n3.replica.write(k, b'"x"', None)
        await replicate(n3, k, n1, n2)
    return keys


async def exchange_all(cluster: Cluster, replica_range: ReplicaRange) -> list[str]:
    results = []
    for a, b in ((N1, N2), (N1, N3), (N2, N3)):
        results.append((await cluster.nodes[a].aae.exchange(replica_range, b)).result)
    return results


# --- exchanges ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_exchanges_leave_every_replica_with_the_merge_of_all_copies(tmp_path: Path, seed: int) -> None:
    async def main() -> None:
        cluster = await start_cluster(tmp_path)
        try:
            whole = whole_range(cluster)
            keys = await diverge(cluster, random.Random(seed))
            expected = await merged_copies(cluster, keys)
            roots = {node.tree(whole).tree.root for node in cluster.all}
            assert len(roots) == 3  # every pair of replicas differs
            assert await exchange_all(cluster, whole) == ["repaired", "repaired", "repaired"]
            for node in cluster.all:
                for key in keys:
                    assert await node.record(key) == expected[key], (node.id, key)
                assert await node.keys() == keys
            assert len({node.tree(whole).tree.root for node in cluster.all}) == 1
            await assert_trees_match_storage(cluster)
            assert await exchange_all(cluster, whole) == ["in_sync"] * 3
            in_sync = await cluster.nodes[N3].aae.exchange(whole, N1)
            assert (in_sync.result, in_sync.keys_repaired, in_sync.hashes) == ("in_sync", 0, 1)  # only roots
        finally:
            await cluster.close()

    run(main())


def test_an_exchange_reports_what_it_moved(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = await start_cluster(tmp_path)
        try:
            whole = whole_range(cluster)
            n1, n2 = cluster.nodes[N1], cluster.nodes[N2]
            for i in range(10):
                await n1.replica.write(b"mine-%d" % i, b'"1"', None)
            for i in range(7):
                await n2.replica.write(b"theirs-%d" % i, b'"2"', None)
            result = await n1.aae.exchange(whole, N2)
            assert result.result == "repaired" and not result.more
            assert (result.pulled, result.pushed) == (7, 10)
            assert result.keys_compared >= 17 and result.bytes > 0 and result.leaves > 0
            assert n1.aae.stats.keys_pulled == 7 and n1.aae.stats.keys_pushed == 10
        finally:
            await cluster.close()

    run(main())


def test_the_key_bound_stops_an_exchange_and_follow_ups_finish_it(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = await start_cluster(tmp_path, max_keys=100)
        try:
            whole = whole_range(cluster)
            n1, n2 = cluster.nodes[N1], cluster.nodes[N2]
            for i in range(700):
                await n1.replica.write(b"k%d" % i, b'"%d"' % i, None)
            for i in range(150):
                await n2.replica.write(b"j%d" % i, b'"%d"' % i, None)
            first = await n1.aae.exchange(whole, N2)
            assert first.result == "repaired" and first.more
            assert 100 <= first.keys_repaired < 850  # stopped at the bound, not after everything
            rounds = 1
            result = first
            while result.more:
                result = await n1.aae.exchange(whole, N2)
                rounds += 1
                assert rounds < 20
            assert rounds >= 2 and result.result in ("repaired", "in_sync")
            assert (await n1.aae.exchange(whole, N2)).result == "in_sync"
            assert await n1.keys() == await n2.keys() == {b"k%d" % i for i in range(700)} | {
                b"j%d" % i for i in range(150)}
            await assert_trees_match_storage(cluster)
        finally:
            await cluster.close()

    run(main())


@pytest.mark.parametrize("method", ["aae_hashes", "aae_leaves", "aae_fetch", "aae_push"])
def test_a_peer_failing_mid_way_fails_the_exchange_and_corrupts_nothing(tmp_path: Path, method: str) -> None:
    async def main() -> None:
        cluster = await start_cluster(tmp_path)
        try:
            whole = whole_range(cluster)
            keys = await diverge(cluster, random.Random(5))
            expected = await merged_copies(cluster, keys)
            before = {node.id: {k: await node.record(k) for k in keys} for node in cluster.all}
            cluster.faults[(N1, N2, method)] = TransportError("connection reset by peer")
            result = await cluster.nodes[N1].aae.exchange(whole, N2)
            assert result.result == "failed" and "reset" in result.error
            assert (N1, N2, method) in cluster.calls
            for node in cluster.all:  # every record is what it was, or a merge of what the two held
                for key in keys:
                    now = await node.record(key)
                    assert versions.merge(now, before[node.id][key]) == now
                    assert versions.merge(now, expected[key]) == expected[key]
            await assert_trees_match_storage(cluster)
            del cluster.faults[(N1, N2, method)]
            await exchange_all(cluster, whole)
            for node in cluster.all:
                for key in keys:
                    assert await node.record(key) == expected[key]
        finally:
            await cluster.close()

    run(main())


def test_a_peer_without_a_ready_tree_of_the_same_shape_is_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = await start_cluster(tmp_path, build=False)
        try:
            whole = whole_range(cluster)
            n1 = cluster.nodes[N1]
            assert (await n1.aae.exchange(whole, N2)).result == "skipped"  # our own tree is not ready yet
            await n1.trees.build_all()
            result = await n1.aae.exchange(whole, N2)
            assert result.result == "unavailable" and "aae_unavailable" in result.error
            await cluster.nodes[N2].trees.build_all()
            assert (await n1.aae.exchange(whole, N2)).result == "in_sync"
            # a peer whose ring gives other ranges (it has not heard of a change yet) refuses too
            n3 = cluster.nodes[N3]
            n3.aae.set_ring(Ring({NodeInfo(N1): [0], NodeInfo(N2): [10], NodeInfo(N3): [20]}), 2)
            await n3.trees.build_all()
            assert (await n1.aae.exchange(whole, N3)).result == "unavailable"
        finally:
            await cluster.close()

    run(main())


def test_exchanges_over_several_ranges_repair_each_range_with_its_replicas(tmp_path: Path) -> None:
    async def main() -> None:
        ring = Ring()
        names = [NodeId(f"n{i}") for i in range(1, 6)]
        for i, name in enumerate(names):
            ring = r.join(ring, NodeInfo(name, "dc1", f"r{i % 3}"), replication=2, tokens_per_unit=3)
        cluster = await start_cluster(tmp_path, ring, replication=2)
        try:
            assert len(aae.replica_ranges(ring, 2)) > 3
            rng = random.Random(11)
            keys = [b"key-%d" % i for i in range(300)]
            for key in keys:  # each key written on one of its replicas, sometimes on both, differently
                replicas = ring.preference_list(token_for(key), 2)
                for name in rng.sample(replicas, rng.randint(1, len(replicas))):
                    await cluster.nodes[name].replica.write(key, b'"%s"' % name.encode(), None)
            expected = await merged_copies(cluster, set(keys))
            for node in cluster.all:
                op = node.aae.start_repair()
                assert op.task is not None
                await op.task
                assert op.state == "done", op.error
                assert op.progress["ranges_done"] == op.progress["ranges_total"] == len(node.aae.ranges)
            for key in keys:
                for name in ring.preference_list(token_for(key), 2):
                    assert await cluster.nodes[name].record(key) == expected[key]
            await assert_trees_match_storage(cluster)
            for node in cluster.all:
                for replica_range in node.aae.ranges.values():
                    for peer in replica_range.peers(node.id):
                        assert (await node.aae.exchange(replica_range, peer)).result == "in_sync"
        finally:
            await cluster.close()

    run(main())


# --- on-demand repair --------------------------------------------------------------------------------------


def test_a_repair_runs_every_range_with_every_peer_to_done(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = await start_cluster(tmp_path)
        try:
            keys = await diverge(cluster, random.Random(8))
            expected = await merged_copies(cluster, keys)
            n1 = cluster.nodes[N1]
            op = n1.aae.start_repair()
            assert op.kind == "repair" and op.params == {"ranges": "all"}
            assert op.task is not None
            await op.task
            assert op.state == "done", op.error
            progress = op.progress
            assert progress["ranges_done"] == progress["ranges_total"] == 1
            assert progress["exchanges"] == 2 and progress["exchanges_failed"] == 0
            assert progress["keys_repaired"] > 0 and progress["keys_compared"] > 0
            for key in keys:  # n1 with both peers: n1 has everything, each peer at least what n1 had
                assert await n1.record(key) == expected[key]
            assert all(n1.aae.range_verified_at(rid) is not None for rid in n1.aae.ranges)
            status = n1.aae.status()
            assert status["ranges"][0]["tree"] == "ready" and status["keys_pushed"] > 0
        finally:
            await cluster.close()

    run(main())


def test_a_repair_with_a_peer_down_or_an_unknown_range_fails(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = await start_cluster(tmp_path)
        try:
            n1 = cluster.nodes[N1]
            with pytest.raises(RequestError):
                n1.aae.start_repair([(1, 2)])
            n1.aae.eligible = lambda peer: peer != N3
            op = n1.aae.start_repair([whole_range(cluster).id])
            assert op.task is not None
            await op.task
            assert op.state == "failed" and op.progress["peers_skipped"] == 1
            assert op.progress["ranges_done"] == op.progress["ranges_total"] == 1
            cluster.faults[(N1, N2, "aae_hashes")] = TransportError("gone")
            n1.aae.eligible = lambda peer: True
            op = n1.aae.start_repair()
            assert op.task is not None
            await op.task
            assert op.state == "failed" and op.progress["exchanges_failed"] == 1
        finally:
            await cluster.close()

    run(main())


# --- handlers refuse garbage -------------------------------------------------------------------------------

# (infinite floats are left out: they reach a known bug, see test_a_shape_field_holding_infinity_...)
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=True, allow_infinity=False) | st.text(max_size=8) | st.binary(max_size=24))
garbage = st.recursive(scalars, lambda children: st.lists(children, max_size=5)
                       | st.dictionaries(st.text(max_size=6), children, max_size=4), max_leaves=12)


def record_frame(body: bytes) -> bytes:
    return struct.pack(">BI", 1, zlib.crc32(body)) + body


# records that pass the frame checks and hold any msgpack at all: only the record's structure is wrong
record_like = st.one_of(st.binary(max_size=40), garbage.map(lambda g: record_frame(msgpack.packb(g))))


def bodies(shape: merkle.Shape) -> st.SearchStrategy[Any]:
    """Garbage, and maps that look right with some fields wrong (to reach past the first checks)."""
    good_shape = {"lo": shape.lo, "hi": shape.hi, "leaves": shape.leaves, "fanout": shape.fanout}
    ints = st.integers(-5, shape.leaves + 5) | st.sampled_from([2**63 - 1, -(2**63), 2**64 - 1])
    odd: st.SearchStrategy[Any] = st.sampled_from(
        [1.5, -0.0, float("nan"), 1e300, "7", b"7", True, False, None, [], {}])
    maybe = garbage | ints | odd
    field_values = {
        "lo": maybe | st.just(shape.lo), "hi": maybe | st.just(shape.hi), "leaves": maybe | st.just(shape.leaves),
        "fanout": maybe | st.just(shape.fanout), "level": maybe, "max_keys": maybe,
        "nodes": garbage | st.lists(ints | odd, max_size=6), "ids": garbage | st.lists(ints | odd, max_size=6),
        "keys": garbage | st.lists(st.binary(max_size=12) | garbage, max_size=4)
        | st.lists(st.lists(st.binary(max_size=12) | garbage, min_size=2, max_size=2), max_size=4),
        "records": garbage | st.lists(st.tuples(st.binary(min_size=1, max_size=12), record_like).map(list)
                                      | garbage, max_size=3),
    }
    structured = st.fixed_dictionaries({}, optional=field_values)
    right_shape = st.fixed_dictionaries({k: st.just(v) for k, v in good_shape.items()},
                                        optional={k: v for k, v in field_values.items() if k not in good_shape})
    return st.one_of(garbage, structured, right_shape)


def test_handlers_refuse_garbage_with_ringkv_errors_only(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    try:
        cluster = loop.run_until_complete(start_cluster(tmp_path))
        node = cluster.nodes[N1]
        loop.run_until_complete(node.replica.write(b"a-key", b'"v"', None))
        shape = node.tree(whole_range(cluster)).shape
        handlers = {"hashes": node.aae.handle_hashes, "leaves": node.aae.handle_leaves,
                    "fetch": node.aae.handle_fetch, "push": node.aae.handle_push,
                    "reap_check": node.aae.handle_reap_check}

        @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(sorted(handlers)), bodies(shape))
        def throw(name: str, body: Any) -> None:
            try:
                body = wire(body)  # only what msgpack can carry reaches a handler
            except (OverflowError, TypeError, ValueError):
                return
            try:
                reply = loop.run_until_complete(handlers[name](body, "n2"))
            except RingkvError:
                return
            wire(reply)  # an answer is always something the transport can send back

        throw()
        loop.run_until_complete(cluster.close())
    finally:
        loop.close()


def test_handlers_refuse_malformed_requests_precisely(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = await start_cluster(tmp_path)
        try:
            node = cluster.nodes[N1]
            a = node.aae
            shape = node.tree(whole_range(cluster)).shape
            good = {"lo": shape.lo, "hi": shape.hi, "leaves": shape.leaves, "fanout": shape.fanout}
            levels = shape.level_sizes()
            refused: list[tuple[Callable[[Any, str], Awaitable[Any]], Any, type[RingkvError]]] = [
                (a.handle_hashes, "not a map", RequestError),
                (a.handle_hashes, {"lo": 1}, RequestError),  # shape fields missing
                (a.handle_hashes, {**good, "lo": "x"}, RequestError),
                (a.handle_hashes, {**good, "lo": 2**63}, RequestError),  # not a signed 64-bit token
                (a.handle_hashes, {**good, "leaves": 0}, RequestError),
                (a.handle_hashes, {**good, "leaves": shape.leaves * 2, "level": 0, "nodes": [0]},
                 AntiEntropyUnavailableError),  # a shape we have no tree of
                (a.handle_hashes, {**good, "lo": shape.lo + 1, "hi": shape.hi + 1, "level": 0, "nodes": [0]},
                 AntiEntropyUnavailableError),
                (a.handle_hashes, {**good, "level": len(levels), "nodes": [0]}, RequestError),
                (a.handle_hashes, {**good, "level": -1, "nodes": [0]}, RequestError),
                (a.handle_hashes, {**good, "level": True, "nodes": [0]}, RequestError),
                (a.handle_hashes, {**good, "level": 0, "nodes": [shape.leaves]}, RequestError),
                (a.handle_hashes, {**good, "level": 0, "nodes": [-1]}, RequestError),
                (a.handle_hashes, {**good, "level": 0, "nodes": [True]}, RequestError),
                (a.handle_hashes, {**good, "level": 0, "nodes": "0"}, RequestError),
                (a.handle_hashes, {**good, "level": 0, "nodes": [0] * (MAX_NODES + 1)}, RequestError),
                (a.handle_leaves, {**good, "ids": [shape.leaves], "max_keys": 10}, RequestError),
                (a.handle_leaves, {**good, "ids": [0], "max_keys": 0}, RequestError),
                (a.handle_leaves, {**good, "ids": [0], "max_keys": "many"}, RequestError),
                (a.handle_leaves, {**good, "ids": list(range(MAX_LEAVES + 1)), "max_keys": 10}, RequestError),
                (a.handle_fetch, {"keys": ["text, not bytes"]}, RequestError),
                (a.handle_fetch, {"keys": [b"k"] * (MAX_KEYS + 1)}, RequestError),
                (a.handle_fetch, [b"k"], RequestError),
                (a.handle_push, {"records": [[b"k"]]}, RequestError),
                (a.handle_push, {"records": [[b"k", "not bytes"]]}, RequestError),
                (a.handle_push, {"records": [[b"k", b"\x01garbage"]]}, RingkvError),  # InvalidRecordError
                (a.handle_push, {"records": [[b"k", b"x"]] * (MAX_KEYS + 1)}, RequestError),
                (a.handle_push, {"records": {}}, RequestError),
                (a.handle_reap_check, {"keys": [[b"k", "digest"]]}, RequestError),
                (a.handle_reap_check, {"keys": [[b"k", b"d"]] * (MAX_KEYS + 1)}, RequestError),
                (a.handle_reap_check, None, RequestError),
            ]
            for handler, body, error in refused:
                with pytest.raises(error):
                    await handler(body, "n2")
            # nothing was written by the refused pushes (a bad record refuses the whole request)
            pushed = versions.encode_record(versions.update(versions.empty_record(), None, N2, b'"v"', 1))
            with pytest.raises(RingkvError):
                await a.handle_push({"records": [[b"ok", pushed], [b"bad", b"\x01garbage"]]}, "n2")
            assert await node.keys() == set()
            # and the right requests are answered
            assert len(await a.handle_hashes({**good, "level": len(levels) - 1, "nodes": [0]}, "n2")) == 16
            assert await a.handle_leaves({**good, "ids": [], "max_keys": 1}, "n2") == []
            assert await a.handle_fetch({"keys": [b"absent"]}, "n2") == [None]
            assert await a.handle_push({"records": [[b"ok", pushed]]}, "n2") == 1
            assert await a.handle_reap_check({"keys": [[b"absent", b"x"], [b"ok", b"x"]]}, "n2") == [True, False]
        finally:
            await cluster.close()

    run(main())


def test_a_shape_field_holding_infinity_is_refused_as_a_bad_request(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = await start_cluster(tmp_path)
        try:
            a = cluster.nodes[N1].aae
            with pytest.raises(RequestError):
                await a.handle_hashes(wire({"lo": float("inf"), "hi": 0, "leaves": 1, "fanout": 2}), "n2")
        finally:
            await cluster.close()

    run(main())


def test_a_pushed_record_with_an_empty_key_does_not_split_the_tree_from_storage(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = await start_cluster(tmp_path)
        try:
            node = cluster.nodes[N1]
            record = versions.encode_record(versions.update(versions.empty_record(), None, N2, b'"v"', 1))
            with contextlib.suppress(RequestError):
                await node.aae.handle_push(wire({"records": [[b"", record]]}), "n2")
            await assert_trees_match_storage(cluster)
        finally:
            await cluster.close()

    run(main())


# --- tombstones --------------------------------------------------------------------------------------------


async def delete_everywhere(cluster: Cluster, keys: list[bytes], holders: list[Node]) -> None:
    n1 = cluster.nodes[N1]
    for key in keys:
        await n1.replica.write(key, b'"alive"', None)
        await n1.replica.write(key, None, None)
        await replicate(n1, key, *[h for h in holders if h is not n1])


def test_a_tombstone_past_its_grace_held_by_every_replica_is_reaped_everywhere(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = await start_cluster(tmp_path)
        try:
            keys = [b"dead-%d" % i for i in range(20)]
            await delete_everywhere(cluster, keys, cluster.all)
            await cluster.nodes[N1].replica.write(b"live", b'"stays"', None)
            await replicate(cluster.nodes[N1], b"live", cluster.nodes[N2], cluster.nodes[N3])
            for node in cluster.all:
                assert await node.aae.reap_once() == 0  # within the grace: kept
            cluster.clock[0] = PAST_GRACE
            own = (await cluster.nodes[N1].record(keys[0])).context.get(cluster.nodes[N1].replica.actor)
            for node in cluster.all:
                assert await node.aae.reap_once() == len(keys)
            for node in cluster.all:
                assert await node.keys() == {b"live"}
                assert not node.trees.tombstones
                assert node.aae.stats.reaped == len(keys)
            assert cluster.nodes[N1].replica.floor >= own  # the reaper's own counters survive
            assert len({node.tree(whole_range(cluster)).tree.root for node in cluster.all}) == 1
            await assert_trees_match_storage(cluster)
            assert await exchange_all(cluster, whole_range(cluster)) == ["in_sync"] * 3
        finally:
            await cluster.close()

    run(main())


def test_a_replica_holding_the_old_value_blocks_the_reap_until_an_exchange_gives_it_the_tombstone(
        tmp_path: Path) -> None:
    async def main() -> None:
        cluster = await start_cluster(tmp_path)
        try:
            n1, n2, n3 = cluster.nodes[N1], cluster.nodes[N2], cluster.nodes[N3]
            await n1.replica.write(b"k", b'"old"', None)
            await replicate(n1, b"k", n2, n3)
            await n1.replica.write(b"k", None, None)
            await replicate(n1, b"k", n2)  # n3 missed the delete
            cluster.clock[0] = PAST_GRACE
            for node in (n1, n2):
                assert await node.aae.reap_once() == 0  # n3 answers "different"
            assert versions.live_values(await n3.record(b"k")) == [b'"old"']
            assert await n1.aae.exchange(whole_range(cluster), N3) is not None
            held = await n3.record(b"k")
            assert held.versions and versions.is_deleted(held)  # the tombstone went to a replica holding the key
            assert await n1.aae.reap_once() == 1
            assert await n2.aae.reap_once() == 1
            assert await n3.aae.reap_once() == 1
            for node in cluster.all:
                assert await node.record(b"k") == versions.empty_record()
        finally:
            await cluster.close()

    run(main())


def test_a_replica_that_cannot_be_asked_blocks_the_reap(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = await start_cluster(tmp_path)
        try:
            await delete_everywhere(cluster, [b"k"], cluster.all)
            cluster.clock[0] = PAST_GRACE
            n1 = cluster.nodes[N1]
            cluster.faults[(N1, N3, "aae_reap_check")] = TransportError("timed out")
            assert await n1.aae.reap_once() == 0
            del cluster.faults[(N1, N3, "aae_reap_check")]
            n1.aae.eligible = lambda peer: peer != N2  # down: not even asked
            assert await n1.aae.reap_once() == 0
            assert (await n1.record(b"k")).versions
            n1.aae.eligible = lambda peer: True
            assert await n1.aae.reap_once() == 1
        finally:
            await cluster.close()

    run(main())


def test_a_tombstone_past_its_grace_is_not_copied_to_a_replica_that_lacks_the_key(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = await start_cluster(tmp_path)
        try:
            n1, n2, n3 = cluster.nodes[N1], cluster.nodes[N2], cluster.nodes[N3]
            await delete_everywhere(cluster, [b"old"], [n1, n2])  # n3 never heard of it
            await n1.replica.write(b"young", None, None)  # a tombstone within its grace
            cluster.clock[0] = PAST_GRACE - 10_000
            await n1.replica.write(b"young", None, None)
            cluster.clock[0] = PAST_GRACE
            whole = whole_range(cluster)
            await n1.aae.exchange(whole, N3)  # n1 pushes to n3
            await n3.aae.exchange(whole, N2)  # n3 pulls from n2
            assert await n3.record(b"old") == versions.empty_record()  # absent and deleted read the same
            young = await n3.record(b"young")
            assert young.versions and versions.is_deleted(young)  # a young tombstone is copied
            await assert_trees_match_storage(cluster)
            for node in cluster.all:
                await node.aae.reap_once()
            for node in cluster.all:  # n3 confirmed "none", so the old tombstone went everywhere
                assert await node.record(b"old") == versions.empty_record()
                young = await node.record(b"young")
                assert young.versions and versions.is_deleted(young)
        finally:
            await cluster.close()

    run(main())


def test_a_tombstone_is_never_reaped_before_its_grace(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = await start_cluster(tmp_path, build=False)
        try:
            n1, n2, n3 = cluster.nodes[N1], cluster.nodes[N2], cluster.nodes[N3]
            for node in (n2, n3):
                await node.trees.build_all()
            await n1.replica.write(b"k", None, None)  # deleted at T0
            original = n1.replica.scan_range_entries

            async def racing(lo: int, hi: int, cursor: bytes | None, limit: int,
                             ) -> tuple[list[tuple[bytes, bytes | None, int]], bytes | None]:
                result = await original(lo, hi, cursor, limit)
                if cluster.clock[0] == T0:  # deleted again, much later, while the first batch is read
                    cluster.clock[0] = T0 + int(GRACE_S * 1000) // 2
                    await n1.replica.write(b"k", None, None)
                return result

            n1.replica.scan_range_entries = racing  # type: ignore[method-assign, assignment]
            await n1.trees.build_all()
            await replicate(n1, b"k", n2, n3)  # every replica holds the newest tombstone
            deleted_at = versions.deleted_at(await n1.record(b"k"))
            assert deleted_at == T0 + int(GRACE_S * 1000) // 2
            cluster.clock[0] = PAST_GRACE  # past the grace of the first delete, not of the second
            assert not aae.past_grace(deleted_at, cluster.clock[0], GRACE_S)
            assert await n1.aae.reap_once() == 0
            kept = await n1.record(b"k")
            assert kept.versions and versions.is_deleted(kept)  # still within its grace: must be kept
        finally:
            await cluster.close()

    run(main())


def test_the_reaper_skips_keys_rewritten_since_they_were_registered(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = await start_cluster(tmp_path)
        try:
            n1 = cluster.nodes[N1]
            await delete_everywhere(cluster, [b"k"], cluster.all)
            n1.trees.tombstones[b"ghost"] = T0  # a stale entry (a key no longer deleted, or gone)
            await n1.replica.write(b"live", b'"x"', None)
            n1.trees.tombstones[b"live"] = T0
            cluster.clock[0] = PAST_GRACE
            assert await n1.aae.reap_once() == 1  # only the real tombstone
            assert b"ghost" not in n1.trees.tombstones and b"live" not in n1.trees.tombstones
            assert versions.live_values(await n1.record(b"live")) == [b'"x"']
            raw = await n1.replica.engine.get(storage_key(b"k"))
            assert raw is None
        finally:
            await cluster.close()

    run(main())


def test_temporary_trees_held_for_peers_are_bounded(tmp_path: Path) -> None:
    # Every aae_prepare of a new range kept a tree until its aae_release: a peer that died in between (or one
    # asking for range after range) grew this node's memory without bound (found by tests/fuzz).
    async def main() -> None:
        cluster = await start_cluster(tmp_path)
        try:
            node = cluster.nodes[N1]
            ranges = [(i * 1000, i * 1000 + 999) for i in range(MAX_PREPARED + 8)]
            for lo, hi in ranges:
                shape = await node.aae.handle_prepare({"lo": lo, "hi": hi}, "n2")
                assert shape["leaves"] >= 16
            assert len(node.trees.extras) == MAX_PREPARED
            assert set(node.trees.extras) == set(ranges[-MAX_PREPARED:])  # the oldest went
            target = node.trees.get(*ranges[-1])
            assert target is not None and target.ready
            # the one asked for again is the newest: it stays when more come
            await node.aae.handle_prepare({"lo": ranges[-MAX_PREPARED][0], "hi": ranges[-MAX_PREPARED][1]}, "n2")
            await node.aae.handle_prepare({"lo": 10**9, "hi": 10**9 + 1}, "n2")
            assert ranges[-MAX_PREPARED] in node.trees.extras and ranges[-MAX_PREPARED + 1] not in node.trees.extras
            for lo, hi in list(node.trees.extras):
                assert await node.aae.handle_release({"lo": lo, "hi": hi}, "n2") is True
            assert node.trees.extras == {}
        finally:
            await cluster.close()

    run(main())


@pytest.mark.parametrize("reply", [5, None, "hashes", [b"x"]])
def test_a_hashes_reply_that_is_not_bin_fails_the_exchange(tmp_path: Path, reply: Any) -> None:
    # Its error message took len() of the reply: TypeError, out of the exchange, for anything without a length.
    async def main() -> None:
        cluster = await start_cluster(tmp_path)
        try:
            node = cluster.nodes[N1]

            async def call(peer: NodeId, method: str, body: dict[str, Any], timeout: float) -> Any:  # noqa: ASYNC109
                return reply

            node.aae.call = call
            result = await node.aae.exchange(whole_range(cluster), N2)
            assert result.result == "failed" and "aae_hashes" in result.error
        finally:
            await cluster.close()

    run(main())
