"""The OpenAPI 3 document of the node's public API. Kept next to the routes; the fuzz test checks that the
running node answers as documented."""

from __future__ import annotations

from functools import cache
from typing import Any

from ringkv import __version__
from ringkv.api.validation import MAX_ITEM_BYTES


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Malformed request: bad JSON, missing or wrong fields, bad context",
        401: "No credentials (unauthenticated) or a token the cluster does not accept (invalid_token)",
        403: "The token's role does not allow this (forbidden): read < write < admin",
        404: "Key absent or deleted; carries a context (the tombstone's, or an empty one) to create it with",
        405: "Method not allowed",
        409: "The write would leave more than 100 concurrent versions; resolve them first",
        413: "Request body over the limit, or key plus value not under 10,240 bytes",
        415: "Body is not application/json",
        500: "Internal error (stored data failed a checksum)",
        503: "Storage unavailable or node shutting down",
    }
    return {str(s): _json("Error", text[s]) for s in statuses}


# A key is under MAX_ITEM_BYTES UTF-8 bytes, so never longer than this many characters (the exact limit is in
# bytes, key plus value: 413). Not claimed for the query parameter: percent-encoded, a key over the limit can
# make the request line longer than the server reads (`server.MAX_REQUEST_LINE`), and aiohttp answers that
# before any handler runs, with a plain-text 400 this document cannot describe.
MAX_KEY_CHARS = MAX_ITEM_BYTES - 1
_KEY_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS}

_KEY_PARAM = {
    "name": "key", "in": "query", "required": True, "description": "the key (non-empty string)",
    "schema": {"type": "string", "minLength": 1},
}

def _quorum_param(name: str, what: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False,
            "description": f"{what} for this request (1..N; default from the cluster settings)",
            "schema": {"type": "integer", "minimum": 1, "maximum": 15}}


_GET = {
    "summary": "Read a key",
    "description": "One value (200) or concurrent siblings (300); either way a context to write back with.",
    "parameters": [_KEY_PARAM, _quorum_param("r", "replies to wait for")],
    "responses": {
        "200": _json("Value", "The key's value"),
        "300": _json("Siblings", "Concurrent versions; write back with the context to resolve them"),
        **_errors(400, 404, 413, 500, 503),
    },
}


OPEN_PATHS = ("/health", "/ready", "/metrics", "/api/v1/openapi.json")  # no credentials needed (auth.py)


