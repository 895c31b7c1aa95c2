"""Request validation: bodies and query parameters in, typed requests out. Pure: no aiohttp, no I/O.

Rules (the API contract; `openapi.py` documents the same):
- bodies are JSON objects with only the documented fields;
- a key is a non-empty string;
- a value is a JSON string, list or object (numbers, booleans and null are refused);
- the UTF-8 key plus the compact JSON of the value must be under `MAX_ITEM_BYTES` (10,240) bytes;
- a context, when present (and not null), is a token a read returned (see `versions.decode_context`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from ringkv.cluster import versions
from ringkv.cluster.ids import NodeId
from ringkv.cluster.versions import VersionVector
from ringkv.errors import PayloadTooLargeError, RequestError

MAX_ITEM_BYTES = 10 * 1024


@dataclass(frozen=True)
class PutRequest:
    key: str
    key_bytes: bytes
    value_json: bytes  # compact JSON of the value, as stored
    context: VersionVector | None


@dataclass(frozen=True)
class DeleteRequest:
    key: str
    key_bytes: bytes
    context: VersionVector | None


def _object(body: bytes, allowed: frozenset[str]) -> dict[str, object]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise RequestError("invalid_json", f"request body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise RequestError("invalid_body", "request body must be a JSON object")
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise RequestError("unknown_field", f"unknown field(s): {', '.join(unknown)}")
    return doc


def parse_repair(body: bytes) -> str | None:
    """A repair request: `{}` or an empty body (every range), or `{"range": "lo:hi"}`."""
    if not body.strip():
        return None
    doc = _object(body, frozenset({"range"}))
    value = doc.get("range")
    if value is not None and not isinstance(value, str):
        raise RequestError("invalid_range", "range must be a string lo:hi")
    return value


def parse_node_request(body: bytes) -> NodeId:
    """`{"node": "<node id>"}` (removenode)."""
    doc = _object(body, frozenset({"node"}))
    value = doc.get("node")
    if not isinstance(value, str) or not value:
        raise RequestError("missing_field", "node (a node id) is required")
    return NodeId(value)


def check_key(key: object) -> bytes:
    """The key's UTF-8 bytes; raises RequestError/PayloadTooLargeError for a bad key."""
    if key is None:
        raise RequestError("missing_field", "field 'key' is required")
    if not isinstance(key, str):
        raise RequestError("invalid_key", "key must be a string")
    if not key:
        raise RequestError("invalid_key", "key must not be empty")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError("invalid_key", "key must be valid Unicode (no lone surrogates)") from None
    if len(raw) >= MAX_ITEM_BYTES:
        raise PayloadTooLargeError("key_too_large", f"key is {len(raw)} bytes; key plus value must be under "
                                   f"{MAX_ITEM_BYTES} bytes")
    return raw


def _context(doc: Mapping[str, object]) -> VersionVector | None:
    token = doc.get("context")
    if token is None:
        return None
    if not isinstance(token, str):
        raise RequestError("invalid_context", "context must be the string a read returned")
    return versions.decode_context(token)


def parse_put(body: bytes) -> PutRequest:
    doc = _object(body, frozenset({"key", "value", "context"}))
    key_bytes = check_key(doc.get("key"))
    if "value" not in doc:
        raise RequestError("missing_field", "field 'value' is required")
    value = doc["value"]
    if not isinstance(value, str | list | dict):
        raise RequestError("invalid_value", "value must be a JSON string, list or object")
    try:
        value_json = orjson.dumps(value)
    except orjson.JSONEncodeError:  # orjson reads 1024 levels of nesting but writes only 254
        raise RequestError("invalid_value", "value is nested too deeply") from None
    size = len(key_bytes) + len(value_json)
    if size >= MAX_ITEM_BYTES:
        raise PayloadTooLargeError(
            "value_too_large",
            f"key plus compact JSON value is {size} bytes; it must be under {MAX_ITEM_BYTES} bytes",
        )
    return PutRequest(str(doc["key"]), key_bytes, value_json, _context(doc))


def parse_delete(body: bytes) -> DeleteRequest:
    doc = _object(body, frozenset({"key", "context"}))
    key_bytes = check_key(doc.get("key"))
    return DeleteRequest(str(doc["key"]), key_bytes, _context(doc))


def parse_key_query(query: Mapping[str, str]) -> tuple[str, bytes]:
    key = query.get("key")
    return key or "", check_key(key)


def parse_quorum(query: Mapping[str, str], name: str) -> int | None:
    """The optional per-request `r` or `w` (range-checked against N by the coordinator)."""
    raw = query.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 3:
        raise RequestError("invalid_quorum", f"{name} must be a positive integer")
    return int(raw)
