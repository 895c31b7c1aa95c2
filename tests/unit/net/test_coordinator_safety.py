"""Coordinator defects that lost or duplicated acknowledged writes (issue 9), each shown on the in-process
cluster of `test_coordinator`: quorums never lowered, at-most-once forwarding with nested deadlines, only
replicas acknowledge, owed replication survives a stop, one corrupt record does not block hint delivery."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from pathlib import Path
from typing import Any

import pytest

from ringkv.cluster import versions
from ringkv.cluster.ids import NodeId
from ringkv.cluster.ring import NodeInfo, Ring
from ringkv.errors import QuorumUnavailableError
from ringkv.replica import storage_key
from tests.unit.net.test_coordinator import SETTINGS, cluster_of, coordinated_by, key_where, run, until


def test_quorums_are_never_lowered_when_the_ring_is_smaller_than_asked(tmp_path: Path) -> None:
    # Defect 0: a restarted node whose ring held only itself turned W=2 and R=2 into 1 and acknowledged alone.
    async def main() -> None:
        async with cluster_of(3, tmp_path) as cluster:
            lonely = cluster[NodeId("n0")].coordinator
            lonely.ring = Ring({NodeInfo(NodeId("n0")): Ring.tokens_of(cluster.ring, NodeId("n0"))})
            with pytest.raises(QuorumUnavailableError) as put_error:
                await lonely.put(b"k", b"v", None, w=2)
            assert put_error.value.details() == {"required": 2, "acknowledged": 0}
            with pytest.raises(QuorumUnavailableError):
                await lonely.put(b"k", b"v", None, w=None)  # the default W=2 is not lowered either
            with pytest.raises(QuorumUnavailableError):
                await lonely.get(b"k", r=2)
            assert await cluster[NodeId("n0")].replica.read(b"k") == versions.empty_record()  # nothing applied
            assert versions.live_values(await lonely.put(b"k", b"v", None, w=1)) == [b"v"]  # W=1 is honest

    run(main())


def _delayed(handler: Any, delay_s: float) -> Any:
    async def slow(body: Any, peer: str) -> Any:
        await asyncio.sleep(delay_s)  # the fault under test: a slow peer
        return await handler(body, peer)

    return slow


def _held(server: Any, method: str) -> asyncio.Event:
    """Make `server` answer `method` only once the returned event is set (a paused or stuck peer)."""
    gate = asyncio.Event()
    handler = server.handlers[method]

    async def held(body: Any, peer: str) -> Any:
        await gate.wait()
        return await handler(body, peer)

    server.handlers[method] = held
    return gate


def _outside(cluster: Any) -> tuple[NodeId, bytes, tuple[NodeId, ...]]:
    """n3 of a 4-node cluster, a key it is not a replica of, and that key's preference list."""
    outsider = NodeId("n3")
    key = key_where(cluster, lambda pref: outsider not in pref)
    return outsider, key, cluster.preference(key)


def test_a_slow_replica_does_not_make_a_forwarded_write_apply_twice(tmp_path: Path) -> None:
    # Defect 4: the forwarder gave up after one request timeout while the coordinator waited two for W (a
    # failed replica, then its hinted fallback), and re-sent the write to the next replica: two siblings.
    async def main() -> None:
        async with cluster_of(4, tmp_path) as cluster:
            outsider, key, (first, second, third) = _outside(cluster)
            for node in (second, third):  # both other replicas answer only after the request timeout
                server = cluster[node].server
                server.handlers["replicate"] = _delayed(server.handlers["replicate"], SETTINGS.timeout_s * 1.2)
            record = await cluster[outsider].coordinator.put(key, b"once", None, w=2)
            assert coordinated_by(record) == {first}
            assert cluster[outsider].coordinator.stats.forward_retries == 0

            for node in (first, second, third):
                await until(functools.partial(cluster[node].holds, key, record), f"{node} holds the write")
            read = await cluster[first].coordinator.get(key, r=3)
            assert [v.dot.node for v in read.versions] == [first]

    run(main())


def test_a_forward_that_may_have_been_delivered_is_not_sent_to_a_second_coordinator(tmp_path: Path) -> None:
    # Defect 4: a write forwarded to a coordinator that was slow (or cut off after the request left) was
    # retried on the next replica and so applied by two coordinators.
    async def main() -> None:
        async with cluster_of(4, tmp_path) as cluster:
            outsider, key, (first, second, _) = _outside(cluster)
            entry = cluster[outsider].coordinator
            server = cluster[first].server
            slow_by = SETTINGS.write_budget_s + SETTINGS.timeout_s + 0.5  # past the forwarder's deadline
            server.handlers["coordinate"] = _delayed(server.handlers["coordinate"], slow_by)
            with pytest.raises(QuorumUnavailableError):
                await entry.put(key, b"maybe", None, w=2)
            assert entry.stats.forward_retries == 0

            async def applied_by_first() -> bool:
                return bool((await cluster[first].replica.read(key)).versions)

            await until(applied_by_first, "the slow coordinator applied it", timeout_s=slow_by + 5)
            for node in cluster.members:  # one coordinator, one version, anywhere
                assert coordinated_by(await cluster[node].replica.read(key)) <= {first}
            assert not coordinated_by(await cluster[second].replica.read(key)) - {first}

    run(main())


