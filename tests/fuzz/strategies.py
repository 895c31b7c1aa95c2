"""Hypothesis strategies for hostile internode input: msgpack values of every type (huge and negative ints,
NaN and infinities, bin and str, extension types, deep nesting), request-shaped bodies whose fields hold such
values, structure-aware mutations of valid bodies (records re-framed with a valid checksum, so the mutation
reaches past the checksum), and byte-level frames (length prefixes that lie, truncations, non-msgpack)."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack
from hypothesis import strategies as st

INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1
BOUNDARY_INTS = (0, 1, -1, 2, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32, 2**53, 2**63 - 1, INT64_MIN,
                 UINT64_MAX, 10**9, -(10**9))

ints = st.integers(INT64_MIN, UINT64_MAX) | st.sampled_from(BOUNDARY_INTS)
floats = st.floats() | st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e300, 0.5])
texts = st.text(max_size=12) | st.sampled_from(["", "\x00", "é", "a" * 300, "ringkv", "seed-a", "normal", "left"])
blobs = st.binary(max_size=24) | st.sampled_from([b"", b"\x00", b"\xff" * 9, b"k" * 10241])
exts = st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)) | st.builds(
    msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999))
scalars = st.none() | st.booleans() | ints | floats | texts | blobs | exts


def nested(depth: int, leaf: Any = None, as_map: bool = False) -> Any:
    out = leaf
    for _ in range(depth):
        out = {"k": out} if as_map else [out]
    return out


# deep enough to blow Python's recursion limit in str()/repr() (1000), shallow enough to unpack (1024)
deep = st.builds(nested, st.sampled_from([64, 600, 1000]), scalars, st.booleans())

shallow_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(texts | blobs, children, max_size=4),
    max_leaves=12,
)
values = shallow_values | deep

# The fields the handlers read (coordinator, gossip, anti-entropy, streaming, join): maps of these names
# reach past a handler's first checks.
FIELDS = ("key", "value", "w", "context", "budget_ms", "ring", "record", "target", "lo", "hi", "leaves", "fanout",
          "level", "nodes", "ids", "max_keys", "keys", "records", "cursor", "limit", "sources")
MEMBER_FIELDS = ("id", "gen", "ver", "status", "host", "http", "peer", "tokens", "dc", "rack", "cap", "ring",
                 "replaces", "by")

maps_of_fields = st.dictionaries(st.sampled_from(FIELDS), values | st.lists(values, max_size=4), max_size=7)
# Host names a gossip state may carry: never a name that takes a DNS lookup to refuse (the node gossips with
# what it absorbs), nor a port that could reach another cluster's node (the target runs under its own cluster
# name anyway).
SAFE_HOSTS = ("127.0.0.1", "localhost", "", "::1", "h\x00st", "0")
safe_hosts = st.sampled_from(SAFE_HOSTS)
member_like = st.fixed_dictionaries({}, optional={f: safe_hosts if f == "host" else values for f in MEMBER_FIELDS})
bodies = values | maps_of_fields | st.lists(member_like, max_size=3)


# -- mutations of valid bodies ----------------------------------------------------------------------------

_RECORD_HEAD = struct.Struct(">BI")


def _record_body(value: bytes) -> Any:
    """The decoded msgpack inside an encoded record (`versions.encode_record`), or None if it is not one."""
    if len(value) <= _RECORD_HEAD.size or value[0] != 1:
        return None
    _, crc = _RECORD_HEAD.unpack_from(value)
    body = value[_RECORD_HEAD.size:]
    if zlib.crc32(body) != crc:
        return None
    try:
        return msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException):
        return None


def reframe(inner: Any) -> bytes:
    """An encoded record holding `inner`, with a valid checksum."""
    body: bytes = msgpack.packb(inner, use_bin_type=True)
    return _RECORD_HEAD.pack(1, zlib.crc32(body)) + body


def _tweak_int(draw: st.DrawFn, value: int) -> Any:
    near = [v for v in (value + 1, value - 1, -value, value * 2 + 1) if INT64_MIN <= v <= UINT64_MAX]
    return draw(st.sampled_from([*near, *BOUNDARY_INTS]) | ints)


def _tweak_bytes(draw: st.DrawFn, value: bytes) -> Any:
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return value[:draw(st.integers(0, max(0, len(value) - 1)))]  # truncated
    if choice == 1 and value:
        i = draw(st.integers(0, len(value) - 1))
        return value[:i] + bytes([value[i] ^ draw(st.integers(1, 255))]) + value[i + 1:]  # a flipped byte
    if choice == 2:
        return value + draw(st.binary(min_size=1, max_size=16))
    if choice == 3:
        return value.decode("latin-1")  # str where bin was expected
    inner = _record_body(value)
    if inner is not None:  # a record: mutate what it holds, keep the checksum valid
        return reframe(draw(mutations(inner)))
    return draw(blobs)


def _tweak(draw: st.DrawFn, value: Any, field: str | None) -> Any:
    if field == "host":
        return draw(safe_hosts)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return _tweak_int(draw, value)
    if isinstance(value, bytes):
        return _tweak_bytes(draw, value)
    if isinstance(value, str):
        return draw(st.sampled_from([value + "x", value[:-1], value.encode(), value * 50, ""]) | texts)
    if isinstance(value, list):
        choice = draw(st.integers(0, 4))
        if choice == 0 and value:
            i = draw(st.integers(0, len(value) - 1))
            return value[:i] + value[i + 1:]  # an element dropped
        if choice == 1 and value:
            return value + [value[draw(st.integers(0, len(value) - 1))]] * draw(st.integers(1, 3))  # duplicated
        if choice == 2:
            return {str(i): v for i, v in enumerate(value)}  # a map where a list was expected
        if choice == 3:
            return [*value, draw(values)]
        return draw(values)
    if isinstance(value, dict):
        choice = draw(st.integers(0, 3))
        if choice == 0 and value:
            drop = draw(st.sampled_from(sorted(value, key=repr)))
            return {k: v for k, v in value.items() if k != drop}  # a field missing
        if choice == 1:  # a field added or replaced
            name = draw(st.sampled_from(FIELDS + MEMBER_FIELDS))
            return {**value, name: draw(safe_hosts if name == "host" else values)}
        if choice == 2:
            return list(value.values())  # a list where a map was expected
        return draw(values)
    return draw(values)


@st.composite
def _mutated(draw: st.DrawFn, value: Any, field: str | None, depth: int) -> Any:
    # Hypothesis shrinks towards the first option: an unchanged node, so failures shrink to few mutations.
    action = draw(st.sampled_from(["keep", "descend", "tweak", "replace"]) if depth < 6 else st.just("keep"))
    if action == "keep":
        return value
    if action == "replace":
        return draw(safe_hosts if field == "host" else values)
    if action == "tweak":
        return _tweak(draw, value, field)
    if isinstance(value, list):
        return [draw(_mutated(v, field, depth + 1)) for v in value]
    if isinstance(value, dict):
        return {k: draw(_mutated(v, k if isinstance(k, str) else None, depth + 1)) for k, v in value.items()}
    if isinstance(value, bytes) and (inner := _record_body(value)) is not None:
        return reframe(draw(_mutated(inner, None, depth + 1)))
    return _tweak(draw, value, field)


def mutations(seed: Any) -> st.SearchStrategy[Any]:
    """`seed` with a few of its nodes (anywhere in the structure) dropped, duplicated, retyped or replaced."""
    return _mutated(seed, None, 0)


# -- frames as bytes --------------------------------------------------------------------------------------


def _prefixed(payload: bytes, length: int) -> bytes:
    return struct.pack(">I", length) + payload


def packed(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


@st.composite
def request_shaped(draw: st.DrawFn) -> list[Any]:
    """`[tag, request_id, method, body]` with any of them of the wrong type, or one element short or long."""
    tag = draw(st.sampled_from([0, 1, -1, 0.0, False, "0", b"\x00"]) | scalars)
    request_id = draw(ints | floats | texts | blobs | st.lists(ints, max_size=2) | st.none())
    method = draw(st.sampled_from(["ping", "coordinate", "read", "aae_hashes", "nope", "", "PING", b"ping"])
                  | texts | blobs | ints | floats | st.lists(ints, max_size=2) | st.just({"a": 1}))
    out = [tag, request_id, method, draw(bodies)]
    size = draw(st.sampled_from([4, 4, 3, 5]))
    return out[:size] if size < 4 else out + [draw(scalars)] * (size - 4)


def length_prefixed(payload: bytes, draw: st.DrawFn) -> bytes:
    """`payload` behind a length prefix that is right, or lies (short, long, zero, over the limit)."""
    n = len(payload)
    lie = draw(st.sampled_from(["right", "right", "short", "long", "zero", "huge", "max"]))
    length = {"right": n, "short": max(0, n - 1), "long": n + 7, "zero": 0, "huge": 16 * 1024 * 1024 + 1,
              "max": 2**32 - 1}[lie]
    return _prefixed(payload, length)


@st.composite
def raw_frames(draw: st.DrawFn) -> bytes:
    """Bytes for a connection: a few frames (msgpack of anything, request-shaped lists with confused types,
    non-msgpack bytes) behind honest or lying length prefixes, possibly cut off anywhere."""
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["value", "request", "bytes", "prefix-only"]))
        if kind == "value":
            payload = packed(draw(values))
        elif kind == "request":
            payload = packed(draw(request_shaped()))
        elif kind == "bytes":
            payload = draw(st.binary(max_size=64))
        else:
            parts.append(draw(st.binary(max_size=3)))  # not even a whole length prefix
            continue
        parts.append(length_prefixed(payload, draw))
    data = b"".join(parts)
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return data
