"""Admin and debug endpoints: ring placement, gossip members, what one replica holds, pending hints.

These read local state only (no quorum) and are meant for operators, the Kubernetes operator and tests.
"""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ringkv.api import keys, validation
from ringkv.api.errors import error_response, json_response
from ringkv.cluster import aae, versions
from ringkv.cluster.ring import token_for
from ringkv.net import cleanup, decommission, drain, removenode
from ringkv.net.operations import DONE, Operation
from ringkv.net.status import ring_views

if TYPE_CHECKING:
    from ringkv.net.node import ClusterNode

admin_routes = web.RouteTableDef()


@admin_routes.get("/admin/v1/ring")
async def ring(request: web.Request) -> web.Response:
    node = keys.node_of(request.app)
    coordinator = node.coordinator
    ring = coordinator.ring
    n = coordinator.settings.replication
    ownership = ring.ownership(n) if len(ring) else {}
    views = ring_views(node)
    body: dict[str, Any] = {
        "digest": coordinator.ring_digest,
        "view": node.view_digest,
        "agreed": len(set(views.values())) <= 1,
        "views": views,
        "joining": sorted(p for p in (coordinator.future.nodes if coordinator.future is not None else ())
                          if p not in ring),
        "conflicts": list(node.ring_conflicts),
        "replication_factor": n,
        "read_quorum": coordinator.settings.read_quorum,
        "write_quorum": coordinator.settings.write_quorum,
        "nodes": [
            {"node_id": info.node_id, "datacenter": info.datacenter, "rack": info.rack, "capacity": info.capacity,
             "tokens": len(tokens), "ownership": round(ownership.get(info.node_id, 0.0), 6)}
            for info, tokens in sorted(ring.assignments().items(), key=lambda kv: kv[0].node_id)
        ],
    }
    if "key" in request.query:
        _, key_bytes = validation.parse_key_query(request.query)
        body["key"] = {"token": token_for(key_bytes), "preference_list": list(coordinator.preference(key_bytes))}
    if request.query.get("tokens") == "1":
        body["tokens"] = [[t, o] for t, o in zip(ring.tokens, ring.owners, strict=True)]
    return json_response(body)


@admin_routes.get("/admin/v1/node")
async def node_state(request: web.Request) -> web.Response:
    """This node: its mode (starting, joining, normal, leaving, left, drained, stopping), identity, view of the
    ring and whether every live member shares it, the ranges it is streaming in, and its storage usage."""
    node = keys.node_of(request.app)
    views = ring_views(node)
    return json_response({
        "node_id": node.node_id, "mode": node.mode, "ready": node.ready, "actor": node.replica.actor,
        "ring": node.coordinator.ring_digest, "view": node.view_digest,
        "agreed": len(set(views.values())) <= 1, "views": views,
        "streaming": [p.to_json() for p in node.join_progress],
        "storage": storage_usage(node),
    })


def storage_usage(node: ClusterNode) -> dict[str, int]:
    """What this node's data takes and what its volume has left (for a capacity check before shrinking)."""
    engine = node.engine.engine
    disk = shutil.disk_usage(node.config.data_dir)
    return {"sstable_bytes": engine.table_bytes, "memtable_bytes": engine.memtable_bytes,
            "disk_total_bytes": disk.total, "disk_free_bytes": disk.free}


@admin_routes.get("/admin/v1/members")
async def members(request: web.Request) -> web.Response:
    node = keys.node_of(request.app)
    gossiper = node.gossiper
    out = []
    for state in sorted(node.membership.members.values(), key=lambda s: s.node_id):
        local = state.node_id == node.node_id
        out.append({
            "node_id": state.node_id, "status": state.status.value, "up": gossiper.is_up(state.node_id),
            "local": local, "phi": None if local else round(gossiper.phi(state.node_id), 3),
            "host": state.host, "http_port": state.http_port, "peer_port": state.peer_port,
            "generation": state.generation, "version": state.version, "tokens": len(state.tokens),
            "datacenter": state.datacenter, "rack": state.rack, "capacity": state.capacity,
        })
    return json_response({"node_id": node.node_id, "cluster_name": node.config.cluster_name, "members": out})


@admin_routes.get("/admin/v1/local")
async def local_record(request: web.Request) -> web.Response:
    """What this node's own storage holds for one key: every sibling with its dot, and the context."""
    key, key_bytes = validation.parse_key_query(request.query)
    record = await keys.node_of(request.app).replica.read(key_bytes)
    if not record.versions:
        return error_response(404, "not_found", "this node holds no record for the key", key=key)
    return json_response({
        "key": key,
        "node_id": keys.node_of(request.app).node_id,
        "actor": keys.node_of(request.app).replica.actor,
        "versions": [
            {"node": v.dot.node, "counter": v.dot.counter, "timestamp_ms": v.timestamp_ms,
             "deleted": v.value is None, "value": None if v.value is None else orjson.Fragment(v.value)}
            for v in record.versions
        ],
        "context": versions.encode_context(record.context),
    })


