"""Ring changes in flight: movements cover exactly what changes hands, pending replicas, join turns."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.cluster import topology
from ringkv.cluster.ids import NodeId
from ringkv.cluster.ring import NodeInfo, Ring, allocate_tokens

RING = 2**64


def build(n: int, racks: int = 1, rf: int = 3, tokens: int = 8) -> Ring:
    ring = Ring()
    for i in range(n):
        info = NodeInfo(NodeId(f"n{i}"), "dc1", f"r{i % racks}", 1.0)
        ring = ring.with_node(info, allocate_tokens(ring, info, tokens, replication=rf))
    return ring


def holds(m: topology.Movement, token: int) -> bool:
    return (token - m.lo - 1) % RING < m.span


def check(current: Ring, future: Ring, rf: int, seed: int) -> None:
    moves = topology.movements(current, future, rf)
    rng = random.Random(seed)
    probes = [rng.randrange(-(2**63), 2**63) for _ in range(400)]
    probes += [t for t in (*current.tokens, *future.tokens)] + [t + 1 for t in current.tokens]
    for t in probes:
        t = (t + 2**63) % RING - 2**63
        before = set(current.preference_list(t, rf))
        after = set(future.preference_list(t, rf))
        got = {m.gainer for m in moves if holds(m, t)}
        assert got == after - before, t
        for m in moves:
            if holds(m, t):
                assert set(m.sources) == before
        assert set(topology.pending_for(current, future, t, rf)) == after - before
    for gainer in {m.gainer for m in moves}:  # no two movements of one gainer overlap
        mine = topology.gains_of(moves, gainer)
        assert sum(m.span for m in mine) <= RING


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 6), st.integers(1, 3), st.integers(1, 3), st.integers(0, 10_000))
def test_a_join_moves_exactly_what_the_joiner_gains(n: int, racks: int, rf: int, seed: int) -> None:
    current = build(n, racks, rf)
    info = NodeInfo(NodeId("new"), "dc1", f"r{seed % racks}", 1.0)
    future = current.with_node(info, allocate_tokens(current, info, 8, replication=rf))
    check(current, future, rf, seed)
    moves = topology.movements(current, future, rf)
    assert {m.gainer for m in moves} <= {NodeId("new")}
    gained = sum(m.span for m in moves) / RING
    assert abs(gained - future.ownership(rf)[NodeId("new")]) < 1e-9  # a new node gains all it will replicate


@settings(max_examples=25, deadline=None)
@given(st.integers(3, 7), st.integers(1, 3), st.integers(1, 3), st.integers(0, 10_000))
def test_a_decommission_moves_the_leavers_data_to_its_successors(n: int, racks: int, rf: int, seed: int) -> None:
    current = build(n, racks, rf)
    leaver = NodeId(f"n{seed % n}")
    future = current.without_node(leaver)
    check(current, future, rf, seed)
    for m in topology.movements(current, future, rf):
        assert m.gainer != leaver and leaver in m.sources  # the leaver held every piece that moves


def test_nothing_moves_when_every_node_already_holds_everything() -> None:
    current = build(3)
    assert topology.movements(current, current.without_node(NodeId("n2")), 3) == []
    assert topology.movements(current, current, 3) == []
    assert topology.movements(Ring(), current, 3) == []


def test_a_joiner_into_a_one_node_ring_gains_the_whole_ring() -> None:
    current = build(1)
    info = NodeInfo(NodeId("new"), "dc1", "r0", 1.0)
    future = current.with_node(info, allocate_tokens(current, info, 8, replication=3))
    [move] = topology.movements(current, future, 3)
    assert move.lo == move.hi and move.span == RING and move.sources == (NodeId("n0"),)


def test_the_earliest_candidate_joins_first_and_ties_break_by_node_id() -> None:
    assert topology.join_turn([(NodeId("b"), 5), (NodeId("a"), 7), (NodeId("c"), 5)]) == NodeId("b")
    assert topology.join_turn([]) is None


# -- agreement ---------------------------------------------------------------------------------------------


def _peer(view: str = "v", up: bool = True, heard: bool = True, in_ring: bool = True) -> topology.PeerView:
    return topology.PeerView(in_ring=in_ring, heard=heard, up=up, view=view)


def test_views_agree_when_every_live_member_shows_ours() -> None:
    assert topology.views_agree([_peer(), _peer()], "v", settled=False)
    assert not topology.views_agree([_peer(), _peer(view="w")], "v", settled=True)


def test_a_member_never_heard_blocks_agreement_until_settled() -> None:
    # Just restarted: no heartbeat has arrived yet, so no one is up; that is not agreement.
    unheard = [_peer(view="old", up=False, heard=False)] * 3
    assert not topology.views_agree(unheard, "v", settled=False)
    assert topology.views_agree(unheard, "v", settled=True)  # long enough: they are dead for us


def test_down_joining_and_left_members_do_not_block_agreement() -> None:
    peers = [_peer(), _peer(view="old", up=False), _peer(view="x", in_ring=False, heard=False)]
    assert topology.views_agree(peers, "v", settled=False)
