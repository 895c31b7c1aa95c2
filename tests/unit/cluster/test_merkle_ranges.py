"""Merkle trees over token ranges, the range arithmetic: a leaf's bounds hold exactly its tokens (plain,
wrapping and whole-ring ranges), runs of leaves are the union of their leaves, shapes are the same for
every replica and proportional to the range; and the tree algebra anti-entropy relies on: a leaf rebuilt
with `set_leaf` equals a rebuild, any difference between two key sets is detected, updates commute, and a
diff names exactly the leaves (and keys) that differ."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.cluster import merkle
from ringkv.cluster.merkle import RING, MerkleTree, Shape
from ringkv.cluster.ring import token_for

BOTTOM, TOP = -(2**63), 2**63 - 1


def signed(token: int) -> int:
    return (token + 2**63) % RING - 2**63


tokens = st.one_of(st.integers(BOTTOM, TOP), st.sampled_from([BOTTOM, BOTTOM + 1, -1, 0, 1, TOP - 1, TOP]))


@st.composite
def shapes(draw: st.DrawFn, wide: bool = True) -> Shape:
    """Plain, wrapping and whole-ring ranges (lo == hi); `wide`: at least as many tokens as leaves."""
    lo = draw(tokens)
    kind = draw(st.sampled_from(["any", "whole", "narrow", "top"]))
    leaves = draw(st.integers(1, 300))
    if kind == "whole":
        hi = lo
    elif kind == "narrow":  # a span close to the leaf count: leaves of 0, 1 or 2 tokens
        width = draw(st.integers(leaves if wide else 1, 3 * leaves))
        hi = signed(lo + width)
    elif kind == "top":  # ranges ending at or crossing the top of the ring
        lo = draw(st.integers(TOP - 1000, TOP))
        hi = signed(lo + draw(st.integers(1, 3000)))
    else:
        hi = draw(tokens)
    width = merkle.span(lo, hi)
    if wide and width < leaves:
        leaves = width
    return Shape(lo, hi, leaves, draw(st.integers(2, 9)))


@settings(max_examples=300)
@given(shapes(), st.data())
def test_a_leaf_s_bounds_hold_exactly_the_tokens_of_that_leaf(shape: Shape, data: st.DataObject) -> None:
    leaf = data.draw(st.integers(0, shape.leaves - 1))
    a, b = shape.leaf_bounds(leaf)
    bounds = Shape(a, b)
    # the first and the last token of the bounds are in the leaf, wrapping past the top of the ring
    assert shape.leaf_of(signed(a + 1)) == leaf
    assert shape.leaf_of(b) == leaf
    whole_leaf = merkle.span(a, b) == RING  # a one-leaf tree of the whole ring: (a, a] is everything
    if not whole_leaf:
        # just outside: the previous and the next leaf, or outside the range altogether
        for outside in (a, signed(b + 1)):
            assert not shape.holds(outside) or shape.leaf_of(outside) != leaf
    # a random token of the bounds is in the leaf; a random token of the range outside them is not
    inside = signed(a + 1 + data.draw(st.integers(0, merkle.span(a, b) - 1)))
    assert bounds.holds(inside) and shape.leaf_of(inside) == leaf
    other = signed(shape.lo + 1 + data.draw(st.integers(0, merkle.span(shape.lo, shape.hi) - 1)))
    assert (shape.leaf_of(other) == leaf) == bounds.holds(other)
    # the leaves tile the range in order: leaf 0 starts at lo, the last ends at hi
    if leaf == 0:
        assert a == shape.lo
    if leaf == shape.leaves - 1:
        assert b == shape.hi


@settings(max_examples=150)
@given(lo=st.one_of(st.integers(BOTTOM, TOP), st.integers(TOP - 300, TOP)), width=st.integers(1, 400),
       leaves=st.integers(1, 64))
def test_on_small_ranges_every_token_is_in_the_bounds_of_its_own_leaf(lo: int, width: int, leaves: int) -> None:
    """Exhaustively, including ranges narrower than their leaf count (which have empty leaves)."""
    shape = Shape(lo, signed(lo + width), leaves, 4)
    members: dict[int, set[int]] = {i: set() for i in range(leaves)}
    for k in range(width):
        token = signed(lo + 1 + k)
        members[shape.leaf_of(token)].add(token)
    for leaf, held in members.items():
        if not held:
            with pytest.raises(ValueError):
                shape.leaf_bounds(leaf)
            continue
        a, b = shape.leaf_bounds(leaf)
        assert {signed(a + 1 + k) for k in range(merkle.span(a, b))} == held


@settings(max_examples=200)
@given(shapes(), st.data())
def test_the_bounds_of_a_run_of_leaves_are_the_union_of_theirs(shape: Shape, data: st.DataObject) -> None:
    first = data.draw(st.integers(0, shape.leaves - 1))
    last = data.draw(st.integers(first, min(shape.leaves - 1, first + 40)))
    a, b = shape.leaf_bounds(first, last)
    singles = [shape.leaf_bounds(i) for i in range(first, last + 1)]
    assert a == singles[0][0] and b == singles[-1][1]
    for (_, end), (start, _) in itertools.pairwise(singles):
        assert end == start  # neighbours touch: no token lost or counted twice
    covered = sum(merkle.span(x, y) for x, y in singles)
    assert covered == merkle.span(a, b)  # (lo, lo] when the run is every leaf of a whole-ring tree: all
    assert shape.leaf_bounds(0, shape.leaves - 1) == (shape.lo, shape.hi)


def test_leaf_bounds_refuse_leaves_outside_the_tree() -> None:
    shape = Shape(0, 1000, 10, 2)
    for first, last in ((-1, 0), (0, 10), (5, 4), (10, None)):
        with pytest.raises(ValueError):
            shape.leaf_bounds(first, last)


@settings(max_examples=200)
@given(lo=tokens, hi=tokens, total=st.integers(1, 2**17), minimum=st.integers(1, 64), fanout=st.integers(2, 32))
def test_shape_for_is_deterministic_and_proportional_to_the_range(lo: int, hi: int, total: int, minimum: int,
                                                                  fanout: int) -> None:
    shape = merkle.shape_for(lo, hi, total, minimum, fanout)
    assert shape == merkle.shape_for(lo, hi, total, minimum, fanout)  # every replica computes the same
    assert (shape.lo, shape.hi, shape.fanout) == (lo, hi, fanout)
    share = merkle.span(lo, hi) / RING
    assert minimum <= shape.leaves or shape.leaves == total
    assert shape.leaves <= max(total, minimum)
    if minimum < total * share < total:
        assert abs(shape.leaves - total * share) <= 0.5 + 1e-9
    if lo == hi:
        assert shape.leaves == max(minimum, total)


@settings(max_examples=60)
@given(st.lists(st.integers(BOTTOM, TOP), min_size=1, max_size=40, unique=True))
def test_the_trees_of_a_partition_of_the_ring_hold_about_total_leaves(cuts: list[int]) -> None:
    cuts.sort()
    ranges = [(cuts[i - 1], cuts[i]) for i in range(len(cuts))]
    shapes_ = [merkle.shape_for(lo, hi, 4096, 16) for lo, hi in ranges]
    assert sum(merkle.span(s.lo, s.hi) for s in shapes_) == RING
    total = sum(s.leaves for s in shapes_)
    assert 4096 - len(cuts) <= total <= 4096 + len(cuts) * 17
    # a wider range never gets fewer leaves
    by_width = sorted(shapes_, key=lambda s: merkle.span(s.lo, s.hi))
    assert [s.leaves for s in by_width] == sorted(s.leaves for s in by_width)


# --- the tree ----------------------------------------------------------------------------------------------

SHAPES = [Shape(BOTTOM, BOTTOM, 64, 4), Shape(-100, 2**40, 16, 2), Shape(2**62, -(2**62), 37, 5),
          Shape(TOP, TOP, 100, 16), Shape(7, 7, 1, 2), Shape(0, 2**63 - 1, 33, 32)]
keys = st.binary(min_size=1, max_size=10)
digests = st.binary(min_size=16, max_size=16)
records = st.dictionaries(keys, digests, max_size=50)


def in_range(shape: Shape, records_: dict[bytes, bytes]) -> dict[bytes, bytes]:
    return {k: d for k, d in records_.items() if shape.holds(token_for(k))}


def build(shape: Shape, records_: dict[bytes, bytes]) -> MerkleTree:
    return MerkleTree.build(shape, ((token_for(k), k, d) for k, d in in_range(shape, records_).items()))


def leaf_value(shape: Shape, records_: dict[bytes, bytes], leaf: int) -> int:
    value = 0
    for k, d in in_range(shape, records_).items():
        if shape.leaf_of(token_for(k)) == leaf:
            value ^= merkle.entry(k, d)
    return value


@settings(max_examples=80)
@given(st.sampled_from(SHAPES), records, records, st.randoms(use_true_random=False))
def test_rebuilding_leaves_with_set_leaf_equals_a_rebuild(shape: Shape, old: dict[bytes, bytes],
                                                          new: dict[bytes, bytes], rng: random.Random) -> None:
    tree = build(shape, old)
    leaves = list(range(shape.leaves))
    rng.shuffle(leaves)
    for leaf in leaves:  # in any order
        tree.set_leaf(leaf, leaf_value(shape, new, leaf))
    assert tree.levels == build(shape, new).levels  # every level, not only the leaves
    # a corrupted leaf set back to its true value restores the tree exactly
    rebuilt = build(shape, new)
    leaf = rng.randrange(shape.leaves)
    tree.set_leaf(leaf, rng.getrandbits(128))
    tree.set_leaf(leaf, leaf_value(shape, new, leaf))
    assert tree.levels == rebuilt.levels


@settings(max_examples=150)
@given(st.sampled_from(SHAPES), records, records)
def test_any_set_of_changes_is_detected(shape: Shape, a: dict[bytes, bytes], b: dict[bytes, bytes]) -> None:
    ta, tb = build(shape, a), build(shape, b)
    assert (ta.root != tb.root) == (in_range(shape, a) != in_range(shape, b))
    assert (ta == tb) == (in_range(shape, a) == in_range(shape, b))


@settings(max_examples=60)
@given(st.sampled_from(SHAPES), records, st.randoms(use_true_random=False))
def test_the_same_keys_in_any_order_make_the_same_tree(shape: Shape, a: dict[bytes, bytes],
                                                       rng: random.Random) -> None:
    items = list(in_range(shape, a).items())
    rng.shuffle(items)
    tree = MerkleTree(shape)
    for k, d in items:
        tree.insert(token_for(k), k, d)
    assert tree == build(shape, a) and tree.count == len(items)
    rng.shuffle(items)
    for k, d in items[: len(items) // 2]:
        tree.remove(token_for(k), k, d)
    assert tree == build(shape, dict(items[len(items) // 2:])) and tree.count == len(items) - len(items) // 2


@st.composite
def histories(draw: st.DrawFn) -> tuple[Shape, list[tuple[bytes, bytes | None, bytes | None]], dict[bytes, bytes]]:
    """Each key's successive states (None: absent), as (key, old, new) transitions, and the final states."""
    shape = draw(st.sampled_from(SHAPES))
    chains = draw(st.dictionaries(keys, st.lists(st.none() | digests, min_size=1, max_size=6), max_size=25))
    steps: list[tuple[bytes, bytes | None, bytes | None]] = []
    final: dict[bytes, bytes] = {}
    for key, chain in chains.items():
        if not shape.holds(token_for(key)):
            continue
        state: bytes | None = None
        for nxt in chain:
            steps.append((key, state, nxt))
            state = nxt
        if state is not None:
            final[key] = state
    return shape, steps, final


