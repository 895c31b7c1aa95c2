"""A node's status in one small document, and the cluster's as one node gathers it (the status page's data).

`local_status(node)` is what a node says about itself: mode, place, requests (rate and p99 over the last
`recent.WINDOW_S` seconds), hints, anti-entropy, storage, operations in flight and the ranges a join streams.
Peers answer the internode method `status` with it; `cluster_status(node)` asks every member the node knows
(in parallel, each bounded by `timeout_s`, so a dead or partitioned member costs one timeout, not a hang) and
puts beside the answers what this node itself sees: members up or down with their phi, the ring's agreement,
and whether the ring still has quorum (`cluster.health`).

Wire format (msgpack map, also the JSON of `/admin/v1/cluster` per node):

    {"node_id", "mode", "ready", "datacenter", "rack", "status",
     "requests": {"read"|"write": {"rate_per_s", "p99_ms" (null: none), "requests"}},
     "hints": {"pending", "bytes", "targets": {node: n}},
     "antientropy": {"enabled", "oldest_unverified_s", "keys_repaired", "ranges":
                     [{"range", "verified_s_ago" (null: never)}]} (null until it starts),
     "storage": {"sstables", "sstable_bytes", "memtable_bytes"},
     "operations": [{"id", "kind", "state", "elapsed_s", "progress", "ratio" (0..1 or null)}],
     "streaming": {"ranges", "done", "failed", "keys", "bytes", "ratio"} (null when it streams nothing)}
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from ringkv.cluster.health import quorum_health
from ringkv.cluster.ids import NodeId
from ringkv.cluster.membership import Status

if TYPE_CHECKING:
    from ringkv.net.node import ClusterNode

TIMEOUT_S = 1.0
MAX_RANGES = 4096  # anti-entropy ranges listed per node (a node holds ~num_tokens * RF)


def _ratio(progress: dict[str, Any]) -> float | None:
    total, done = progress.get("ranges_total"), progress.get("ranges_done")
    if not isinstance(total, int | float) or not isinstance(done, int | float) or total <= 0:
        return None
    return round(min(1.0, max(0.0, done / total)), 4)


def _streaming(node: ClusterNode) -> dict[str, Any] | None:
    ranges = node.join_progress
    if not ranges:
        return None
    done = sum(1 for p in ranges if p.state == "done")
    failed = sum(1 for p in ranges if p.state == "failed")
    return {"ranges": len(ranges), "done": done, "failed": failed, "keys": sum(p.keys for p in ranges),
            "bytes": sum(p.bytes for p in ranges), "ratio": round(done / len(ranges), 4)}


def _antientropy(node: ClusterNode) -> dict[str, Any] | None:
    aae = node.antientropy
    if aae is None:
        return None
    now = time.monotonic()
    ranges = []
    for range_id, replica_range in sorted(aae.ranges.items())[:MAX_RANGES]:
        verified = aae.range_verified_at(range_id)
        ranges.append({"range": replica_range.name,
                       "verified_s_ago": None if verified is None else round(now - verified, 1)})
    return {"enabled": aae.settings.enabled, "oldest_unverified_s": round(aae.oldest_unverified_s(), 1),
            "keys_repaired": aae.stats.keys_pulled + aae.stats.keys_pushed, "ranges": ranges}


def ring_views(node: ClusterNode) -> dict[str, str]:
    """The view of the ring (digest, with the future ring's while a change is in flight) each live member
    gossips; all equal when the cluster agrees."""
    out: dict[str, str] = {}
    for state in node.membership.members.values():
        if state.node_id == node.node_id:
            out[state.node_id] = node.view_digest
        elif node.gossiper.is_up(state.node_id) and state.status in (Status.NORMAL, Status.LEAVING):
            out[state.node_id] = state.ring
    return out


def local_status(node: ClusterNode) -> dict[str, Any]:
    local = node.membership.local
    engine = node.engine.engine
    requests = {
        kind: {"rate_per_s": round(s.rate_per_s, 1), "requests": s.requests,
               "p99_ms": None if s.p99_s is None else round(s.p99_s * 1000, 2)}
        for kind, s in node.recent.summary(time.monotonic()).items()
    }
    hints = node.hints
    return {
        "node_id": node.node_id, "mode": node.mode, "ready": node.ready, "status": local.status.value,
        "datacenter": local.datacenter, "rack": local.rack,
        "requests": requests,
        "hints": {"pending": sum(hints.pending.values()), "bytes": hints.bytes,
                  "targets": {target: n for target, n in sorted(hints.pending.items()) if n}},
        "antientropy": _antientropy(node),
        "storage": {"sstables": engine.table_count, "sstable_bytes": engine.table_bytes,
                    "memtable_bytes": engine.memtable_bytes},
        "operations": [{"id": op.id, "kind": op.kind, "state": op.state,
                        "elapsed_s": op.to_json()["elapsed_s"], "progress": dict(op.progress),
                        "ratio": _ratio(op.progress)}
                       for op in node.operations.running()],
        "streaming": _streaming(node),
    }


async def handle_status(node: ClusterNode, body: Any, peer: str) -> Any:
    """Internode `status`: this node's `local_status` (the body is ignored)."""
    return local_status(node)


async def _ask(node: ClusterNode, member: NodeId, timeout_s: float) -> dict[str, Any]:
    if member == node.node_id:
        return local_status(node)
    try:
        answer = await asyncio.wait_for(node.coordinator.call(member, "status", {}, timeout_s), timeout_s)
    except TimeoutError:
        return {"node_id": member, "error": "timeout"}
    except Exception as e:  # unreachable, refused, not serving: the page shows it as such
        return {"node_id": member, "error": type(e).__name__}
    if not isinstance(answer, dict):
        return {"node_id": member, "error": "bad_answer"}
    answer["node_id"] = member
    return answer


async def cluster_status(node: ClusterNode, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """Every member's status as `node` gathers it, and what `node` sees of them (see the module docstring)."""
    gossiper, coordinator = node.gossiper, node.coordinator
    ring = coordinator.ring
    settings = coordinator.settings
    members = sorted(node.membership.members.values(), key=lambda s: s.node_id)
    asked = [s.node_id for s in members if s.status is not Status.LEFT]
    answers = await asyncio.gather(*(_ask(node, m, timeout_s) for m in asked))
    up = {s.node_id for s in members if s.node_id == node.node_id or gossiper.is_up(s.node_id)}
    views = ring_views(node)
    ownership = ring.ownership(settings.replication) if len(ring) else {}
    health = quorum_health(ring, settings.replication, settings.read_quorum, settings.write_quorum, up)
    return {
        "node_id": node.node_id, "cluster_name": node.config.cluster_name,
        "ring": {"digest": coordinator.ring_digest, "agreed": len(set(views.values())) <= 1, "views": views,
                 "replication_factor": settings.replication, "read_quorum": settings.read_quorum,
                 "write_quorum": settings.write_quorum},
        "quorum": health.to_json(),
        "members": [
            {"node_id": s.node_id, "status": s.status.value, "up": s.node_id in up,
             "local": s.node_id == node.node_id,
             "phi": None if s.node_id == node.node_id else _phi(gossiper.phi(s.node_id)),
             "datacenter": s.datacenter, "rack": s.rack, "tokens": len(s.tokens),
             "ownership": round(ownership.get(s.node_id, 0.0), 4), "view": views.get(s.node_id)}
            for s in members
        ],
        "nodes": {a["node_id"]: a for a in answers},
    }


def _phi(value: float) -> float | None:
    return None if value != value or value == float("inf") else round(min(value, 1e6), 2)
