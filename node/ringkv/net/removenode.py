"""Removing a dead node (`removenode`): its ranges are re-replicated from the remaining replicas, then it is
taken out of the ring. Run by any live node R (`POST /admin/v1/removenode {"node": X}`):

1. X must be a member of the ring that R's failure detector holds down, and no other topology change may be
   in flight (`change_in_progress` otherwise).
2. R announces X `leaving` on X's behalf (`Membership.speak_for`: X's generation, a newer version, so it
   wins wherever gossip takes it). Every node derives the future ring without X, and writes also go to the
   pending replicas (W + P acknowledgements; X itself answers nothing, so its share goes to hints).
3. Once every live member shows that view, for each movement (`topology.movements`: a piece gained by G)
   R asks G to pull it (`stream_pull`): G streams it from a live current replica other than X and verifies
   it with that replica by a Merkle exchange (`join.receive_range`). When G is R itself, R does so.
4. R announces X `left` with no tokens: X leaves every ring; hints held for X go to the key's replicas.

A node that died while joining (joining, with pending tokens) is removed at once: it owned nothing, so
announcing it `left` with no tokens cancels its pending ranges everywhere.

A removed node must be wiped before it is started again: a restarted X would gossip a new generation and
take its old place (it then joins as a new member, as a decommissioned node does).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ringkv.cluster import topology
from ringkv.cluster.ids import NodeId
from ringkv.cluster.membership import Status
from ringkv.errors import RequestError, RingkvError
from ringkv.net import join
from ringkv.net.decommission import ChangeInProgressError
from ringkv.net.operations import Operation
from ringkv.net.streaming import RangeProgress

if TYPE_CHECKING:
    from ringkv.net.node import ClusterNode

log = logging.getLogger("ringkv.removenode")

PULL_TIMEOUT_S = 3600.0


def check(node: ClusterNode, target: NodeId) -> None:
    if target == node.node_id:
        raise RequestError("invalid_node", "a node cannot remove itself: decommission it instead")
    if target not in node.coordinator.ring and not _dead_joiner(node, target):
        raise RequestError("unknown_node", f"{target} is not in the ring")
    if node.gossiper.is_up(target):
        raise ChangeInProgressError(f"{target} is up: decommission it, or stop it before removing it")
    if node.mode != "normal":
        raise ChangeInProgressError(f"{node.node_id} is {node.mode}, not normal")
    busy, _ = node.topology_in_flight()
    if busy:
        raise ChangeInProgressError(f"another topology change is in flight: {', '.join(busy)}")


def _dead_joiner(node: ClusterNode, target: NodeId) -> bool:
    state = node.membership.members.get(target)
    return state is not None and state.status == Status.JOINING and bool(state.tokens)


async def run(node: ClusterNode, target: NodeId, op: Operation) -> None:
    cfg = node.config
    if _dead_joiner(node, target):
        # It owned nothing yet: dropping its pending tokens cancels the join (what it streamed stays on it,
        # and writes for its future ranges reached the current replicas too).
        op.progress.update(phase="left", ranges_total=0, ranges_done=0, keys=0, bytes=0, verify_repaired=0)
        node.membership.speak_for(target, status=Status.LEFT, tokens=())
        node.rebuild_ring()
        await node.await_agreement()
        log.warning("removed %s, which died while joining: its join is cancelled", target)
        return
    op.progress.update(phase="leaving", ranges_total=0, ranges_done=0, keys=0, bytes=0, verify_repaired=0)
    node.membership.speak_for(target, status=Status.LEAVING)
    node.rebuild_ring()
    await node.await_agreement()
    current, future = node.coordinator.ring, node.coordinator.future
    if future is None:
        raise RingkvError(f"no future ring while removing {target}")
    moves = topology.movements(current, future, cfg.replication_factor)
    op.progress.update(phase="streaming", ranges_total=len(moves))
    for move in moves:
        sources = tuple(s for s in move.sources if s != target)
        if move.gainer == node.node_id:
            progress = RangeProgress(move.lo, move.hi, NodeId(""))
            node.join_progress.append(progress)
            await join.receive_range(node, progress, sources, attempts=3)
            op.add(keys=progress.keys, bytes=progress.bytes, verify_repaired=progress.verify_repaired)
        else:
            reply = await node.coordinator.call(move.gainer, "stream_pull",
                                                {"lo": move.lo, "hi": move.hi, "sources": list(sources)},
                                                PULL_TIMEOUT_S)
            if isinstance(reply, dict):
                op.add(keys=int(reply.get("keys", 0)), bytes=int(reply.get("bytes", 0)),
                       verify_repaired=int(reply.get("verify_repaired", 0)))
        op.add(ranges_done=1)
    op.progress["phase"] = "left"
    node.membership.speak_for(target, status=Status.LEFT, tokens=())
    node.rebuild_ring()
    await node.await_agreement()
    log.warning("removed %s from the ring (%d ranges re-replicated)", target, len(moves))
