"""Gossip between real Gossipers over loopback: convergence from seeds, failure detection of a stopped node,
recovery of a restarted one, membership-change callbacks, and a foreign cluster kept out.

Gossip is periodic (every 50 ms here), so tests wait for conditions with a deadline."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from ringkv.cluster.failure_detector import PhiAccrualFailureDetector, PhiConfig
from ringkv.cluster.ids import NodeId
from ringkv.cluster.membership import Membership, MemberState, Status
from ringkv.errors import RequestError
from ringkv.net.gossip import Gossiper
from ringkv.net.transport import Peers, TransportServer

T = TypeVar("T")
HOST = "127.0.0.1"
CLUSTER = "gossip-test"
INTERVAL_S = 0.05
# A detector tuned to the 50 ms interval: convicts after roughly half a second of silence.
PHI = PhiConfig(first_heartbeat_estimate_s=INTERVAL_S, min_std_dev_s=0.05, acceptable_pause_s=0.5,
                max_interval_s=1.0)
CONVERGE_S = 5.0
A, B, C = NodeId("a"), NodeId("b"), NodeId("c")


def run(coro: Coroutine[Any, Any, T], limit_s: float = 20.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit_s):
            return await coro

    return asyncio.run(bounded())


async def until(condition: Callable[[], bool], what: str, timeout_s: float = CONVERGE_S) -> float:
    """Wait for `condition` (polled: gossip is periodic); returns how long it took."""
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            while not condition():  # noqa: ASYNC110 -- gossip is periodic: poll for its effects
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s}s: {what}") from None
    return time.monotonic() - start


@dataclass
class Node:
    membership: Membership
    gossiper: Gossiper
    server: TransportServer
    peers: Peers
    port: int
    task: asyncio.Task[None]
    changes: list[int] = field(default_factory=list)
    transitions: list[tuple[NodeId, bool]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def id(self) -> NodeId:
        return self.membership.local_id

    def knows(self, *nodes: Node) -> bool:
        return all(n.id in self.membership.members for n in nodes)

    def sees_up(self, *nodes: Node) -> bool:
        return all(self.gossiper.is_up(n.id) for n in nodes)


async def start(node_id: NodeId, generation: int, seeds: list[int], cluster: str = CLUSTER,
                tokens: tuple[int, ...] = ()) -> Node:
    local = MemberState(node_id=node_id, generation=generation, version=0, status=Status.NORMAL, host=HOST,
                        http_port=8000, peer_port=0, tokens=tokens)
    membership = Membership(local)
    peers = Peers(cluster, node_id)
    changes: list[int] = []
    transitions: list[tuple[NodeId, bool]] = []
    refused: list[str] = []
    gossiper = Gossiper(
        membership, peers, [(HOST, port) for port in seeds], interval_s=INTERVAL_S,
        on_members_changed=lambda: changes.append(len(changes)),
        on_transition=lambda node, up: transitions.append((node, up)),
        rng=random.Random(f"{node_id}/{generation}"), phi_config=PHI,
    )
    server = TransportServer(cluster, node_id, {"gossip": gossiper.handle},
                             on_refused=lambda peer, reason: refused.append(peer))
    port = await server.start(HOST, 0)
    membership.update_local(peer_port=port)
    task = asyncio.create_task(gossiper.run())
    return Node(membership, gossiper, server, peers, port, task, changes, transitions, refused)


async def stop(node: Node) -> None:
    node.task.cancel()
    await asyncio.wait([node.task])  # not `suppress(CancelledError)`: that could swallow our own cancellation
    await node.gossiper.stop()
    await node.server.stop()
    await node.peers.close()


async def trio() -> tuple[Node, Node, Node]:
    """Three nodes that know only the first one's address (seeds-only bootstrap), converged."""
    a = await start(A, 1000, seeds=[])
    b = await start(B, 1000, seeds=[a.port])
    c = await start(C, 1000, seeds=[a.port])
    nodes = (a, b, c)
    await until(lambda: all(n.knows(*nodes) and n.sees_up(*nodes) for n in nodes), "all know and see all up")
    return nodes


