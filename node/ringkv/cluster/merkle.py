"""Merkle trees over a token range, for anti-entropy: which keys two replicas of a range disagree on. Pure.

Layout (as Riak's Tictac AAE): a tree covers the ring tokens of one range `(lo, hi]` (wrapping past the
top; `lo == hi` is the whole ring). Its `leaves` buckets split the range's token span evenly; a key falls in
the bucket of its token. A bucket's hash is the XOR of `entry(key, digest)` over the keys in it, where
`digest` is a hash of the key's encoded record and `entry` a 128-bit hash of both; inner nodes are the XOR of
their `fanout` children, up to one root. Because XOR is its own inverse, a write is applied incrementally —
`update(token, key, old_digest, new_digest)` XORs the old entry out and the new one in, along the leaf's path
to the root (O(depth)) — and the result never depends on the order of updates, so an incrementally
maintained tree equals one rebuilt from a scan.

Comparing two trees of the same shape (`diff`) descends from the root into differing children only and
returns the differing leaves; their keys are then compared one by one. Two different key sets collide only if
their entries' XOR cancels: with 128-bit entries that is a 2**-128 event, never seen in practice.

Serialized form (`to_bytes`; persisted by the caller, never change without bumping the version)::

    tree   := magic "RKVMT" version:u8 = 1  lo:i64  hi:i64  leaves:u32  fanout:u32  count:u64
              leaf hash x leaves (16 bytes each, big-endian)  crc32:u32 (of everything before it)

All integers big-endian. `from_bytes` raises ValueError on a wrong magic, version, size or checksum.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import mmh3

RING = 2**64
MAGIC = b"RKVMT"
VERSION = 1
_HEAD = struct.Struct(">5sBqqIIQ")
_CRC = struct.Struct(">I")
HASH_BYTES = 16
DEFAULT_LEAVES = 1024
DEFAULT_FANOUT = 32


def record_digest(encoded_record: bytes) -> bytes:
    """The digest of one key's encoded record (equal records encode equally: versions and context sorted)."""
    return bytes(mmh3.hash_bytes(encoded_record))


def entry(key: bytes, digest: bytes) -> int:
    """A key's contribution to its leaf: 128 bits of `H(len(key) ‖ key ‖ digest)`."""
    return int.from_bytes(mmh3.hash_bytes(struct.pack(">I", len(key)) + key + digest, 0x52AA), "big")


def span(lo: int, hi: int) -> int:
    """How many tokens the range (lo, hi] holds (the whole ring when lo == hi)."""
    return (hi - lo) % RING or RING


def _signed(token: int) -> int:
    return (token + 2**63) % RING - 2**63


def shape_for(lo: int, hi: int, total_leaves: int = 65536, minimum: int = 16, fanout: int = 16) -> Shape:
    """The shape both replicas of range (lo, hi] use: leaves in proportion to the range's share of the ring
    (`total_leaves` for the whole ring, at least `minimum`), so that a leaf holds about the same number of
    keys in every range and a node's trees together hold about `total_leaves * RF / nodes` leaves."""
    leaves = max(minimum, min(total_leaves, round(total_leaves * span(lo, hi) / RING)))
    return Shape(lo, hi, leaves, fanout)


