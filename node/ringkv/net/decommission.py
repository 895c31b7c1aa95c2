"""Decommission: a node hands every range it holds to the nodes that take it over, then leaves the ring.

1. **Leaving.** The node announces `leaving` (gossip). The ring still places keys on it; every node derives the
   future ring without it (`ringview`) and writes also go to the pending replicas, waiting for W + P
   acknowledgements (`coordinator`). It waits until every live member gossips that view.
2. **Streaming.** For each movement (`topology.movements(current, future)`: a piece of the token space and
   the node that gains it), it reads the piece from its own storage (`Replica.scan_range` batches) and
   pushes the records to the gainer (`aae_push`, merged there), through the stream rate limit; then it
   verifies the piece with the gainer (`AntiEntropy.verify_range`: temporary Merkle trees on both sides, an
   exchange that merges what differs both ways).
3. **Left.** Hints it still holds are delivered or handed to a live peer (still for their target); it announces
   `left` with no tokens (its tokens leave every node's ring; hints others hold for it go to the key's
   replicas instead, `coordinator`), keeps gossiping a few rounds so every node hears it, persists no tokens and
   `left` (a restart on the same volume stays out of the ring, `identity`; wipe it to join as a new member), and
   stops.

Progress (the operation's `progress`): phase, ranges total and done, keys and bytes pushed, keys repaired by
verification. Refused (`change_in_progress`) while another topology change is in flight, or when the node is
not normal or is the last one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

from ringkv.cluster import topology
from ringkv.cluster.ids import NodeId
from ringkv.cluster.membership import Status
from ringkv.errors import RequestError, RingkvError
from ringkv.net.hints import Hint
from ringkv.net.operations import Operation

if TYPE_CHECKING:
    from ringkv.net.node import ClusterNode

log = logging.getLogger("ringkv.decommission")

BATCH = 256


class ChangeInProgressError(RequestError):
    """Another topology change is in flight (or this node cannot leave now)."""

    def __init__(self, message: str) -> None:
        super().__init__("change_in_progress", message)


def check(node: ClusterNode) -> None:
    """Raise unless this node may start leaving now."""
    if node.mode != "normal":
        raise ChangeInProgressError(f"{node.node_id} is {node.mode}, not normal: it cannot start leaving")
    busy, _ = node.topology_in_flight()
    if busy:
        raise ChangeInProgressError(f"another topology change is in flight: {', '.join(busy)}")
    if len(node.coordinator.ring) <= 1:
        raise ChangeInProgressError("the last node of the ring cannot leave it")


async def run(node: ClusterNode, op: Operation, exit_when_done: bool = True) -> None:
    cfg = node.config
    op.progress.update(phase="leaving", ranges_total=0, ranges_done=0, keys=0, bytes=0, verify_repaired=0)
    node.mode = "leaving"
    node.membership.update_local(status=Status.LEAVING)
    node.rebuild_ring()
    await node.await_agreement()
    current, future = node.coordinator.ring, node.coordinator.future
    if future is None:
        raise RingkvError("no future ring while leaving")
    moves = [m for m in topology.movements(current, future, cfg.replication_factor) if node.node_id in m.sources]
    op.progress.update(phase="streaming", ranges_total=len(moves))
    assert node.antientropy is not None
    for move in moves:
        while True:
            try:
                await _push(node, move, op)
                result = await node.antientropy.verify_range(move.lo, move.hi, move.gainer)
                op.add(verify_repaired=result.keys_repaired, ranges_done=1)
                break
            except RingkvError as e:
                log.warning("handing range %s to %s failed: %s; retrying", move.name, move.gainer, e)
                await asyncio.sleep(cfg.gossip_interval_s)
    op.progress["phase"] = "handing off hints"
    await _hand_off_hints(node)
    op.progress["phase"] = "left"
    # First: killed after gossip carried `left`, a restart on this volume must not join again as a new member.
    await node.persist_identity(tokens=(), left=True)
    node.membership.update_local(status=Status.LEFT, tokens=())
    node.rebuild_ring()
    node.coordinator.accepting = False
    node.ready = False
    node.mode = "left"
    await node.await_agreement()  # every live node's ring is without us
    log.warning("node %s has left the ring (%d ranges handed over)", node.node_id, len(moves))
    if exit_when_done:
        os.kill(os.getpid(), signal.SIGTERM)


async def _push(node: ClusterNode, move: topology.Movement, op: Operation) -> None:
    cursor: bytes | None = None
    while True:
        pairs, cursor = await node.replica.scan_range(move.lo, move.hi, cursor, BATCH)
        if pairs:
            size = sum(len(k) + len(v) for k, v in pairs)
            await node.streamer.limiter.acquire(size)
            await node.coordinator.call(move.gainer, "aae_push", {"records": [[k, v] for k, v in pairs]},
                                        node.streamer.timeout_s)
            op.add(keys=len(pairs), bytes=size)
            node.streamer.stats.keys_sent += len(pairs)
            node.streamer.stats.bytes_sent += size
        if cursor is None:
            return


async def _hand_off_hints(node: ClusterNode) -> None:
    """Deliver what can be delivered; give the rest to a live peer, still for their targets."""
    await node.coordinator.deliver_hints()
    peers = node.coordinator.healthy_first([n for n in node.coordinator.ring.nodes if n != node.node_id])
    if not peers:
        return
    for target in list(node.hints.pending):
        after: bytes | None = None
        while True:
            hints, after, _ = await node.hints.scan_from(target, after, 256)
            if after is None:
                break
            for hint in hints:
                await _give(node, peers[0], hint)


async def _give(node: ClusterNode, peer: NodeId, hint: Hint) -> None:
    try:
        await node.coordinator.call(peer, "store_hint", {"target": hint.target, "key": hint.key,
                                                          "record": hint.record})
        await node.hints.remove(hint, delivered=True)
    except RingkvError as e:
        log.warning("could not hand a hint for %s to %s: %s", hint.target, peer, e)
