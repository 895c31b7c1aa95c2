"""Two nodes allocating against the same ring at the same moment get distinct tokens (issue 12)."""

from __future__ import annotations

from ringkv.cluster.ids import NodeId
from ringkv.cluster.ring import NodeInfo, Ring, allocate_tokens, join


def test_two_nodes_joining_one_ring_at_once_never_share_a_token() -> None:
    ring = Ring()
    for i in range(3):
        ring = join(ring, NodeInfo(NodeId(f"n{i}"), "dc1", f"r{i}"), replication=3)
    a = allocate_tokens(ring, NodeInfo(NodeId("rack-a-0"), "dc1", "r0"), 16, replication=3)
    b = allocate_tokens(ring, NodeInfo(NodeId("rack-b-0"), "dc1", "r1"), 16, replication=3)
    assert not set(a) & set(b)
    assert not (set(a) | set(b)) & set(ring.tokens)


def test_two_datacenters_first_nodes_never_share_a_token() -> None:
    ring = join(Ring(), NodeInfo(NodeId("n0"), "dc1", "r0"), replication={"dc1": 3, "dc2": 3})
    a = allocate_tokens(ring, NodeInfo(NodeId("x"), "dc2", "r0"), 16, replication={"dc1": 3, "dc2": 3})
    b = allocate_tokens(ring, NodeInfo(NodeId("y"), "dc2", "r0"), 16, replication={"dc1": 3, "dc2": 3})
    assert not set(a) & set(b)


def test_allocation_is_still_balanced_and_deterministic() -> None:
    ring = Ring()
    for i in range(6):
        ring = join(ring, NodeInfo(NodeId(f"n{i}"), "dc1", f"r{i % 3}"), replication=3)
    again = Ring()
    for i in range(6):
        again = join(again, NodeInfo(NodeId(f"n{i}"), "dc1", f"r{i % 3}"), replication=3)
    assert again == ring
    shares = ring.ownership(3).values()
    assert max(shares) / min(shares) < 1.15
