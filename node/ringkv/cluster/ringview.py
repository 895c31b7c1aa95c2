"""The ring as every node derives it from gossip: deterministic, so nodes that hold the same states agree.

`ring_from_members` builds the ring from the members that place data (status normal or leaving, with
tokens). When two members claim one token (two nodes allocated at the same moment, or a misconfiguration)
the ring cannot hold both: rather than each node keeping whichever "last good ring" it happened to have, the
member whose id sorts later is left out, on every node alike, and the conflict is reported (logged and
counted by the caller, shown by `GET /admin/v1/ring`).

`digest` is a short hash of the ring's contents (node ids, placement attributes and tokens), carried in
gossip and on internode requests so that diverged views are detected. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import mmh3

from ringkv.cluster.ids import NodeId
from ringkv.cluster.membership import MemberState, Status
from ringkv.cluster.ring import NodeInfo, Ring

PLACING = (Status.NORMAL, Status.LEAVING)


@dataclass(frozen=True)
class RingView:
    ring: Ring
    digest: str
    excluded: tuple[NodeId, ...]  # members left out for claiming a token another member holds
    conflicts: tuple[str, ...]  # one line per exclusion


def digest(ring: Ring) -> str:
    """A stable 64-bit hash (hex) of the ring's nodes and tokens."""
    parts = []
    for info, tokens in sorted(ring.assignments().items(), key=lambda kv: kv[0].node_id):
        parts.append(f"{info.node_id}|{info.datacenter}|{info.rack}|{info.capacity!r}|"
                     + ",".join(map(str, tokens)))
    h = mmh3.hash_bytes("\n".join(parts).encode())
    return h[:8].hex()


def ring_from_members(states: Iterable[MemberState]) -> RingView:
    placing = sorted((s for s in states if s.tokens and s.status in PLACING), key=lambda s: s.node_id)
    owner: dict[int, NodeId] = {}
    assignments: dict[NodeInfo, tuple[int, ...]] = {}
    excluded: list[NodeId] = []
    conflicts: list[str] = []
    for state in placing:
        clash = next((t for t in state.tokens if t in owner), None)
        if clash is not None:
            excluded.append(state.node_id)
            conflicts.append(f"{state.node_id} left out of the ring: its token {clash} is claimed by "
                             f"{owner[clash]}")
            continue
        for t in state.tokens:
            owner[t] = state.node_id
        assignments[NodeInfo(state.node_id, state.datacenter, state.rack, state.capacity)] = state.tokens
    ring = Ring(assignments)
    return RingView(ring, digest(ring), tuple(excluded), tuple(conflicts))
