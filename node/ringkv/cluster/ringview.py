"""The ring as every node derives it from gossip: deterministic, so nodes that hold the same states agree.

`ring_from_members` builds the ring from the members that place data (status normal or leaving, with
tokens). When two members claim one token (two nodes allocated at the same moment, or a misconfiguration)
the ring cannot hold both: rather than each node keeping whichever "last good ring" it happened to have, the
member whose id sorts later is left out, on every node alike, and the conflict is reported (logged and
counted by the caller, shown by `GET /admin/v1/ring`).

Members joining with pending tokens and members leaving make a *future* ring (`RingView.future`): where
keys will live once those changes are done, for the coordinator's pending replicas (`cluster.topology`).

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
    future: Ring | None = None  # the ring once the changes in flight are done (None: none in flight)
    joining: tuple[NodeId, ...] = ()  # members joining with their pending tokens
    leaving: tuple[NodeId, ...] = ()

    @property
    def changing(self) -> bool:
        return self.future is not None


def digest(ring: Ring) -> str:
    """A stable 64-bit hash (hex) of the ring's nodes and tokens."""
    parts = []
    for info, tokens in sorted(ring.assignments().items(), key=lambda kv: kv[0].node_id):
        parts.append(f"{info.node_id}|{info.datacenter}|{info.rack}|{info.capacity!r}|"
                     + ",".join(map(str, tokens)))
    h = mmh3.hash_bytes("\n".join(parts).encode())
    return h[:8].hex()


def ring_from_members(states: Iterable[MemberState]) -> RingView:
    states = list(states)
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
    # Changes in flight: joiners with pending tokens enter the future ring (unless a token clashes), leavers
    # leave it.
    joining: list[NodeId] = []
    future_assignments = {info: tokens for info, tokens in assignments.items()}
    replaced: set[NodeId] = set()
    for state in sorted((s for s in states if s.tokens and s.status == Status.JOINING), key=lambda s: s.node_id):
        taking = NodeId(state.replaces) if state.replaces else None  # a replacement takes a dead member's tokens
        if taking is not None and owner and set(state.tokens) == {t for t, n in owner.items() if n == taking}:
            replaced.add(taking)
            for t in state.tokens:
                owner[t] = state.node_id
            future_assignments[NodeInfo(state.node_id, state.datacenter, state.rack, state.capacity)] = state.tokens
            joining.append(state.node_id)
            continue
        if any(t in owner for t in state.tokens):
            conflicts.append(f"{state.node_id} cannot join: a pending token of it is claimed by another member")
            continue
        for t in state.tokens:
            owner[t] = state.node_id
        future_assignments[NodeInfo(state.node_id, state.datacenter, state.rack, state.capacity)] = state.tokens
        joining.append(state.node_id)
    leaving = tuple(s.node_id for s in placing if s.status == Status.LEAVING and s.node_id not in excluded)
    future_assignments = {i: t for i, t in future_assignments.items()
                          if i.node_id not in leaving and i.node_id not in replaced}
    future = Ring(future_assignments) if joining or leaving else None
    return RingView(ring, digest(ring), tuple(excluded), tuple(conflicts), future, tuple(joining), leaving)
