"""HTTP handlers: parse (validation), act (replica), answer (JSON). Errors go to `errors.error_middleware`."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ringkv.api import keys, openapi, validation
from ringkv.api.errors import error_response, json_response
from ringkv.cluster import versions
from ringkv.cluster.versions import Record
from ringkv.errors import RequestTimeoutError, ShuttingDownError, UnsupportedMediaTypeError

routes = web.RouteTableDef()


async def _json_body(request: web.Request) -> bytes:
    if request.content_type != "application/json":
        raise UnsupportedMediaTypeError("unsupported_media_type", "request body must be application/json")
    if request.app[keys.STATE].stopping:
        raise ShuttingDownError("the node is shutting down")
    if request.content.is_eof():  # the whole body came with the headers (the usual case): nothing to wait for
        return await request.read()
    try:  # bounded by client_max_size (413 before any parsing) and in time (a body trickled in is dropped)
        async with asyncio.timeout(request.app[keys.CONFIG].http_header_timeout_s):
            return await request.read()
    except TimeoutError:
        request.app[keys.METRICS].http_closed.labels("body_timeout").inc()
        if request.transport is not None:
            request.transport.close()
        raise RequestTimeoutError("the request body did not arrive in time") from None


def _value(raw: bytes) -> orjson.Fragment:
    return orjson.Fragment(raw)  # stored values are compact JSON already: no re-encoding


def _read_answer(key: str, record: Record, request: web.Request) -> web.Response:
    metrics = request.app[keys.METRICS]
    context = versions.encode_context(versions.read_context(record))
    values = versions.live_values(record)
    if versions.sibling_warning(record):
        metrics.sibling_warnings.inc()
    if not values:
        # Always with a context (empty for a key never written): a client that read the key and creates it
        # sends it back, so two concurrent creates become siblings instead of the later overwriting the
        # other (a put without a context supersedes whatever its coordinator holds). After a delete it is the
        # tombstone's, so the new write follows it causally.
        return error_response(404, "not_found", "key not found", key=key, context=context)
    metrics.siblings.observe(len(values))
    if len(values) == 1:
        return json_response({"key": key, "value": _value(values[0]), "context": context})
    return json_response({"key": key, "siblings": [_value(v) for v in values], "context": context}, 300)


@routes.get("/api/v1/getValue")
@routes.get("/api/v1/get")
async def get_value(request: web.Request) -> web.Response:
    key, key_bytes = validation.parse_key_query(request.query)
    r = validation.parse_quorum(request.query, "r")
    record = await keys.node_of(request.app).coordinator.get(key_bytes, r)
    return _read_answer(key, record, request)


@routes.post("/api/v1/put")
async def put(request: web.Request) -> web.Response:
    req = validation.parse_put(await _json_body(request))
    w = validation.parse_quorum(request.query, "w")
    record = await keys.node_of(request.app).coordinator.put(req.key_bytes, req.value_json, req.context, w)
    return json_response({"key": req.key, "context": versions.encode_context(versions.read_context(record))})


@routes.post("/api/v1/delete")
async def delete(request: web.Request) -> web.Response:
    req = validation.parse_delete(await _json_body(request))
    w = validation.parse_quorum(request.query, "w")
    record = await keys.node_of(request.app).coordinator.put(req.key_bytes, None, req.context, w)
    return json_response({"key": req.key, "context": versions.encode_context(versions.read_context(record))})


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    """Liveness: the process serves HTTP. Answers from the moment the listener is up, through the storage
    replay and the start of the node (`phase` says which), so that a long replay is not taken for a hang."""
    state = request.app[keys.STATE]
    return json_response({"status": "ok", "node_id": state.node_id, "phase": state.phase})


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    state = request.app[keys.STATE]
    node = state.node if state.storage_open else None
    if node is not None and node.mode == "left":
        return error_response(503, "not_ready", "this node has decommissioned and left the ring; wipe its data "
                              "directory to start it as a new member")
    if state.stopping:
        return error_response(503, "not_ready", "shutting down")
    if node is None:
        return error_response(503, "not_ready", f"starting: {state.phase}", phase=state.phase)
    if not node.ready:
        return error_response(503, "not_ready", "not serving: waiting for the ring" if node.mode == "starting"
                              else f"not serving ({node.mode})", phase=state.phase)
    return json_response({"status": "ready", "node_id": state.node_id})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[keys.METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/api/v1/openapi.json")
async def openapi_document(request: web.Request) -> web.Response:
    return json_response(openapi.document())
