"""The coordinator in a small in-process cluster: a real engine, replica, hint store and transport server per
node on loopback, one ring, and liveness (`is_up`) decided by the test.

Replication past the W acknowledgements, read repair and hint delivery to fallbacks go on in the background,
so tests wait for their effects with a deadline."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ringkv.cluster import ringview, versions
from ringkv.cluster.ids import NodeId
from ringkv.cluster.ring import NodeInfo, Ring, join, token_for
from ringkv.cluster.versions import Record
from ringkv.errors import QuorumUnavailableError, RequestError
from ringkv.net.coordinator import Coordinator, QuorumSettings
from ringkv.net.hints import HintStore
from ringkv.net.transport import Peers, TransportServer
from ringkv.replica import Replica, storage_key
from ringkv.storage.aio import AsyncEngine
from ringkv.storage.engine import EngineOptions
from ringkv.storage.wal import Durability

T = TypeVar("T")
HOST = "127.0.0.1"
CLUSTER = "coordinator-test"
SETTINGS = QuorumSettings(replication=3, read_quorum=2, write_quorum=2, timeout_s=1.0)
WAIT_S = 5.0
HINT_WINDOW_S = 3600.0


def run(coro: Coroutine[Any, Any, T], limit_s: float = 20.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit_s):
            return await coro

    return asyncio.run(bounded())


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = WAIT_S) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not await condition():  # noqa: ASYNC110 -- background work offers no event to wait on
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s}s: {what}") from None


@functools.cache
def ring_of(size: int) -> Ring:
    ring = Ring()
    for i in range(size):
        ring = join(ring, NodeInfo(NodeId(f"n{i}")))
    return ring


@dataclass
class Member:
    id: NodeId
    engine: AsyncEngine
    replica: Replica
    hints: HintStore
    peers: Peers
    coordinator: Coordinator
    server: TransportServer
    port: int

    async def holds(self, key: bytes, record: Record) -> bool:
        """Whether this replica's record for `key` contains everything `record` has."""
        return versions.descends(await self.replica.read(key), record)