@admin_routes.get("/admin/v1/hints")
async def hints(request: web.Request) -> web.Response:
    store = keys.node_of(request.app).hints
    return json_response({"pending": dict(store.pending), "bytes": store.bytes, "stored": store.stored,
                          "delivered": store.delivered, "dropped": store.dropped, "corrupt": store.corrupt,
                          "delivered_bytes": store.delivered_bytes})


@admin_routes.get("/admin/v1/antientropy")
async def antientropy(request: web.Request) -> web.Response:
    """This node's anti-entropy: its ranges, their trees, when each was last verified with each replica."""
    node = keys.node_of(request.app)
    if node.antientropy is None:
        return error_response(503, "not_ready", "anti-entropy has not started yet")
    return json_response(node.antientropy.status())


@admin_routes.post("/admin/v1/repair")
async def start_repair(request: web.Request) -> web.Response:
    """Start a repair of every range this node replicates, or of one (`{"range": "lo:hi"}`): 202 with the
    operation, whose progress `GET /admin/v1/repair/{id}` shows."""
    node = keys.node_of(request.app)
    if node.antientropy is None:
        return error_response(503, "not_ready", "anti-entropy has not started yet")
    wanted = validation.parse_repair(await request.read())
    ranges = None
    if wanted is not None:
        try:
            ranges = [aae.parse_range(wanted)]
        except ValueError as e:
            return error_response(400, "invalid_range", str(e))
    op = node.antientropy.start_repair(ranges)
    return json_response(op.to_json(), status=202)


@admin_routes.get("/admin/v1/repair")
async def list_repairs(request: web.Request) -> web.Response:
    ops = keys.node_of(request.app).operations
    return json_response({"operations": [op.to_json() for op in ops.all.values() if op.kind == "repair"]})


@admin_routes.get("/admin/v1/repair/{op_id}")
async def get_repair(request: web.Request) -> web.Response:
    op = keys.node_of(request.app).operations.get(request.match_info["op_id"])
    if op is None or op.kind != "repair":
        return error_response(404, "not_found", "no such repair operation", id=request.match_info["op_id"])
    return json_response(op.to_json())


def _start_once(node: Any, kind: str, params: dict[str, Any], check: Callable[[], None],
                run: Callable[[Operation], Awaitable[None]]) -> web.Response:
    """Start an operation (202), unless one of `kind` with the same `params` is running: that one (200).
    `check` raises a `change_in_progress` error when it may not start now."""
    running = [op for op in node.operations.running(kind) if op.params == params]
    if running:
        return json_response(running[0].to_json())
    check()
    return json_response(node.operations.start(kind, params, run).to_json(), status=202)


@admin_routes.post("/admin/v1/decommission")
async def start_decommission(request: web.Request) -> web.Response:
    """Hand this node's ranges to their new owners and leave the ring (202 with the operation; a decommission
    already running is returned as it is, 200)."""
    node = keys.node_of(request.app)
    return _start_once(node, "decommission", {}, lambda: decommission.check(node),
                       lambda op: decommission.run(node, op))


@admin_routes.post("/admin/v1/drain")
async def start_drain(request: web.Request) -> web.Response:
    """Stop taking client requests, finish those in flight and flush, before a planned stop (202)."""
    node = keys.node_of(request.app)
    done = [op for op in node.operations.all.values() if op.kind == "drain" and op.state == DONE]
    if done and node.mode == "drained":
        return json_response(done[-1].to_json())
    return _start_once(node, "drain", {}, lambda: drain.check(node), lambda op: drain.run(node, op))


@admin_routes.get("/admin/v1/operations")
async def list_operations(request: web.Request) -> web.Response:
    ops = keys.node_of(request.app).operations
    return json_response({"operations": [op.to_json() for op in ops.all.values()]})


@admin_routes.get("/admin/v1/operations/{op_id}")
async def get_operation(request: web.Request) -> web.Response:
    op = keys.node_of(request.app).operations.get(request.match_info["op_id"])
    if op is None:
        return error_response(404, "not_found", "no such operation", id=request.match_info["op_id"])
    return json_response(op.to_json())


@admin_routes.post("/admin/v1/removenode")
async def start_removenode(request: web.Request) -> web.Response:
    """Re-replicate a dead node's ranges from the other replicas and take it out of the ring (202 with the
    operation; `{"node": "<node id>"}`)."""
    node = keys.node_of(request.app)
    target = validation.parse_node_request(await request.read())
    return _start_once(node, "removenode", {"node": target}, lambda: removenode.check(node, target),
                       lambda op: removenode.run(node, target, op))


@admin_routes.post("/admin/v1/cleanup")
async def start_cleanup(request: web.Request) -> web.Response:
    """Drop the records this node no longer replicates (202 with the operation)."""
    node = keys.node_of(request.app)
    return _start_once(node, "cleanup", {}, lambda: cleanup.check(node), lambda op: cleanup.run(node, op))
