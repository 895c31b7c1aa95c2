"""Cleanup: drop the records of ranges this node no longer replicates (after a join took them over, or a
ring change moved them), as `nodetool cleanup` does.

The whole store is scanned in token order, in batches; a record whose key's preference list (current ring)
does not include this node is removed with `Replica.drop`, which first raises the dot floor past this
node's counter in it, so no dot is ever reissued for that key should it come back to this node. Refused while
a topology change is in flight (the data may still be needed as a stream source). Progress: keys scanned,
keys dropped, bytes freed (records' sizes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ringkv.net.decommission import ChangeInProgressError
from ringkv.net.operations import Operation

if TYPE_CHECKING:
    from ringkv.net.node import ClusterNode

BATCH = 512


def check(node: ClusterNode) -> None:
    if node.mode != "normal":
        raise ChangeInProgressError(f"{node.node_id} is {node.mode}, not normal")
    if node.coordinator.future is not None:
        busy, _ = node.topology_in_flight()
        raise ChangeInProgressError(f"a topology change is in flight: {', '.join(busy) or 'the ring is changing'}")


async def run(node: ClusterNode, op: Operation) -> None:
    op.progress.update(scanned=0, dropped=0, bytes=0)
    cursor: bytes | None = None
    while True:
        pairs, cursor = await node.replica.scan_range(0, 0, cursor, BATCH)
        if node.coordinator.future is not None:
            raise ChangeInProgressError("a topology change started during cleanup; run it again afterwards")
        for key, value in pairs:
            if node.node_id not in node.coordinator.preference(key) and await node.replica.drop(key):
                op.add(dropped=1, bytes=len(key) + len(value))
        op.add(scanned=len(pairs))
        if cursor is None:
            return