@dataclass(frozen=True)
class Shape:
    lo: int
    hi: int
    leaves: int = DEFAULT_LEAVES
    fanout: int = DEFAULT_FANOUT

    def __post_init__(self) -> None:
        if self.leaves < 1 or self.fanout < 2:
            raise ValueError("a tree needs at least one leaf and a fanout of at least 2")
        if not (-(2**63) <= self.lo < 2**63 and -(2**63) <= self.hi < 2**63):
            raise ValueError("range bounds must be signed 64-bit tokens")

    def leaf_of(self, token: int) -> int:
        """The bucket of `token`, which must lie in (lo, hi]."""
        offset = (token - self.lo - 1) % RING  # 0 .. span-1 for tokens in the range
        width = span(self.lo, self.hi)
        if offset >= width:
            raise ValueError(f"token {token} is outside the range ({self.lo}, {self.hi}]")
        return offset * self.leaves // width

    def leaf_bounds(self, first: int, last: int | None = None) -> tuple[int, int]:
        """The token range `(a, b]` holding exactly the tokens of leaves `first..last` (default: one leaf)."""
        last = first if last is None else last
        if not 0 <= first <= last < self.leaves:
            raise ValueError(f"leaves {first}..{last} are outside 0..{self.leaves - 1}")
        width = span(self.lo, self.hi)
        # leaf i holds the offsets o with i*width <= o*leaves < (i+1)*width (token = lo + 1 + o)
        start = -(-first * width // self.leaves)
        end = -(-(last + 1) * width // self.leaves)
        if start == end:  # a range narrower than its leaf count has empty leaves (never in practice)
            raise ValueError(f"leaves {first}..{last} hold no tokens")
        return _signed(self.lo + start), _signed(self.lo + end)

    def holds(self, token: int) -> bool:
        return (token - self.lo - 1) % RING < span(self.lo, self.hi)

    def level_sizes(self) -> list[int]:
        """Node counts per level, leaves first, root (1) last."""
        sizes = [self.leaves]
        while sizes[-1] > 1:
            sizes.append(-(-sizes[-1] // self.fanout))
        return sizes


class MerkleTree:
    """One range's tree; `levels[0]` are the leaves, `levels[-1] == [root]`."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.levels: list[list[int]] = [[0] * n for n in shape.level_sizes()]
        self.count = 0  # keys in the tree (maintained by insert/remove)

    @classmethod
    def build(cls, shape: Shape, entries: Iterable[tuple[int, bytes, bytes]]) -> MerkleTree:
        """From a scan: (token, key, digest) of every key in the range."""
        tree = cls(shape)
        leaves = tree.levels[0]
        for token, key, digest in entries:
            leaves[shape.leaf_of(token)] ^= entry(key, digest)
            tree.count += 1
        tree.recompute()
        return tree

    def recompute(self) -> None:
        fanout = self.shape.fanout
        for below, above in zip(self.levels, self.levels[1:], strict=False):
            for i in range(len(above)):
                acc = 0
                for h in below[i * fanout:(i + 1) * fanout]:
                    acc ^= h
                above[i] = acc

    def _apply(self, leaf: int, delta: int) -> None:
        index = leaf
        for level in self.levels:
            level[index] ^= delta
            index //= self.shape.fanout

    def insert(self, token: int, key: bytes, digest: bytes) -> None:
        self._apply(self.shape.leaf_of(token), entry(key, digest))
        self.count += 1

    def remove(self, token: int, key: bytes, digest: bytes) -> None:
        self._apply(self.shape.leaf_of(token), entry(key, digest))
        self.count -= 1

    def update(self, token: int, key: bytes, old: bytes | None, new: bytes | None) -> None:
        """A key's record changed from digest `old` to `new` (None: absent before / after)."""
        if old == new:
            return
        delta = (entry(key, old) if old is not None else 0) ^ (entry(key, new) if new is not None else 0)
        self._apply(self.shape.leaf_of(token), delta)
        self.count += (new is not None) - (old is not None)

    def set_leaf(self, leaf: int, value: int) -> None:
        """Overwrite one leaf's hash (a leaf rebuilt from a scan) and fix its path to the root."""
        delta = self.levels[0][leaf] ^ value
        if delta:
            self._apply(leaf, delta)

    def hashes(self, level: int, indexes: Sequence[int]) -> list[int]:
        """The hashes of the nodes `indexes` of `level` (0: leaves)."""
        row = self.levels[level]
        return [row[i] for i in indexes]

    @property
    def root(self) -> int:
        return self.levels[-1][0]

    def children(self, level: int, index: int) -> list[int]:
        """The hashes of node (`level`, `index`)'s children (level 0 has none)."""
        fanout = self.shape.fanout
        return self.levels[level - 1][index * fanout:(index + 1) * fanout]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MerkleTree) and self.shape == other.shape and self.levels == other.levels

    # -- serialization --

    def to_bytes(self) -> bytes:
        s = self.shape
        body = _HEAD.pack(MAGIC, VERSION, s.lo, s.hi, s.leaves, s.fanout, self.count) + b"".join(
            h.to_bytes(HASH_BYTES, "big") for h in self.levels[0])
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> MerkleTree:
        if len(data) < _HEAD.size + _CRC.size:
            raise ValueError("tree is shorter than its header")
        magic, version, lo, hi, leaves, fanout, count = _HEAD.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            raise ValueError(f"not a version {VERSION} tree")
        if len(data) != _HEAD.size + leaves * HASH_BYTES + _CRC.size:
            raise ValueError("tree size does not match its leaf count")
        (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
        if zlib.crc32(data[:-_CRC.size]) != crc:
            raise ValueError("tree checksum mismatch")
        tree = cls(Shape(lo, hi, leaves, fanout))
        tree.levels[0] = [int.from_bytes(data[_HEAD.size + i * HASH_BYTES:_HEAD.size + (i + 1) * HASH_BYTES], "big")
                          for i in range(leaves)]
        tree.count = count
        tree.recompute()
        return tree


@dataclass(frozen=True)
class Diff:
    leaves: tuple[int, ...]  # the differing leaves
    hashes_compared: int  # how many node hashes the descent had to look at (what an exchange ships)


def diff(a: MerkleTree, b: MerkleTree) -> Diff:
    """The leaves where `a` and `b` differ, descending only into differing subtrees."""
    if a.shape != b.shape:
        raise ValueError("trees of different shapes cannot be compared")
    top = len(a.levels) - 1
    compared = 1
    frontier = [0] if a.levels[top][0] != b.levels[top][0] else []
    for level in range(top, 0, -1):
        nxt: list[int] = []
        fanout = a.shape.fanout
        for index in frontier:
            mine, theirs = a.children(level, index), b.children(level, index)
            compared += len(mine)
            nxt.extend(index * fanout + i for i, (x, y) in enumerate(zip(mine, theirs, strict=True)) if x != y)
        frontier = nxt
    return Diff(tuple(frontier), compared)


def differing_keys(mine: dict[bytes, bytes], theirs: dict[bytes, bytes]) -> list[bytes]:
    """Of one leaf's keys (key -> digest on each side), those whose records differ or exist on one side only."""
    return sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))


def leaves_by_key(shape: Shape, tokens: Sequence[tuple[bytes, int]]) -> dict[int, list[bytes]]:
    """Group keys (with their tokens) by leaf."""
    out: dict[int, list[bytes]] = {}
    for key, token in tokens:
        out.setdefault(shape.leaf_of(token), []).append(key)
    return out