def test_three_nodes_bootstrapped_from_one_seed_converge() -> None:
    async def main() -> None:
        nodes = await trio()
        try:
            for observer in nodes:
                for node in nodes:
                    seen = observer.membership.members[node.id]
                    assert (seen.host, seen.peer_port, seen.generation) == (HOST, node.port, 1000)
            a = nodes[0]
            # the heartbeats keep flowing: each node hears newer versions of the others
            version = a.membership.members[C].version
            await until(lambda: a.membership.members[C].version >= version + 5, "c's heartbeats reach a")
            assert all(up for _, up in a.transitions)  # nobody was judged down along the way
        finally:
            for node in nodes:
                await stop(node)

    run(main())


def test_a_stopped_node_is_judged_down_and_up_again_after_a_restart() -> None:
    async def main() -> None:
        a, b, c = await trio()
        restarted: Node | None = None
        try:
            await stop(c)
            took = await until(lambda: not a.gossiper.is_up(C) and not b.gossiper.is_up(C), "c judged down")
            assert took < 4.0
            assert a.gossiper.phi(C) >= a.gossiper.phi_threshold
            assert a.sees_up(b) and b.sees_up(a)
            assert a.transitions[-1] == (C, False)

            restarted = await start(C, 2000, seeds=[a.port])  # a new process: higher generation, version 0
            await until(lambda: a.sees_up(restarted) and b.sees_up(restarted), "c judged up again")
            await until(lambda: all(n.membership.members[C].generation == 2000 for n in (a, b)),
                        "c's new life known everywhere")
            assert a.membership.members[C].peer_port == restarted.port
            assert a.transitions[-1] == (C, True)
            await until(lambda: restarted.knows(a, b) and restarted.sees_up(a, b), "c knows the others")
        finally:
            for node in (a, b, restarted):
                if node is not None:
                    await stop(node)

    run(main())


def test_members_changed_fires_when_tokens_change_not_on_heartbeats() -> None:
    async def main() -> None:
        a, b, c = await trio()
        try:
            settled = len(a.changes)
            assert settled >= 2  # learning b and c were changes
            version = a.membership.members[B].version
            await until(lambda: a.membership.members[B].version >= version + 10, "b's heartbeats reach a")
            assert len(a.changes) == settled

            b.membership.update_local(tokens=(11, 22, 33))
            await until(lambda: a.membership.members[B].tokens == (11, 22, 33), "b's tokens reach a")
            await until(lambda: c.membership.members[B].tokens == (11, 22, 33), "b's tokens reach c")
            assert len(a.changes) > settled
        finally:
            for node in (a, b, c):
                await stop(node)

    run(main())


def test_a_node_of_another_cluster_is_kept_out() -> None:
    async def main() -> None:
        a = await start(A, 1000, seeds=[])
        stranger = await start(NodeId("x"), 1000, seeds=[a.port], cluster="another-cluster")
        try:
            await until(lambda: "x" in a.refused, "a refuses the stranger")
            assert set(a.membership.members) == {A}
            assert set(stranger.membership.members) == {NodeId("x")}
        finally:
            await stop(stranger)
            await stop(a)

    run(main())


# -- absorb, without the network ----------------------------------------------------------------------------


def _lone(node_id: NodeId = A) -> Gossiper:
    local = MemberState(node_id=node_id, generation=1, version=0, status=Status.NORMAL, host=HOST,
                        http_port=1, peer_port=2, tokens=())
    return Gossiper(Membership(local), Peers(CLUSTER, node_id), [], phi_config=PHI)


def _doc(node_id: str, generation: int, version: int, **changes: Any) -> dict[str, Any]:
    doc = MemberState(node_id=NodeId(node_id), generation=generation, version=version, status=Status.NORMAL,
                      host=HOST, http_port=1, peer_port=2, tokens=(5,)).to_wire()
    doc.update(changes)
    return doc


def test_absorb_counts_news_as_heartbeats_and_judges_the_sender_up() -> None:
    gossiper = _lone()
    assert not gossiper.is_up(B)
    gossiper.absorb([_doc("b", 1, 1)])
    assert gossiper.detector.is_monitoring(B)
    assert gossiper.is_up(B) and gossiper.is_up(A)
    last = gossiper.detector.last_heartbeat(B)
    gossiper.absorb([_doc("b", 1, 1)])  # nothing new: not a heartbeat
    assert gossiper.detector.last_heartbeat(B) == last


