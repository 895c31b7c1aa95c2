"""Merkle trees over token ranges: incremental updates equal a rebuild, any change is detected, a diff finds
exactly the leaves (and so the keys) that differ, and only differing subtrees are looked at."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.cluster import merkle
from ringkv.cluster.merkle import MerkleTree, Shape
from ringkv.cluster.ring import token_for

SHAPES = [Shape(-(2**63), -(2**63), 64, 4), Shape(-100, 2**40, 16, 2), Shape(2**62, -(2**62), 37, 5)]
keys = st.binary(min_size=1, max_size=12)
digests = st.binary(min_size=16, max_size=16)


def in_range(shape: Shape, key: bytes) -> bool:
    return shape.holds(token_for(key))


def build(shape: Shape, records: dict[bytes, bytes]) -> MerkleTree:
    return MerkleTree.build(shape, ((token_for(k), k, d) for k, d in records.items() if in_range(shape, k)))


@settings(max_examples=60)
@given(st.sampled_from(SHAPES), st.dictionaries(keys, digests, max_size=60),
       st.lists(st.tuples(keys, st.none() | digests), max_size=60))
def test_incremental_updates_equal_a_rebuild(shape: Shape, start: dict[bytes, bytes],
                                             changes: list[tuple[bytes, bytes | None]]) -> None:
    records = dict(start)
    tree = build(shape, records)
    for key, digest in changes:
        if not in_range(shape, key):
            continue
        tree.update(token_for(key), key, records.get(key), digest)
        if digest is None:
            records.pop(key, None)
        else:
            records[key] = digest
    rebuilt = build(shape, records)
    assert tree == rebuilt
    assert tree.count == rebuilt.count == sum(1 for k in records if in_range(shape, k))


@settings(max_examples=80)
@given(st.sampled_from(SHAPES), st.dictionaries(keys, digests, max_size=60),
       st.dictionaries(keys, st.none() | digests, min_size=1, max_size=8))
def test_a_diff_finds_exactly_the_leaves_of_the_keys_that_differ(shape: Shape, base: dict[bytes, bytes],
                                                                 changes: dict[bytes, bytes | None]) -> None:
    other = dict(base)
    for key, digest in changes.items():
        if digest is None:
            other.pop(key, None)
        else:
            other[key] = digest
    a, b = build(shape, base), build(shape, other)
    differing = {k for k in base.keys() | other.keys() if base.get(k) != other.get(k) and in_range(shape, k)}
    found = merkle.diff(a, b)
    assert set(found.leaves) == {shape.leaf_of(token_for(k)) for k in differing}
    assert (a.root != b.root) == bool(differing)  # any set of changes is detected
    for leaf in found.leaves:
        mine = {k: d for k, d in base.items() if in_range(shape, k) and shape.leaf_of(token_for(k)) == leaf}
        theirs = {k: d for k, d in other.items() if in_range(shape, k) and shape.leaf_of(token_for(k)) == leaf}
        assert set(merkle.differing_keys(mine, theirs)) == {k for k in differing
                                                              if shape.leaf_of(token_for(k)) == leaf}


def test_equal_trees_cost_one_comparison_and_one_difference_costs_a_path() -> None:
    shape = Shape(-(2**63), -(2**63), 1024, 32)
    records = {b"key-%d" % i: merkle.record_digest(b"v%d" % i) for i in range(2000)}
    a, b = build(shape, records), build(shape, records)
    assert merkle.diff(a, b) == merkle.Diff((), 1)
    b.update(token_for(b"key-7"), b"key-7", records[b"key-7"], merkle.record_digest(b"changed"))
    d = merkle.diff(a, b)
    assert d.leaves == (shape.leaf_of(token_for(b"key-7")),)
    assert d.hashes_compared == 1 + 32 + 32  # root, one branch's children, one leaf group: not 1024 leaves


def test_leaves_split_the_range_evenly_and_refuse_tokens_outside_it() -> None:
    shape = Shape(0, 1000, 10, 2)
    assert [shape.leaf_of(t) for t in (1, 100, 101, 1000)] == [0, 0, 1, 9]
    with pytest.raises(ValueError):
        shape.leaf_of(0)  # the range is (lo, hi]
    with pytest.raises(ValueError):
        shape.leaf_of(1001)
    wrapping = Shape(2**63 - 10, -(2**63) + 10, 4, 2)  # crosses the top of the ring
    assert wrapping.holds(2**63 - 1) and wrapping.holds(-(2**63)) and not wrapping.holds(0)
    assert Shape(5, 5).holds(5) and Shape(5, 5).holds(-(2**63))  # lo == hi: the whole ring


def test_serialized_trees_round_trip_and_damage_is_refused() -> None:
    shape = Shape(-5, 2**50, 64, 4)
    tree = build(shape, {b"k%d" % i: merkle.record_digest(b"%d" % i) for i in range(300)})
    data = tree.to_bytes()
    assert MerkleTree.from_bytes(data) == tree and MerkleTree.from_bytes(data).count == tree.count
    for broken in (data[:-1], data[:10] + bytes([data[10] ^ 1]) + data[11:], b"XXXXX" + data[5:]):
        with pytest.raises(ValueError):
            MerkleTree.from_bytes(broken)