def test_a_forwarded_write_reaching_a_non_replica_is_refused_and_rerouted(tmp_path: Path) -> None:
    # Defect 7: with diverged ring views the receiver counted its own write as an acknowledgement although it
    # was not a replica ("w=2 acknowledged" with one real replica holding it).
    async def main() -> None:
        async with cluster_of(4, tmp_path) as cluster:
            outsider, key, (first, second, third) = _outside(cluster)
            # `first` believes it left the ring: in its own view it replicates nothing
            stale = cluster[first].coordinator
            stale.ring = Ring({info: toks for info, toks in cluster.ring.assignments().items()
                               if info.node_id != first})
            stale.ring_digest = "diverged"
            record = await cluster[outsider].coordinator.put(key, b"v", None, w=2)
            assert coordinated_by(record) == {second}  # re-routed: the next replica coordinated
            assert stale.stats.not_replica_refusals == 1
            assert stale.stats.ring_mismatches >= 1  # the diverged view was noticed
            assert cluster[outsider].coordinator.stats.forward_retries == 1
            for node in (second, third):
                await until(functools.partial(cluster[node].holds, key, record), f"{node} holds the write")

    run(main())


def test_stop_keeps_replication_still_owed_as_hints(tmp_path: Path) -> None:
    # Defect 6: stop() cancelled background replication without keeping hints, so a w=1 write acknowledged
    # just before a shutdown stayed on one node.
    async def main() -> None:
        async with cluster_of(3, tmp_path) as cluster:
            key = b"owed"
            first, second, third = cluster.preference(key)
            gates = [_held(cluster[node].server, "replicate") for node in (second, third)]  # they never answer
            coordinator = cluster[first].coordinator
            await coordinator.put(key, b"v", None, w=1)
            await coordinator.stop(drain_s=0.2)
            assert cluster[first].hints.pending == {second: 1, third: 1}
            assert coordinator.stats.hints_kept_at_shutdown == 2
            for gate in gates:
                gate.set()

    run(main())


def test_one_corrupt_record_does_not_block_hint_delivery(tmp_path: Path) -> None:
    # Defect 5: the target's corrupt local record made merge_in raise, delivery stopped at that hint, and
    # every other hint for the node waited forever.
    async def main() -> None:
        async with cluster_of(3, tmp_path) as cluster:
            holder, target = cluster[NodeId("n0")], NodeId("n1")
            records = [versions.update(versions.empty_record(), None, NodeId("n0"), b"v%d" % i, 1) for i in range(4)]
            # the first hinted key is corrupt there
            await cluster[target].engine.put(storage_key(b"key-0"), b"\x01garbage")
            for i, record in enumerate(records):
                await holder.hints.store(target, b"key-%d" % i, versions.encode_record(record))
            assert await holder.coordinator.deliver_hints() == 4
            assert holder.hints.pending == {}
            for i, record in enumerate(records):  # the corrupt record was replaced by what the hint carried
                assert await cluster[target].holds(b"key-%d" % i, record)
            assert cluster[target].replica.quarantine.count == 1

    run(main())


# -- availability while one node is sick (issue 10) ---------------------------------------------------------


def test_any_replica_coordinates_a_write_it_receives(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster_of(3, tmp_path) as cluster:
            key = b"mine"
            _, second, _ = cluster.preference(key)
            record = await cluster[second].coordinator.put(key, b"v", None, w=2)
            assert coordinated_by(record) == {second}
            assert cluster[second].coordinator.stats.forwarded == 0

    run(main())


def test_a_silent_replica_gets_no_more_forwards_long_before_gossip_convicts_it(tmp_path: Path) -> None:
    # A paused first replica held every forwarded write for the whole timeout (and gossip takes seconds to
    # judge it down): throughput fell to a few writes a second while one node of five was sick.
    async def main() -> None:
        async with cluster_of(4, tmp_path) as cluster:
            outsider, key, (first, second, _) = _outside(cluster)
            entry = cluster[outsider].coordinator
            gate = _held(cluster[first].server, "coordinate")  # SIGSTOPped: it answers nothing
            stuck = asyncio.create_task(entry.put(key, b"in flight at the pause", None, w=2))
            await until(lambda: _true(entry.silent(first)), "the first replica is seen silent", timeout_s=2.0)
            started = asyncio.get_running_loop().time()
            record = await entry.put(key, b"after", None, w=2)
            assert asyncio.get_running_loop().time() - started < 0.5
            assert coordinated_by(record) == {second}
            gate.set()
            with contextlib.suppress(QuorumUnavailableError):
                await stuck

    run(main())


async def _true(value: bool) -> bool:
    return value


def test_a_write_in_flight_when_the_node_stops_is_kept_as_hints(tmp_path: Path) -> None:
    # Review finding: stop() did not wait for writes that had passed its check, and what a write owed was only
    # registered once its background task first ran: a w=1 write acknowledged during stop kept no hints.
    async def main() -> None:
        async with cluster_of(3, tmp_path) as cluster:
            key = b"late"
            first, second, third = cluster.preference(key)
            for node in (second, third):  # replication cannot finish before the stop
                _held(cluster[node].server, "replicate")
            member = cluster[first]
            gate, entered = asyncio.Event(), asyncio.Event()
            original = member.replica.write

            async def slow_write(*args: Any) -> Any:
                entered.set()
                await gate.wait()
                return await original(*args)

            member.replica.write = slow_write  # type: ignore[method-assign]
            put = asyncio.create_task(member.coordinator.put(key, b"v", None, w=1))
            await entered.wait()
            stopping = asyncio.create_task(member.coordinator.stop(drain_s=1.0))
            for _ in range(5):
                await asyncio.sleep(0)
            gate.set()
            assert versions.live_values(await put) == [b"v"]  # acknowledged...
            await stopping
            assert member.hints.pending == {second: 1, third: 1}  # ...and owed to both others as hints

    run(main())
