"""Identifiers shared by the cluster policies.

`NodeId` names a physical node (stable across restarts; the gossip layer and the ring agree on it).
`Token` is a position on the ring: a signed 64-bit integer in [-2**63, 2**63 - 1], as produced by
`ringkv.cluster.ring.token_for`.

An *actor* is the name a node writes into the dots it issues (`versions.Dot.node`): its `NodeId` joined to
its current *incarnation* by `ACTOR_SEPARATOR`, e.g. `n1#5f0c2a9e`. A node takes a new incarnation whenever
it cannot prove it kept the counters of its previous one (a new or wiped data directory, a crash that may
have lost un-fsynced writes, a corrupt record), so a dot is never issued twice. Records written before
incarnations existed name the bare node id; they stay readable (that actor simply issues no more dots).
"""

from __future__ import annotations

from typing import Final, NewType

NodeId = NewType("NodeId", str)
Token = NewType("Token", int)

ACTOR_SEPARATOR: Final = "#"


def actor(node: NodeId, incarnation: str) -> NodeId:
    """The dot actor of `node` in `incarnation` (node ids never contain the separator)."""
    return NodeId(f"{node}{ACTOR_SEPARATOR}{incarnation}")


def node_of(actor_name: NodeId) -> NodeId:
    """The node id an actor belongs to (the actor itself for pre-incarnation records)."""
    return NodeId(actor_name.partition(ACTOR_SEPARATOR)[0])