def _secured(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation outside OPEN_PATHS needs a bearer token (or a client certificate over HTTPS) and may
    answer 401 and 403 (not on a node run --insecure)."""
    out: dict[str, Any] = {}
    for path, item in paths.items():
        if path in OPEN_PATHS:
            out[path] = item
            continue
        out[path] = {method: {**op, "security": [{"bearer": []}],
                              "responses": {**op["responses"], **_errors(401, 403)}}
                     for method, op in item.items()}
    return out


@cache
def document() -> dict[str, Any]:
    value_schema = {"oneOf": [{"type": "string"}, {"type": "array"}, {"type": "object"}],
                    "description": "a JSON string, list or object"}
    context_schema = {"type": "string", "maxLength": 4096,
                      "description": "opaque causal context returned by a read or write"}
    write_body = {"required": True, "content": {"application/json": {"schema": {}}}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "ringkv node API",
            "version": __version__,
            "description": f"Key plus compact JSON value must be under {MAX_ITEM_BYTES} bytes.",
        },
        "paths": _secured({
            "/api/v1/put": {"post": {
                "summary": "Write a key",
                "description": "Without a context: overwrite what this node holds. With the context of a read: "
                               "replace exactly the versions that read saw; anything newer stays a sibling.",
                "parameters": [_quorum_param("w", "durable acknowledgements to wait for")],
                "requestBody": {**write_body, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/PutRequest"}}}},
                "responses": {"200": _json("WriteResult", "Durably written"),
                              **_errors(400, 409, 413, 415, 500, 503)},
            }},
            "/api/v1/getValue": {"get": {**_GET, "operationId": "getValue"}},
            "/api/v1/get": {"get": {**_GET, "operationId": "get", "summary": "Read a key (alias)"}},
            "/api/v1/delete": {"post": {
                "summary": "Delete a key",
                "description": "Writes a tombstone carrying causal context, like a put.",
                "parameters": [_quorum_param("w", "durable acknowledgements to wait for")],
                "requestBody": {**write_body, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/DeleteRequest"}}}},
                "responses": {"200": _json("WriteResult", "Durably deleted"),
                              **_errors(400, 409, 413, 415, 500, 503)},
            }},
            "/admin/v1/ring": {"get": {
                "summary": "Ring: replication settings, each node's tokens and ownership, a key's preference list",
                "parameters": [{**_KEY_PARAM, "required": False}],
                "responses": {"200": {"description": "the ring", "content": {"application/json": {"schema": {
                    "type": "object"}}}}, **_errors(400, 413)}}},
            "/admin/v1/members": {"get": {
                "summary": "Gossip view: members, status, liveness, phi",
                "responses": {"200": {"description": "members", "content": {"application/json": {"schema": {
                    "type": "object"}}}}}}},
            "/admin/v1/local": {"get": {
                "summary": "What this node's own storage holds for a key (no quorum)",
                "parameters": [_KEY_PARAM],
                "responses": {"200": {"description": "the local record", "content": {"application/json": {
                    "schema": {"type": "object"}}}}, **_errors(400, 404, 413, 500, 503)}}},
            "/admin/v1/hints": {"get": {
                "summary": "Hints held for other nodes",
                "responses": {"200": {"description": "hint counts", "content": {"application/json": {"schema": {
                    "type": "object"}}}}}}},
            "/health": {"get": {"summary": "Liveness", "responses": {"200": _json("Status", "Alive")}}},
            "/ready": {"get": {"summary": "Readiness", "responses": {
                "200": _json("Status", "Ready to serve"), "503": _json("Error", "Not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {
                    "type": "string"}}}}}}},
            "/api/v1/openapi.json": {"get": {"summary": "This document", "responses": {
                "200": {"description": "OpenAPI 3", "content": {"application/json": {"schema": {
                    "type": "object"}}}}}}},
        }),
        "components": {"securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "a token from `ringkv certs create-token` (roles read, write, admin)"}},
            "schemas": {
            "PutRequest": {"type": "object", "additionalProperties": False, "required": ["key", "value"],
                           "properties": {"key": _KEY_SCHEMA, "value": value_schema,
                                          "context": {**context_schema, "nullable": True}}},
            "DeleteRequest": {"type": "object", "additionalProperties": False, "required": ["key"],
                              "properties": {"key": _KEY_SCHEMA,
                                             "context": {**context_schema, "nullable": True}}},
            "WriteResult": {"type": "object", "required": ["key", "context"], "additionalProperties": False,
                            "properties": {"key": {"type": "string"}, "context": context_schema}},
            "Value": {"type": "object", "required": ["key", "value", "context"], "additionalProperties": False,
                      "properties": {"key": {"type": "string"}, "value": value_schema,
                                     "context": context_schema}},
            "Siblings": {"type": "object", "required": ["key", "siblings", "context"],
                         "additionalProperties": False,
                         "properties": {"key": {"type": "string"},
                                        "siblings": {"type": "array", "minItems": 2, "items": value_schema},
                                        "context": context_schema}},
            "Status": {"type": "object", "required": ["status"],
                       "properties": {"status": {"type": "string"}, "node_id": {"type": "string"}}},
            "Error": {"type": "object", "required": ["error", "message"],
                      "properties": {"error": {"type": "string", "description": "stable machine-readable code"},
                                     "message": {"type": "string"}, "key": {"type": "string"},
                                     "context": context_schema}},
        }},
    }
