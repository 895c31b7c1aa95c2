"""Drain (`POST /admin/v1/drain`): stop taking client requests and flush, before a planned stop, as
`nodetool drain` does.

1. The node reports not ready (`/ready` 503), so load balancers and Service endpoints take it out, and it
   refuses new client requests and forwarded writes (503 `not_ready`; a coordinator that forwarded one tries
   the next replica).
2. It waits for the client requests it is coordinating to finish (at most `shutdown_timeout_s`).
3. It flushes the memtable to an SSTable, so that the next start replays an empty commit log.

It stays a replica: other coordinators' writes and reads still reach it, gossip goes on, and it stops at
SIGTERM as usual (mode `drained` until then). Idempotent: a second drain returns the first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ringkv.net.decommission import ChangeInProgressError
from ringkv.net.operations import Operation

if TYPE_CHECKING:
    from ringkv.net.node import ClusterNode

log = logging.getLogger("ringkv.drain")

POLL_S = 0.05


def check(node: ClusterNode) -> None:
    if node.mode not in ("normal", "drained"):
        raise ChangeInProgressError(f"{node.node_id} is {node.mode}: only a normal node can be drained")


async def run(node: ClusterNode, op: Operation) -> None:
    op.progress.update(phase="refusing requests", in_flight=node.coordinator.in_flight)
    node.ready = False
    node.mode = "drained"
    node.coordinator.draining = True
    deadline = time.monotonic() + node.config.shutdown_timeout_s
    while node.coordinator.in_flight and time.monotonic() < deadline:
        op.progress["in_flight"] = node.coordinator.in_flight
        await asyncio.sleep(POLL_S)  # polling a counter that the requests themselves decrement
    op.progress.update(phase="flushing", in_flight=node.coordinator.in_flight)
    await node.engine.flush()
    op.progress["phase"] = "drained"
    log.warning("node %s is drained: no client requests, memtable flushed; stop it now", node.node_id)