@pytest.mark.parametrize("body", [{"id": "b"}, "states", [_doc("b", 1, 1), {"id": "c"}], [_doc("b", 1, 1, cap=0)]])
def test_absorb_rejects_malformed_bodies_whole(body: Any) -> None:
    gossiper = _lone()
    with pytest.raises(ValueError):
        gossiper.absorb(body)
    assert set(gossiper.membership.members) == {A}


def test_a_new_generation_starts_a_fresh_heartbeat_history() -> None:
    gossiper = _lone()
    gossiper.absorb([_doc("b", 1, 1)])
    gossiper.absorb([_doc("b", 1, 2)])
    gossiper.absorb([_doc("b", 2, 0)])  # b restarted: the gap to its previous life is no heartbeat interval
    last = gossiper.detector.last_heartbeat(B)
    assert last is not None
    fresh = PhiAccrualFailureDetector(PHI)
    fresh.heartbeat(B, last)
    for silence in (0.1, 0.5, 1.0):
        assert gossiper.detector.phi(B, last + silence) == fresh.phi(B, last + silence)


def test_a_member_that_announces_its_shutdown_is_down_at_once_until_its_next_generation() -> None:
    gossiper = _lone()
    gossiper.absorb([_doc("b", 1, 1)])
    assert gossiper.is_up(B)
    gossiper.absorb([_doc("b", 1, 2, stop=True)])  # its heartbeats are fresh: only the announcement says down
    assert not gossiper.is_up(B) and gossiper.down_for(B) >= 0
    gossiper.absorb([_doc("b", 1, 3, stop=True)])  # still draining, still beating: still down
    gossiper._judge()
    assert not gossiper.is_up(B)
    gossiper.absorb([_doc("b", 2, 0)])  # restarted
    assert gossiper.is_up(B)


@pytest.mark.parametrize("flag", [1, "yes", None, [True]])
def test_a_shutdown_flag_that_is_not_a_boolean_is_refused(flag: Any) -> None:
    gossiper = _lone()
    with pytest.raises(ValueError, match="stop must be a boolean"):
        gossiper.absorb([_doc("b", 1, 1, stop=flag)])


def test_announce_shutdown_marks_our_own_state_and_reaches_nobody_when_alone() -> None:
    gossiper = _lone()
    assert asyncio.run(gossiper.announce_shutdown(timeout_s=0.1)) == 0
    assert gossiper.membership.local.stopping
    assert gossiper.membership.to_wire(True)[0]["stop"] is True


def test_a_state_announced_on_a_dead_nodes_behalf_is_no_heartbeat_of_it() -> None:
    """removenode announces the dead node `leaving` (then `left`) with a newer version, naming itself in `by`:
    the others take the state but must not judge the dead node alive because of it."""
    gossiper = _lone()
    gossiper.absorb([_doc("b", 1, 1)])
    last = gossiper.detector.last_heartbeat(B)
    gossiper.absorb([_doc("b", 1, 1001, status="leaving", by="c")])
    assert gossiper.membership.members[B].status == Status.LEAVING  # taken: it is news
    assert gossiper.detector.last_heartbeat(B) == last  # but no sign of life of b


def test_speak_for_names_the_speaker() -> None:
    membership = Membership(MemberState(node_id=A, generation=1, version=0, status=Status.NORMAL, host=HOST,
                                        http_port=1, peer_port=2, tokens=()))
    membership.apply([MemberState.from_wire(_doc("b", 1, 3))])
    spoken = membership.speak_for(B, status=Status.LEAVING)
    assert spoken.by == A and spoken.version > 3
    assert MemberState.from_wire(spoken.to_wire()) == spoken


@pytest.mark.parametrize("body", [None, {"id": "b"}, "states", 5, [{"id": "b"}], [_doc("b", 1, 1, peer=70000)],
                                  [_doc("b", 1, 1, host="h" * 1_000_000)]])
def test_the_gossip_handler_refuses_a_malformed_body_as_a_bad_request(body: Any) -> None:
    # It raised the ValueError of `absorb`, which the transport answers `internal_error` (tests/fuzz).
    gossiper = _lone()
    with pytest.raises(RequestError) as refused:
        asyncio.run(gossiper.handle(body, "b"))
    assert refused.value.code == "bad_request"
    assert set(gossiper.membership.members) == {A}