class Cluster:
    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self.up: dict[NodeId, bool] = {}
        self.down_for_s: dict[NodeId, float] = {}  # how long gossip has judged a node down
        self.members: dict[NodeId, Member] = {}
        self.hint_clock_skew_ms = 0  # added to the wall clock of every hint store

    def __getitem__(self, node: NodeId) -> Member:
        return self.members[node]

    def preference(self, key: bytes) -> tuple[NodeId, ...]:
        return next(iter(self.members.values())).coordinator.preference(key)

    async def add(self, node: NodeId, root: Path) -> None:
        options = EngineOptions(durability=Durability.OFF)
        engine = await AsyncEngine.open(str(root / node / "data"), options)
        hints = HintStore(await AsyncEngine.open(str(root / node / "hints"), options), 1 << 20, HINT_WINDOW_S,
                          clock_ms=lambda: time.time_ns() // 1_000_000 + self.hint_clock_skew_ms)
        replica = Replica(engine, node)
        peers = Peers(CLUSTER, node)
        coordinator = Coordinator(node, replica, peers, hints, SETTINGS, lambda n: self.up[n],
                                  lambda n: (HOST, self.members[n].port) if n in self.members else None,
                                  down_for=lambda n: self.down_for_s.get(n, 0.0))
        coordinator.ring = self.ring
        coordinator.ring_digest = ringview.digest(self.ring)
        server = TransportServer(CLUSTER, node, {
            "coordinate": coordinator.handle_coordinate, "replicate": coordinator.handle_replicate,
            "read": coordinator.handle_read, "store_hint": coordinator.handle_store_hint,
        })
        port = await server.start(HOST, 0)
        self.members[node] = Member(node, engine, replica, hints, peers, coordinator, server, port)
        self.up[node] = True

    async def take_down(self, node: NodeId) -> None:
        """Gossip judges it down and it stops answering."""
        self.up[node] = False
        await self[node].server.stop()

    async def restart_server(self, node: NodeId) -> None:
        await self[node].server.start(HOST, self[node].port)

    async def close(self) -> None:
        for member in self.members.values():
            await member.coordinator.stop()
            await member.server.stop()
            await member.peers.close()
        for member in self.members.values():
            await member.engine.close()
            await member.hints.engine.close()


@asynccontextmanager
async def cluster_of(size: int, root: Path) -> AsyncIterator[Cluster]:
    cluster = Cluster(ring_of(size))
    try:
        for node in sorted(cluster.ring.nodes):
            await cluster.add(node, root)
        yield cluster
    finally:
        await cluster.close()


def key_where(cluster: Cluster, wanted: Callable[[tuple[NodeId, ...]], bool]) -> bytes:
    for i in range(10_000):
        key = b"key-%d" % i
        if wanted(cluster.preference(key)):
            return key
    raise AssertionError("no such key")


def coordinated_by(record: Record) -> set[str]:
    return {v.dot.node for v in record.versions}


# -- writes -------------------------------------------------------------------------------------------------


def test_a_put_with_w2_reaches_all_three_replicas(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster_of(3, tmp_path) as cluster:
            key = b"hello"
            pref = cluster.preference(key)
            assert sorted(pref) == ["n0", "n1", "n2"]
            record = await cluster[pref[0]].coordinator.put(key, b"world", None, w=2)
            assert versions.live_values(record) == [b"world"]
            assert coordinated_by(record) == {pref[0]}
            durable = [await cluster[n].holds(key, record) for n in pref]
            assert sum(durable) >= 2  # W acknowledgements before the answer
            for node in pref:
                await until(functools.partial(cluster[node].holds, key, record), f"{node} holds the write")

    run(main())


def test_w2_with_one_replica_down_succeeds_and_keeps_a_hint_for_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster_of(3, tmp_path) as cluster:
            key = b"k"
            first, second, down = cluster.preference(key)
            await cluster.take_down(down)
            coordinator = cluster[first].coordinator
            record = await coordinator.put(key, b"v", None, w=2)

            async def hinted() -> bool:
                return cluster[first].hints.pending.get(down) == 1

            await until(hinted, "a hint for the down replica")  # no node outside the list: kept locally
            assert coordinator.stats.hints_kept_locally == 1
            assert coordinator.stats.hints_sent_to_fallbacks == 0
            await until(functools.partial(cluster[second].holds, key, record), "the live replica holds it")
            assert await cluster[down].replica.read(key) == versions.empty_record()

            # delivery waits for gossip to say the target is up...
            await cluster.restart_server(down)
            assert await coordinator.deliver_hints() == 0
            assert cluster[first].hints.pending == {down: 1}
            # ...and a target judged up that does not answer keeps its hints
            await cluster[down].server.stop()
            cluster.up[down] = True
            assert await coordinator.deliver_hints() == 0
            assert cluster[first].hints.pending == {down: 1}

            await cluster.restart_server(down)
            assert await coordinator.deliver_hints() == 1
            assert await cluster[down].holds(key, record)
            assert cluster[first].hints.pending == {}
            assert cluster[first].hints.delivered == 1
            assert await cluster[first].hints.batch(down) == []

    run(main())


def test_w3_with_one_replica_down_is_quorum_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster_of(3, tmp_path) as cluster:
            key = b"k"
            first, second, down = cluster.preference(key)
            await cluster.take_down(down)
            start = time.monotonic()
            with pytest.raises(QuorumUnavailableError) as caught:
                await cluster[first].coordinator.put(key, b"v", None, w=3)
            assert caught.value.required == 3
            # The answer comes as soon as W is out of reach: the down replica fails at once, so the live one's
            # ack may or may not be in yet. The coordinator's own always is.
            assert caught.value.acknowledged in (1, 2)
            assert time.monotonic() - start < SETTINGS.timeout_s  # known impossible at once, no waiting
            assert cluster[first].coordinator.stats.quorum_failures == 1
            record = await cluster[first].replica.read(key)
            await until(functools.partial(cluster[second].holds, key, record), "the write still reached the other")

            # the same answer when another replica coordinates it (any replica does, without a forward)
            with pytest.raises(QuorumUnavailableError) as caught:
                await cluster[second].coordinator.put(key, b"v", None, w=3)
            assert caught.value.required == 3 and caught.value.acknowledged in (1, 2)
            assert cluster[second].coordinator.stats.forwarded == 0

    run(main())


def test_sloppy_quorum_a_fallback_takes_a_hint_that_counts_toward_w(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster_of(4, tmp_path) as cluster:
            key = b"k"
            first, second, down = cluster.preference(key)
            (fallback,) = set(cluster.members) - {first, second, down}
            await cluster.take_down(down)
            coordinator = cluster[first].coordinator
            record = await coordinator.put(key, b"v", None, w=3)  # first + second + the fallback's hint
            assert cluster[fallback].hints.pending == {down: 1}  # durable before it counted
            assert coordinator.stats.hints_sent_to_fallbacks == 1
            assert coordinator.stats.hints_kept_locally == 0
            assert cluster[first].hints.pending == {}
            assert await cluster[fallback].replica.read(key) == versions.empty_record()  # a hint, not a replica

            await cluster.restart_server(down)
            cluster.up[down] = True
            assert await cluster[fallback].coordinator.deliver_hints() == 1
            assert await cluster[down].holds(key, record)
            assert cluster[fallback].hints.pending == {}

    run(main())


def test_invalid_quorums_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster_of(3, tmp_path) as cluster:
            coordinator = cluster[NodeId("n0")].coordinator
            for w in (0, 4):
                with pytest.raises(RequestError) as caught:
                    await coordinator.put(b"k", b"v", None, w=w)
                assert caught.value.code == "invalid_quorum"
            with pytest.raises(RequestError):
                await coordinator.get(b"k", r=0)

    run(main())


def test_a_non_replica_forwards_the_write_to_the_first_live_replica(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster_of(4, tmp_path) as cluster:
            outsider = NodeId("n3")
            key = key_where(cluster, lambda pref: outsider not in pref)
            first, second, _ = cluster.preference(key)
            entry = cluster[outsider].coordinator

            record = await entry.put(key, b"v1", None, w=2)
            assert entry.stats.forwarded == 1
            assert coordinated_by(record) == {first}
            assert await cluster[first].holds(key, record)
            assert await cluster[outsider].replica.read(key) == versions.empty_record()

            cluster.up[first] = False  # judged down: skipped
            record = await entry.put(key, b"v2", versions.read_context(record), w=2)
            assert entry.stats.forwarded == 2
            assert coordinated_by(record) == {second}

            cluster.up[first] = True  # judged up but not answering (connection refused): the next live one
            await cluster[first].server.stop()  # takes it, as the write certainly never reached `first`
            await entry.peers.close()  # (over the old connection it might have: see the at-most-once tests)
            record = await entry.put(key, b"v3", versions.read_context(record), w=2)
            assert entry.stats.forwarded == 4
            assert coordinated_by(record) == {second}
            assert versions.live_values(record) == [b"v3"]

    run(main())


# -- reads --------------------------------------------------------------------------------------------------


def test_a_get_with_r2_merges_the_replies(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster_of(3, tmp_path) as cluster:
            key = b"k"
            first, second, down = cluster.preference(key)
            await cluster[first].replica.write(key, b"left", None)  # two concurrent writes, one per replica
            await cluster[second].replica.write(key, b"right", None)
            await cluster.take_down(down)
            merged = await cluster[first].coordinator.get(key, r=2)
            assert sorted(versions.live_values(merged)) == [b"left", b"right"]
            assert coordinated_by(merged) == {first, second}

            with pytest.raises(QuorumUnavailableError) as caught:
                await cluster[first].coordinator.get(key, r=3)
            assert caught.value.required == 3 and caught.value.acknowledged in (1, 2)  # replies in when it gave up

    run(main())


def test_read_repair_fixes_stale_replicas(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster_of(3, tmp_path) as cluster:
            for stale_index in (2, 0):  # a remote replica, then the coordinator's own
                key = b"k%d" % stale_index
                pref = cluster.preference(key)
                entry, stale = cluster[pref[0]], cluster[pref[stale_index]]
                old = await entry.coordinator.put(key, b"old", None, w=3)
                new = await entry.coordinator.put(key, b"new", versions.read_context(old), w=3)
                for node in pref:
                    await until(functools.partial(cluster[node].holds, key, new), f"{node} holds the write")
                # this replica missed the second write
                await stale.engine.put(storage_key(key), versions.encode_record(old))
                assert not await stale.holds(key, new)

                repairs = entry.coordinator.stats.read_repairs
                # an R=2 read asks the entry node and one other; asking all three (as the sampled
                # `read_repair_chance` of reads do) reaches a stale replica it would skip
                entry.coordinator.settings = dataclasses.replace(SETTINGS, read_repair_chance=1.0)
                merged = await entry.coordinator.get(key, r=2)
                assert versions.live_values(merged) == [b"new"]
                await until(functools.partial(stale.holds, key, new), f"{stale.id} repaired")
                assert entry.coordinator.stats.read_repairs == repairs + 1

    run(main())


def _count_reads(cluster: Cluster, delay_s: dict[NodeId, float] | None = None) -> dict[NodeId, int]:
    """Count (and optionally delay) the internode reads each member serves."""
    counts = {n: 0 for n in cluster.members}
    for node, member in cluster.members.items():
        real = member.server.handlers["read"]

        async def counting(body: Any, peer: str, node: NodeId = node, real: Any = real) -> Any:
            counts[node] += 1
            if delay_s and node in delay_s:
                await asyncio.sleep(delay_s[node])
            return await real(body, peer)

        member.server.handlers["read"] = counting
    return counts


def test_a_read_asks_r_replicas_this_node_first(tmp_path: Path) -> None:
    """R=2 of N=3: the coordinating replica reads its own record and asks one other node, not both."""
    async def main() -> None:
        async with cluster_of(3, tmp_path) as cluster:
            key = b"k"
            pref = cluster.preference(key)
            await cluster[pref[0]].coordinator.put(key, b"v", None, w=3)
            entry = cluster[pref[1]].coordinator
            entry.settings = dataclasses.replace(SETTINGS, read_repair_chance=0.0)
            counts = _count_reads(cluster)
            for _ in range(5):
                assert versions.live_values(await entry.get(key, r=2)) == [b"v"]
            assert counts[pref[1]] == 0  # its own record: no internode read
            assert sorted(counts[n] for n in pref if n != pref[1]) == [0, 5]  # the same healthy peer each time
            assert entry.stats.speculative_reads == entry.stats.read_retries == 0

    run(main())


def test_a_failed_read_asks_a_spare_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster_of(3, tmp_path) as cluster:
            key = b"k"
            pref = cluster.preference(key)
            await cluster[pref[0]].coordinator.put(key, b"v", None, w=3)
            entry = cluster[pref[0]].coordinator
            entry.settings = dataclasses.replace(SETTINGS, read_repair_chance=0.0, speculate_after_s=0.0)
            await cluster[pref[1]].server.stop()  # not answering, yet still up by gossip
            started = time.monotonic()
            assert versions.live_values(await entry.get(key, r=2)) == [b"v"]
            assert time.monotonic() - started < SETTINGS.timeout_s / 2  # no wait for a timeout
            assert entry.stats.read_retries == 1

    run(main())


def test_a_late_read_is_answered_by_a_speculative_spare(tmp_path: Path) -> None:
    """A replica that answers slowly costs a read the speculation delay, not its slowness."""
    async def main() -> None:
        async with cluster_of(3, tmp_path) as cluster:
            key = b"k"
            pref = cluster.preference(key)
            await cluster[pref[0]].coordinator.put(key, b"v", None, w=3)
            entry = cluster[pref[0]].coordinator
            entry.settings = dataclasses.replace(SETTINGS, read_repair_chance=0.0, speculate_after_s=0.05)
            counts = _count_reads(cluster, delay_s={pref[1]: 0.8})  # the peer asked first answers late
            started = time.monotonic()
            assert versions.live_values(await entry.get(key, r=2)) == [b"v"]
            assert time.monotonic() - started < 0.5
            assert entry.stats.speculative_reads == 1 and counts == {pref[0]: 0, pref[1]: 1, pref[2]: 1}

    run(main())


# -- hinted handoff -----------------------------------------------------------------------------------------


def test_concurrent_delivery_passes_deliver_each_hint_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster_of(3, tmp_path) as cluster:
            holder, target = cluster[NodeId("n0")], NodeId("n1")
            records = [versions.update(versions.empty_record(), None, NodeId("n0"), b"v%d" % i, 1) for i in range(5)]
            for i, record in enumerate(records):
                await holder.hints.store(target, b"key-%d" % i, versions.encode_record(record))
            # the periodic loop and an up-transition may both start a pass
            counts = await asyncio.gather(holder.coordinator.deliver_hints(), holder.coordinator.deliver_hints())
            assert sum(counts) == 5
            assert holder.hints.delivered == 5
            assert holder.hints.pending == {}
            for i, record in enumerate(records):
                assert await cluster[target].holds(b"key-%d" % i, record)

    run(main())


def test_hints_for_a_node_that_stays_down_expire_and_free_their_space(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster_of(3, tmp_path) as cluster:
            holder, gone = cluster[NodeId("n0")], NodeId("n2")
            await cluster.take_down(gone)
            record = versions.encode_record(versions.update(versions.empty_record(), None, holder.id, b"v", 1))
            for i in range(3):
                await holder.hints.store(gone, b"key-%d" % i, record)
            cluster.down_for_s[gone] = HINT_WINDOW_S - 1
            assert await holder.coordinator.deliver_hints() == 0
            assert holder.hints.pending == {gone: 3}  # within the window: kept for when it returns

            cluster.down_for_s[gone] = HINT_WINDOW_S + 1  # down longer than the window
            assert await holder.coordinator.deliver_hints() == 0
            assert holder.hints.pending == {}  # past the window: anti-entropy's job now
            assert (holder.hints.dropped, holder.hints.bytes) == (3, 0)
            assert await holder.hints.batch(gone) == []

    run(main())


def test_a_write_whose_ring_changes_during_its_local_write_reaches_the_new_replica(tmp_path: Path) -> None:
    """The coordinator's ring takes a joiner in while the local write is awaited: the write must still reach
    the key's replicas on the new ring (it was once sent to the old preference list only, and the joiner
    never got it: a write acknowledged by W old replicas, one of which no longer replicates the key)."""
    async def main() -> None:
        async with cluster_of(3, tmp_path) as cluster:
            await cluster.add(NodeId("n3"), tmp_path)  # a member, not yet in the ring
            bigger = ring_of(4)
            coordinator = NodeId("n0")
            key = next(b"flip-%d" % i for i in range(10_000)
                       if coordinator in cluster.preference(b"flip-%d" % i)
                       and coordinator in bigger.preference_list(token_for(b"flip-%d" % i), 3)
                       and "n3" in bigger.preference_list(token_for(b"flip-%d" % i), 3))
            replica = cluster[coordinator].replica
            original = replica.write

            async def write_then_flip(k: bytes, value: bytes | None, context: Any) -> Record:
                record = await original(k, value, context)
                for member in cluster.members.values():  # the joiner turned normal meanwhile
                    member.coordinator.ring = bigger
                    member.coordinator.ring_digest = ringview.digest(bigger)
                return record

            replica.write = write_then_flip  # type: ignore[method-assign,assignment]
            record = await cluster[coordinator].coordinator.put(key, b"v", None, w=2)
            await until(functools.partial(cluster[NodeId("n3")].holds, key, record), "the new replica n3 holds it")

    run(main())
