"""Checks of internode request bodies, shared by the handlers.

A handler takes whatever a peer sent: anything msgpack can carry. A malformed body is refused with a
`RequestError` (code `bad_request`, or `InvalidRecordError` for a record that does not decode), never left to
fail deeper with an unexpected exception (which the transport answers `internal_error`, with a traceback in
the log) nor coerced into something else (`bytes(5)` is five zero bytes, `bytes(10**9)` a gigabyte). Messages
name the field and what it must be, never the value: it may be huge, or nested past `repr`'s recursion limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeGuard

from ringkv.cluster import versions
from ringkv.cluster.ids import NodeId
from ringkv.cluster.versions import Record
from ringkv.errors import RequestError

MAX_KEY_BYTES = 10 * 1024  # the client API keeps a key plus its value under 10 KB
MAX_VALUE_BYTES = 10 * 1024
MAX_NODE_ID_CHARS = 256


def bad(message: str) -> RequestError:
    return RequestError("bad_request", message)


def fields(body: Any, method: str) -> Mapping[Any, Any]:
    """The body as a map (every request body but gossip's is one)."""
    if not isinstance(body, dict):
        raise bad(f"{method} takes a map")
    return body


def is_key(value: Any) -> TypeGuard[bytes]:
    return isinstance(value, bytes) and 0 < len(value) <= MAX_KEY_BYTES


def key(body: Mapping[Any, Any], name: str = "key") -> bytes:
    value = body.get(name)
    if not is_key(value):
        raise bad(f"{name} must be bin of 1 to {MAX_KEY_BYTES} bytes")
    return value


def record(body: Mapping[Any, Any], name: str = "record") -> tuple[bytes, Record]:
    """The encoded record in field `name` and what it decodes to (`InvalidRecordError` if it does not)."""
    value = body.get(name)
    if not isinstance(value, bytes):
        raise bad(f"{name} must be bin (an encoded record)")
    return value, versions.decode_record(value)


def node_id(value: Any, name: str) -> NodeId:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NODE_ID_CHARS or "\x00" in value:
        raise bad(f"{name} must be a node id (a string of 1 to {MAX_NODE_ID_CHARS} characters, no NUL)")
    return NodeId(value)


def token(body: Mapping[Any, Any], name: str) -> int:
    value = body.get(name)
    if type(value) is not int or not -(2**63) <= value < 2**63:
        raise bad(f"{name} must be a signed 64-bit token")
    return value


def duration_ms(body: Mapping[Any, Any], name: str) -> float | None:
    """An optional non-negative, finite number of milliseconds (None when absent or nil)."""
    value = body.get(name)
    if value is None:
        return None
    if not ((type(value) is int or (type(value) is float and math.isfinite(value))) and value >= 0):
        raise bad(f"{name} must be a non-negative number of milliseconds")
    return float(value)
