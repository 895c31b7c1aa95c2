"""The ring every node derives from gossip states: deterministic whatever the order states arrived in, with
token conflicts resolved the same way on every node (the later id is left out), and a digest that tells
diverged views apart (issue 9, defects 7 and 10)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ringkv.cluster.ids import NodeId
from ringkv.cluster.membership import MemberState, Status
from ringkv.cluster.ringview import digest, ring_from_members


def member(node: str, tokens: tuple[int, ...], status: Status = Status.NORMAL, rack: str = "r1") -> MemberState:
    return MemberState(NodeId(node), 1, 1, status, "h", 1, 2, tokens, rack=rack)


def test_members_that_place_data_make_the_ring() -> None:
    view = ring_from_members([member("a", (1, 5)), member("b", (3,)), member("c", (), Status.JOINING),
                              member("d", (9,), Status.LEFT), member("e", (7,), Status.LEAVING)])
    assert sorted(view.ring.nodes) == ["a", "b", "e"]
    assert view.excluded == () and view.conflicts == ()


def test_a_token_conflict_leaves_out_the_later_id_on_every_node() -> None:
    # Before: each node kept whichever "last good ring" it had when the conflict arrived, so views diverged.
    states = [member("n1", (10, 20)), member("n2", (20, 30)), member("n3", (40,))]
    views = [ring_from_members(order) for order in (states, states[::-1], [states[1], states[2], states[0]])]
    assert {v.digest for v in views} == {views[0].digest}
    assert views[0].excluded == ("n2",)
    assert sorted(views[0].ring.nodes) == ["n1", "n3"]
    assert "20" in views[0].conflicts[0]


@given(st.permutations(range(6)), st.lists(st.integers(-50, 50), min_size=6, max_size=6))
def test_the_ring_and_its_digest_do_not_depend_on_arrival_order(order: list[int], firsts: list[int]) -> None:
    states = [member(f"n{i}", (firsts[i], 100 + i)) for i in range(6)]
    a = ring_from_members(states)
    b = ring_from_members([states[i] for i in order])
    assert (a.ring, a.digest, a.excluded) == (b.ring, b.digest, b.excluded)


def test_the_digest_changes_with_tokens_and_placement() -> None:
    base = ring_from_members([member("a", (1,)), member("b", (2,))]).ring
    assert digest(base) == digest(ring_from_members([member("b", (2,)), member("a", (1,))]).ring)
    assert digest(base) != digest(ring_from_members([member("a", (1,)), member("b", (3,))]).ring)
    assert digest(base) != digest(ring_from_members([member("a", (1,)), member("b", (2,), rack="r2")]).ring)
