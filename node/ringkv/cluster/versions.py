"""Causality for one key: dotted version vector sets (DVV sets), their merge, and their encodings.

Why dotted version vectors
--------------------------
A stored record is the set of concurrent versions (siblings) of one key. Plain version vectors keyed by
client id grow without bound; keyed by server id they cannot tell two writes a coordinator accepted with the
same context apart, so they either lose one of them or keep every old version as a sibling forever (sibling
explosion). Dotted version vector sets (Preguiça, Baquero, Almeida, Fonte, Gonçalves: "Dotted Version
Vectors: Logical Clocks for Optimistic Replication", 2010, and "Scalable and Accurate Causality Tracking for
Eventually Consistent Stores", DAIS 2014; Riak's `dvvset`) keep vectors keyed by server id and give every
version its own *dot*, the single event `(node, n)` that created it. Versions are kept or dropped by their
dot, so a stale write adds exactly one sibling and a write with a fresh context removes exactly what it saw.

The model
---------
- A `Record` is `(versions, context)`. Each `Version` has a unique `Dot`, a value (`bytes`, or `None` for a
  tombstone) and a wall-clock `timestamp_ms` kept for display only: wall clocks never decide which write wins.
- `context` is a `VersionVector`, the causal past of the whole record: it covers every dot of every version
  the record holds, and every dot the record has seen and discarded as superseded. Since a vector is
  downward closed, covering `(X, n)` means covering `(X, 1..n)`.
- A write (`update`) by coordinator X with context C drops the versions whose dots C covers, keeps the rest
  as siblings, and adds a version with the new dot `(X, max(record.context[X], C[X]) + 1)`; the record's
  context becomes `record.context ⊔ C ⊔ {new dot}`. A plain put (no context) uses the record's own context
  as C, so it supersedes everything the coordinator holds at that moment.
- `merge` is the join of the dot-store semilattice: a version survives if both sides hold it, or if one side
  holds it and the other side's context does not cover it (the other side simply has not seen it yet). A
  version one side holds and the other side has seen but no longer holds was superseded, and is dropped.
  Contexts join pointwise. This is commutative, associative and idempotent, so replication, read repair,
  hint replay and anti-entropy may all deliver records in any order, any number of times.
- Sibling dots are stored explicitly. Riak's dvvset stores them positionally (the last k counters of each
  node); the information is the same, and explicit dots are simpler to validate.

Assumptions the caller must uphold
----------------------------------
- **Dots are never reused.** A write for a key coordinated by node X is applied to X's *local* record for that
  key (then replicated by merging), so X's counter for that key only grows on X. The actor in a dot is the
  node id plus an *incarnation* (`ids.actor`), renewed whenever the node cannot prove it kept its counters
  (new or wiped data directory, an unclean stop that may have lost un-fsynced writes, a corrupt record), and
  no version is shown to anyone before it is durable (`ringkv.replica`). Were a dot reissued, two versions
  with one dot would meet and `merge` would keep only one of them.
- **Contexts are genuine.** A client context is only meaningful if it came from a read. A forged context can
  claim to have seen versions that were never read and so discard them; that is the client's own key. The
  coordinator refuses a context claiming more of its own actor than it issued (`ringkv.replica`).

Sibling bound: `update` raises `TooManySiblingsError` when its result would hold more than `SIBLING_LIMIT`
versions (it never drops data to stay under it); `sibling_warning` flags records at `SIBLING_WARN_THRESHOLD`
or more so the caller can log and count them. `merge` never refuses (the data already exists on another
replica): a merged record can exceed the limit, and the next write with a fresh context collapses it.

Client context encoding (opaque to clients; these constants never change without bumping the format byte)::

    token   := base64url-without-padding(format:u8 = 1  body)
    body    := msgpack map {node_id (str): counter (positive int)}, keys sorted, no other entries

`decode_context` accepts only what `encode_context` produces, byte for byte, at most `MAX_CONTEXT_CHARS`
characters and `MAX_CONTEXT_ENTRIES` entries, and raises `InvalidContextError` on anything else.

Record encoding (stored as the value of the key in the storage engine and sent between replicas)::

    record  := format:u8 = 1  crc:u32 (big-endian, CRC-32 (zlib) of body)  body
    body    := msgpack array [context, versions]
    context := msgpack map {node_id (str): counter (positive int)}, keys sorted
    versions:= msgpack array of [node_id (str), counter (int), timestamp_ms (int >= 0), value (bin | nil)],
               sorted by (node_id, counter), dots unique and covered by context; nil = tombstone

`decode_record` raises `InvalidRecordError` on an unknown format byte, a checksum mismatch, or any structural
or invariant violation; it never returns wrong data. A record is one blob with no torn-tail rule of its own:
the storage engine's framing decides whether the blob is whole.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import msgpack

from ringkv import errors
from ringkv.cluster.ids import NodeId

SIBLING_WARN_THRESHOLD: Final = 25
SIBLING_LIMIT: Final = 100
MAX_CONTEXT_CHARS: Final = 4096
MAX_CONTEXT_ENTRIES: Final = 1024
MAX_COUNTER: Final = 2**63 - 1  # fits msgpack's int64 and uint64
MAX_TIMESTAMP_MS: Final = 2**63 - 1

CONTEXT_FORMAT: Final = 1
RECORD_FORMAT: Final = 1
_RECORD_HEAD = struct.Struct(">BI")  # format, crc
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def _check_node(node: object) -> None:
    if type(node) is not str or not node:
        raise ValueError(f"node id must be a non-empty string, got {node!r}")


def _check_counter(counter: object) -> None:
    if type(counter) is not int or not 1 <= counter <= MAX_COUNTER:
        raise ValueError(f"counter must be an integer in 1..{MAX_COUNTER}, got {counter!r}")


@dataclass(frozen=True, order=True)
class Dot:
    """The one event `(node, counter)` that created a version. Ordered by node, then counter."""

    node: NodeId
    counter: int

    def __post_init__(self) -> None:
        _check_node(self.node)
        _check_counter(self.counter)


@dataclass(frozen=True)
class VersionVector:
    """A map node -> highest counter seen, as `(node, counter)` pairs sorted by node; absent means 0."""

    counters: tuple[tuple[NodeId, int], ...] = ()

    def __post_init__(self) -> None:
        previous: str | None = None
        for node, counter in self.counters:
            _check_node(node)
            _check_counter(counter)
            if previous is not None and node <= previous:
                raise ValueError("version vector entries must be sorted by node id and unique")
            previous = node

    @classmethod
    def of(cls, counters: Mapping[NodeId, int]) -> VersionVector:
        """Build from a mapping; zero counters are dropped."""
        return cls(tuple(sorted((node, c) for node, c in counters.items() if c != 0)))

    def as_dict(self) -> dict[NodeId, int]:
        return dict(self.counters)

    def get(self, node: NodeId) -> int:
        for n, counter in self.counters:
            if n == node:
                return counter
        return 0

    def covers(self, dot: Dot) -> bool:
        """Whether the event `dot` is in this causal past."""
        return self.get(dot.node) >= dot.counter

    def descends(self, other: VersionVector) -> bool:
        """`self >= other` pointwise: self has seen everything other has (reflexive)."""
        mine = self.as_dict()
        return all(mine.get(node, 0) >= counter for node, counter in other.counters)

    def dominates(self, other: VersionVector) -> bool:
        """Strictly descends: `self >= other` and `self != other`."""
        return self != other and self.descends(other)

    def concurrent(self, other: VersionVector) -> bool:
        """Neither descends the other."""
        return not self.descends(other) and not other.descends(self)

    def merge(self, other: VersionVector) -> VersionVector:
        """Pointwise max: the least vector that descends both."""
        joined = self.as_dict()
        for node, counter in other.counters:
            joined[node] = max(joined.get(node, 0), counter)
        return VersionVector(tuple(sorted(joined.items())))


@dataclass(frozen=True)
class Version:
    """One sibling: its dot, its value (`None` = tombstone) and a wall-clock time for display only."""

    dot: Dot
    value: bytes | None
    timestamp_ms: int

    def __post_init__(self) -> None:
        if self.value is not None and type(self.value) is not bytes:
            raise ValueError(f"value must be bytes or None, got {type(self.value).__name__}")
        if type(self.timestamp_ms) is not int or not 0 <= self.timestamp_ms <= MAX_TIMESTAMP_MS:
            raise ValueError(f"timestamp_ms must be an integer in 0..{MAX_TIMESTAMP_MS}")

    @property
    def is_tombstone(self) -> bool:
        return self.value is None


@dataclass(frozen=True)
class Record:
    """The stored state of one key: its siblings sorted by dot, and the causal past of the whole record."""

    versions: tuple[Version, ...] = ()
    context: VersionVector = VersionVector()

    def __post_init__(self) -> None:
        previous: Dot | None = None
        for version in self.versions:
            if previous is not None and not previous < version.dot:
                raise ValueError("record versions must be sorted by dot and unique")
            if not self.context.covers(version.dot):
                raise ValueError(f"record context does not cover version dot {version.dot}")
            previous = version.dot


def _record(versions: Iterable[Version], context: VersionVector) -> Record:
    return Record(tuple(sorted(versions, key=lambda v: v.dot)), context)


def empty_record() -> Record:
    """The state of a key nobody has written."""
    return Record()


def update(
    record: Record, context: VersionVector | None, node: NodeId, value: bytes | None, timestamp_ms: int,
    floor: int = 0,
) -> Record:
    """The coordinator `node`'s write of `value` (None = delete) on its local `record`.

    `context` None is a plain put: it supersedes every version `record` holds. Otherwise exactly the versions
    whose dots `context` covers are superseded; the others stay as siblings. The new dot's counter is above
    `floor` as well as above every counter of `node` the record and context know (the floor stands in for
    records this node has reaped, whose counters it no longer holds). Raises `TooManySiblingsError` if the
    result would hold more than `SIBLING_LIMIT` versions, and `InvalidContextError` if the context has
    exhausted the node's counter.
    """
    seen = record.context if context is None else context
    counter = max(record.context.get(node), seen.get(node), floor) + 1
    if counter > MAX_COUNTER:
        raise errors.InvalidContextError(f"context exhausts the counter of node {node!r}")
    dot = Dot(node, counter)
    versions = [v for v in record.versions if not seen.covers(v.dot)]
    versions.append(Version(dot, value, timestamp_ms))
    if len(versions) > SIBLING_LIMIT:
        raise errors.TooManySiblingsError(len(versions), SIBLING_LIMIT)
    new_context = record.context.merge(seen).merge(VersionVector(((node, counter),)))
    return _record(versions, new_context)


def _tiebreak(version: Version) -> tuple[bool, bytes, int]:
    return (version.value is not None, version.value or b"", version.timestamp_ms)


def merge(a: Record, b: Record) -> Record:
    """Join two states of the same key (commutative, associative, idempotent)."""
    if a == b:
        return a
    a_versions = {v.dot: v for v in a.versions}
    b_versions = {v.dot: v for v in b.versions}
    kept: list[Version] = []
    for dot, version in a_versions.items():
        other = b_versions.get(dot)
        if other is not None:
            # Two versions with one dot are equal unless a dot was reused (see the assumptions above); pick
            # one deterministically so that merge stays a semilattice even then.
            kept.append(max(version, other, key=_tiebreak))
        elif not b.context.covers(dot):
            kept.append(version)
    kept.extend(v for dot, v in b_versions.items() if dot not in a_versions and not a.context.covers(dot))
    return _record(kept, a.context.merge(b.context))


def read_context(record: Record) -> VersionVector:
    """The context a read returns to the client: it covers every sibling the client was shown."""
    return record.context


def live_values(record: Record) -> list[bytes]:
    """The values of the non-tombstone siblings, in dot order."""
    return [v.value for v in record.versions if v.value is not None]


def is_deleted(record: Record) -> bool:
    """Whether the record reads as absent: no versions, or only tombstones."""
    return all(v.value is None for v in record.versions)


def descends(a: Record, b: Record) -> bool:
    """Whether `a` already contains everything `b` has, i.e. `merge(a, b) == a`. Read repair sends the merged
    record to every replica that does not descend it."""
    if not a.context.descends(b.context):
        return False
    b_versions = set(b.versions)
    return all(v in b_versions for v in a.versions if b.context.covers(v.dot))


def deleted_at(record: Record) -> int | None:
    """When a deleted record was deleted (the newest of its tombstones' wall-clock times; used only to decide
    when it may be collected), or None if it holds a live value or nothing at all."""
    if not record.versions or not is_deleted(record):
        return None
    return max(v.timestamp_ms for v in record.versions)


def sibling_warning(record: Record) -> bool:
    """Whether the record has `SIBLING_WARN_THRESHOLD` or more versions (worth a log line and a metric)."""
    return len(record.versions) >= SIBLING_WARN_THRESHOLD


# -- encodings ----------------------------------------------------------------------------------------------


class _Map(tuple[tuple[object, object], ...]):
    """A decoded msgpack map kept as its pairs, so duplicate keys stay visible and maps differ from arrays."""

    __slots__ = ()


def _unpack(body: bytes) -> object:
    """Decode msgpack or raise ValueError; maps come back as `_Map`."""
    try:
        decoded: object = msgpack.unpackb(body, raw=False, use_list=True, object_pairs_hook=_Map)
    except Exception as exc:  # msgpack raises a zoo of types on garbage; all mean the same thing here
        raise ValueError(f"not valid msgpack ({type(exc).__name__}: {exc})") from exc
    return decoded


def _vv_to_wire(vv: VersionVector) -> dict[str, int]:
    return dict(vv.counters)


def _vv_from_wire(decoded: object, max_entries: int | None) -> VersionVector:
    if not isinstance(decoded, _Map):
        raise ValueError("version vector must be a msgpack map")
    if max_entries is not None and len(decoded) > max_entries:
        raise ValueError(f"version vector has {len(decoded)} entries (limit {max_entries})")
    pairs: list[tuple[NodeId, int]] = []
    for node, counter in decoded:
        if not isinstance(node, str) or not isinstance(counter, int):
            raise ValueError("version vector entries must map a node id string to an integer counter")
        pairs.append((NodeId(node), counter))
    return VersionVector(tuple(pairs))  # validates counters, order and uniqueness


def encode_context(ctx: VersionVector) -> str:
    """The opaque token a read hands to the client. Raises `InvalidContextError` if it would exceed the caps
    `decode_context` enforces (so no token is ever issued that could not be sent back)."""
    if len(ctx.counters) > MAX_CONTEXT_ENTRIES:
        raise errors.InvalidContextError(
            f"context has {len(ctx.counters)} entries (limit {MAX_CONTEXT_ENTRIES})"
        )
    packed: bytes = msgpack.packb(_vv_to_wire(ctx), use_bin_type=True)
    token = base64.urlsafe_b64encode(bytes([CONTEXT_FORMAT]) + packed).rstrip(b"=").decode("ascii")
    if len(token) > MAX_CONTEXT_CHARS:
        raise errors.InvalidContextError(f"context is {len(token)} characters (limit {MAX_CONTEXT_CHARS})")
    return token


def decode_context(token: str) -> VersionVector:
    """Parse a client's context token; raises `InvalidContextError` on anything `encode_context` would not
    have produced."""
    if len(token) > MAX_CONTEXT_CHARS:
        raise errors.InvalidContextError(f"context is longer than {MAX_CONTEXT_CHARS} characters")
    if not _BASE64URL.fullmatch(token) or len(token) % 4 == 1:
        raise errors.InvalidContextError("context is not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise errors.InvalidContextError("context is not unpadded base64url") from exc
    if not raw or raw[0] != CONTEXT_FORMAT:
        raise errors.InvalidContextError("context has an unknown format")
    try:
        ctx = _vv_from_wire(_unpack(raw[1:]), MAX_CONTEXT_ENTRIES)
    except ValueError as exc:
        raise errors.InvalidContextError(f"malformed context: {exc}") from exc
    if encode_context(ctx) != token:
        raise errors.InvalidContextError("context is not in canonical form")
    return ctx


def encode_record(record: Record) -> bytes:
    """Serialize a record for storage and replication (format in the module docstring)."""
    versions = [[v.dot.node, v.dot.counter, v.timestamp_ms, v.value] for v in record.versions]
    body: bytes = msgpack.packb([_vv_to_wire(record.context), versions], use_bin_type=True)
    return _RECORD_HEAD.pack(RECORD_FORMAT, zlib.crc32(body)) + body


def decode_record(data: bytes) -> Record:
    """Parse `encode_record`'s output; raises `InvalidRecordError` on anything else."""
    if len(data) < _RECORD_HEAD.size:
        raise errors.InvalidRecordError(f"record is {len(data)} bytes, shorter than its header")
    fmt, crc = _RECORD_HEAD.unpack_from(data)
    if fmt != RECORD_FORMAT:
        raise errors.InvalidRecordError(f"unknown record format {fmt}")
    body = bytes(data[_RECORD_HEAD.size :])
    if zlib.crc32(body) != crc:
        raise errors.InvalidRecordError("record checksum mismatch")
    try:
        return _record_from_wire(_unpack(body))
    except ValueError as exc:
        raise errors.InvalidRecordError(f"malformed record: {exc}") from exc


def _record_from_wire(decoded: object) -> Record:
    if not isinstance(decoded, list) or len(decoded) != 2:
        raise ValueError("record must be a 2-element array [context, versions]")
    wire_context, wire_versions = decoded
    context = _vv_from_wire(wire_context, None)
    if not isinstance(wire_versions, list):
        raise ValueError("record versions must be an array")
    versions: list[Version] = []
    for item in wire_versions:
        if not isinstance(item, list) or len(item) != 4:
            raise ValueError("each version must be a 4-element array [node, counter, timestamp_ms, value]")
        node, counter, timestamp_ms, value = item
        if not isinstance(node, str) or not isinstance(counter, int) or not isinstance(timestamp_ms, int):
            raise ValueError("version node must be a string, counter and timestamp_ms integers")
        if value is not None and not isinstance(value, bytes):
            raise ValueError("version value must be binary or nil")
        versions.append(Version(Dot(NodeId(node), counter), value, timestamp_ms))
    return Record(tuple(versions), context)  # validates order, uniqueness and coverage