@settings(max_examples=100)
@given(histories(), st.randoms(use_true_random=False))
def test_incremental_updates_applied_in_any_order_equal_a_rebuild(
        history: tuple[Shape, list[tuple[bytes, bytes | None, bytes | None]], dict[bytes, bytes]],
        rng: random.Random) -> None:
    """XOR commutes: the trees of two replicas that saw the same changes in different orders agree, even
    when one key's changes were interleaved out of order (as the tree build reconciles them)."""
    shape, steps, final = history
    rng.shuffle(steps)
    tree = MerkleTree(shape)
    for key, old, new in steps:
        tree.update(token_for(key), key, old, new)
    rebuilt = build(shape, final)
    assert tree == rebuilt and tree.count == rebuilt.count == len(final)


@settings(max_examples=150)
@given(st.sampled_from([*SHAPES, Shape(BOTTOM, BOTTOM, 1000, 7), Shape(5, -5, 50, 50)]), records, records)
def test_a_diff_of_unrelated_key_sets_finds_exactly_the_differing_leaves_and_keys(
        shape: Shape, a: dict[bytes, bytes], b: dict[bytes, bytes]) -> None:
    a, b = in_range(shape, a), in_range(shape, b)
    ta, tb = build(shape, a), build(shape, b)
    differing = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    found = merkle.diff(ta, tb)
    assert set(found.leaves) == {shape.leaf_of(token_for(k)) for k in differing}
    assert list(found.leaves) == sorted(found.leaves)  # leaves come in tree order, each once
    assert merkle.diff(tb, ta).leaves == found.leaves
    keys_found: set[bytes] = set()
    by_leaf = merkle.leaves_by_key(shape, [(k, token_for(k)) for k in a.keys() | b.keys()])
    for leaf in found.leaves:
        mine = {k: a[k] for k in by_leaf.get(leaf, []) if k in a}
        theirs = {k: b[k] for k in by_leaf.get(leaf, []) if k in b}
        keys_found |= set(merkle.differing_keys(mine, theirs))
    assert keys_found == differing
    # the descent looked only below differing nodes: at most `fanout` children for each of them
    differing_inner = sum(1 for level in range(1, len(ta.levels))
                          for x, y in zip(ta.levels[level], tb.levels[level], strict=True) if x != y)
    assert found.hashes_compared <= 1 + shape.fanout * differing_inner


def test_trees_of_different_shapes_are_not_compared() -> None:
    with pytest.raises(ValueError):
        merkle.diff(MerkleTree(Shape(0, 100, 8, 2)), MerkleTree(Shape(0, 100, 8, 4)))
    with pytest.raises(ValueError):
        merkle.diff(MerkleTree(Shape(0, 100, 8, 2)), MerkleTree(Shape(0, 101, 8, 2)))
