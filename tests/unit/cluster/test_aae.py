"""Anti-entropy policy: replica ranges partition the ring by replica set (so two replicas of a range compute
the same range and tree shape), the exchange schedule keeps every (range, peer) pair due at least once an
interval, and the tombstone rules (grace, unanimous confirmation, no copying past the grace)."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.cluster import aae, merkle
from ringkv.cluster import ring as r
from ringkv.cluster.aae import ReplicaRange, Schedule
from ringkv.cluster.ids import NodeId
from ringkv.cluster.ring import NodeInfo, Replication, Ring

BOTTOM, TOP = -(2**63), 2**63 - 1
DCS = ("dc1", "dc2")
RACKS = ("r1", "r2", "r3")


def signed(token: int) -> int:
    return (token + 2**63) % 2**64 - 2**63


def holds(lo: int, hi: int, token: int) -> bool:
    return merkle.Shape(lo, hi).holds(token)


@st.composite
def joined_rings(draw: st.DrawFn) -> tuple[Ring, Replication]:
    """Rings grown as a cluster grows them (`ring.join`: replication-aware allocation), with racks and dcs."""
    n = draw(st.integers(1, 7))
    two_dcs = draw(st.booleans())
    replication: Replication = (draw(st.integers(1, 4)) if not two_dcs or draw(st.booleans())
                                else {"dc1": draw(st.integers(1, 3)), "dc2": draw(st.integers(0, 2))})
    tokens_per_unit = draw(st.integers(1, 6))
    ring = Ring()
    for i in range(n):
        info = NodeInfo(NodeId(f"n{i}"), draw(st.sampled_from(DCS)) if two_dcs else "dc1",
                        draw(st.sampled_from(RACKS)), capacity=draw(st.sampled_from([1.0, 2.0])))
        ring = r.join(ring, info, replication=replication, tokens_per_unit=tokens_per_unit)
    return ring, replication


@st.composite
def random_rings(draw: st.DrawFn) -> tuple[Ring, Replication]:
    """Arbitrary token assignments, tokens crowded into a small interval or anywhere (as test_ring's)."""
    n = draw(st.integers(1, 6))
    infos = [NodeInfo(NodeId(f"n{i}"), "dc1", draw(st.sampled_from(RACKS))) for i in range(n)]
    bound = 1000 if draw(st.booleans()) else TOP
    tokens = draw(st.lists(st.one_of(st.integers(-bound, bound), st.sampled_from([BOTTOM, TOP])),
                           min_size=n, max_size=4 * n, unique=True))
    assignment: dict[NodeInfo, list[int]] = {info: [tokens[i]] for i, info in enumerate(infos)}
    for t in tokens[n:]:
        assignment[infos[draw(st.integers(0, n - 1))]].append(t)
    return Ring(assignment), draw(st.integers(1, 4))


rings = st.one_of(joined_rings(), random_rings())


def probe_tokens(ring: Ring, rng: random.Random) -> list[int]:
    """Every range boundary and its neighbours, the ends of the token space, and random tokens."""
    out = {BOTTOM, TOP, 0}
    for t in ring.tokens:
        out |= {t, signed(t + 1), signed(t - 1)}
    out |= {rng.randint(BOTTOM, TOP) for _ in range(50)}
    return sorted(out)


@settings(max_examples=120, deadline=None)
@given(rings, st.randoms(use_true_random=False))
def test_replica_ranges_cover_the_ring_exactly_once_with_the_replicas_of_their_tokens(
        ring_rf: tuple[Ring, Replication], rng: random.Random) -> None:
    ring, rf = ring_rf
    ranges = aae.replica_ranges(ring, rf)
    assert ranges
    for token in probe_tokens(ring, rng):
        holding = [x for x in ranges if holds(x.lo, x.hi, token)]
        assert len(holding) == 1, (token, holding)
        assert holding[0].replicas == tuple(sorted(ring.preference_list(token, rf)))
    tokens = set(ring.tokens)
    for x in ranges:
        assert x.lo in tokens and x.hi in tokens  # bounds are ring tokens: whole ranges, never cut
        assert aae.parse_range(x.name) == x.id
        assert x.shape() == merkle.shape_for(x.lo, x.hi)  # every replica derives the same tree shape


@settings(max_examples=120, deadline=None)
@given(rings)
def test_neighbouring_replica_ranges_have_different_replicas(ring_rf: tuple[Ring, Replication]) -> None:
    ring, rf = ring_rf
    ranges = aae.replica_ranges(ring, rf)
    if len(ranges) == 1:
        only = ranges[0]
        assert only.lo == only.hi  # one run: the whole ring
        assert {tuple(sorted(ring.preference_list(t, rf))) for t in ring.tokens} == {only.replicas}
        return
    by_lo = {x.lo: x for x in ranges}
    assert len(by_lo) == len(ranges)
    current, seen = ranges[0], 0
    for _ in ranges:  # following each range's end to the next range's start goes once round the ring
        nxt = by_lo[current.hi]
        assert nxt.replicas != current.replicas  # maximal runs: otherwise they would be one range
        current, seen = nxt, seen + 1
    assert current == ranges[0] and seen == len(ranges)
    assert sum(merkle.span(x.lo, x.hi) for x in ranges) == 2**64


@settings(max_examples=120, deadline=None)
@given(rings)
def test_the_ranges_of_a_node_span_what_the_ring_says_it_replicates(ring_rf: tuple[Ring, Replication]) -> None:
    ring, rf = ring_rf
    ranges = aae.replica_ranges(ring, rf)
    for node in ring.nodes:
        mine = aae.ranges_of(ranges, node)
        assert all(node in x.replicas for x in mine)
        held = ring.ranges_for(node, rf)
        # Both are unions of whole ring ranges (t_{i-1}, t_i]: the ring tokens tell them apart exactly.
        for t in ring.tokens:
            assert any(holds(x.lo, x.hi, t) for x in mine) == any(holds(lo, hi, t) for lo, hi in held)
        assert sum(merkle.span(x.lo, x.hi) for x in mine) == sum(merkle.span(lo, hi) for lo, hi in held)
    assert aae.ranges_of(ranges, NodeId("stranger")) == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(BOTTOM, TOP), min_size=3, max_size=30, unique=True), st.integers(3, 5))
def test_three_nodes_with_rf3_or_more_have_one_whole_ring_range(tokens: list[int], rf: int) -> None:
    infos = [NodeInfo(NodeId(f"n{i}"), "dc1", RACKS[i]) for i in range(3)]
    ring = Ring({info: tokens[i::3] for i, info in enumerate(infos)})
    ranges = aae.replica_ranges(ring, rf)
    assert len(ranges) == 1
    whole = ranges[0]
    assert whole.lo == whole.hi == ring.tokens[-1]
    assert whole.replicas == (NodeId("n0"), NodeId("n1"), NodeId("n2"))
    assert whole.peers(NodeId("n1")) == (NodeId("n0"), NodeId("n2"))
    assert whole.shape().leaves == 65536


def test_a_ring_of_joined_nodes_splits_into_ranges_every_replica_agrees_on() -> None:
    ring = Ring()
    for i in range(6):
        ring = r.join(ring, NodeInfo(NodeId(f"n{i}"), "dc1", RACKS[i % 3]), replication=3, tokens_per_unit=4)
    ranges = aae.replica_ranges(ring, 3)
    assert len(ranges) > 1
    assert aae.replica_ranges(ring, 3) == ranges  # deterministic
    assert aae.replica_ranges(Ring(ring.assignments()), 3) == ranges  # the same ring, rebuilt elsewhere
    assert aae.replica_ranges(Ring(), 3) == []
    for x in ranges:
        assert len(x.replicas) == 3 and list(x.replicas) == sorted(x.replicas)


def test_parse_range_refuses_names_without_a_separator() -> None:
    assert aae.parse_range("-5:7") == (-5, 7)
    for bad in ("57", "a:b", ""):
        with pytest.raises(ValueError):
            aae.parse_range(bad)


# --- schedule ----------------------------------------------------------------------------------------------

A, B, C = NodeId("a"), NodeId("b"), NodeId("c")


def pair(i: int, peer: NodeId = A) -> aae.Pair:
    return ((i, i + 1), peer)


def test_sync_tracks_exactly_the_pairs_given() -> None:
    rng = random.Random(1)
    s = Schedule(first_delay_s=5.0)
    s.sync([pair(1), pair(2), pair(3, B)], 100.0, rng)
    assert set(s.due_at) == {pair(1), pair(2), pair(3, B)}
    assert all(100.0 <= at <= 105.0 for at in s.due_at.values())  # new pairs: due soon
    s.due_at[pair(1)] = 150.0
    s.sync([pair(1), pair(4)], 120.0, rng)
    assert set(s.due_at) == {pair(1), pair(4)}  # gone ones forgotten
    assert s.due_at[pair(1)] == 150.0  # kept ones keep their time
    assert 120.0 <= s.due_at[pair(4)] <= 125.0
    s.sync([], 130.0, rng)
    assert s.due_at == {} and s.next_time() is None and s.next_due(1e9) is None


def test_next_due_picks_the_most_overdue_eligible_pair() -> None:
    s = Schedule()
    s.due_at = {pair(1, A): 10.0, pair(2, B): 5.0, pair(3, C): 7.0, pair(4, A): 50.0}
    assert s.next_due(4.0) is None  # nothing due yet
    assert s.next_due(20.0) == pair(2, B)
    assert s.next_due(20.0, {A: True, B: False, C: True}) == pair(3, C)  # a down peer is skipped
    assert s.next_due(20.0, {A: True}) == pair(1, A)  # a peer the map does not name is not eligible
    assert s.next_due(20.0, {}) is None
    assert s.next_due(60.0, {A: True}) == pair(1, A)
    assert s.next_time() == 5.0


@settings(max_examples=100)
@given(interval=st.floats(1.0, 3600.0), jitter=st.floats(0.0, 0.5), retry=st.floats(0.1, 10.0),
       now=st.floats(0.0, 1e6), seed=st.integers(0, 2**32))
def test_done_and_failed_set_the_next_due_time(interval: float, jitter: float, retry: float, now: float,
                                               seed: int) -> None:
    rng = random.Random(seed)
    s = Schedule(interval_s=interval, jitter=jitter, retry_s=retry)
    s.due_at = {pair(1): now - 3.0, pair(2): now - 1.0}
    s.done(pair(1), now, rng)
    assert now + interval * (1 - jitter) - 1e-6 <= s.due_at[pair(1)] <= now + interval + 1e-6
    assert s.next_due(now) == pair(2)  # the one just done is not due again
    s.done(pair(2), now, rng, more=True)  # stopped at the key bound: back soon
    assert s.due_at[pair(2)] == pytest.approx(now + retry)
    s.failed(pair(1), now, rng)
    backoff = min(interval, 5.0)
    assert now + backoff * 0.5 - 1e-6 <= s.due_at[pair(1)] <= now + backoff + 1e-6
    s.done(pair(9), now, rng)
    s.failed(pair(9), now, rng)
    assert pair(9) not in s.due_at  # an exchange of a pair dropped meanwhile does not bring it back


@pytest.mark.parametrize("count", [1, 10, 100, 240])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_pair_is_due_at_least_once_an_interval_in_a_simulated_run(count: int, seed: int) -> None:
    """The loop as `AntiEntropy.run` drives it: the most overdue pair, at most 4 a second, 15 simulated
    minutes. Every pair comes due at most `interval` after its last exchange, and with up to 240 pairs (what
    4 a second can do in a minute) none waits long once due, none is starved, and each gets its first
    exchange within the first minute."""
    rng = random.Random(seed)
    s = Schedule(interval_s=60.0, jitter=0.1, first_delay_s=5.0)
    pairs = [pair(i, (A, B, C)[i % 3]) for i in range(count)]
    s.sync(pairs, 0.0, rng)
    rate, now = 4.0, 0.0
    last: dict[aae.Pair, float] = {}
    runs = dict.fromkeys(pairs, 0)
    worst_wait = 0.0
    while now < 900.0:
        due = s.next_due(now)
        if due is None:
            now = min(s.due_at.values())
            continue
        if due not in last:
            assert now <= 60.0  # the first exchange of every pair, within a minute of the start
        else:
            worst_wait = max(worst_wait, now - s.due_at[due]) if now > 120.0 else worst_wait
        last[due] = now
        runs[due] += 1
        s.done(due, now, rng)
        assert s.due_at[due] <= now + 60.0  # due again at most an interval later
        now += 1.0 / rate
    assert min(runs.values()) >= 14  # nobody starved: about 900 / 57 exchanges each
    assert worst_wait <= 60.0 * 0.1  # once due, a pair runs within the jitter window


# --- tombstone rules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("deleted_at", "now", "grace_s", "expected"), [
    (None, 10**12, 0.0, False),  # not deleted (or nothing there): never reaped
    (1_000, 1_000, 0.0, True),  # no grace: at once
    (1_000, 1_000 + 86_400_000, 86_400.0, True),  # exactly the grace
    (1_000, 1_000 + 86_399_999, 86_400.0, False),  # a millisecond short
    (5_000, 1_000, 1.0, False),  # deleted "in the future" (a clock behind): wait
    (0, 1_500, 1.5, True),
])
def test_past_grace(deleted_at: int | None, now: int, grace_s: float, expected: bool) -> None:
    assert aae.past_grace(deleted_at, now, grace_s) is expected


@pytest.mark.parametrize(("answers", "expected"), [
    ({B: True, C: True}, True),
    ({B: True, C: False}, False),  # one holds something else
    ({B: True}, False),  # a missing answer blocks
    ({}, False),
    ({A: False, B: True, C: True}, True),  # our own entry does not count
    ({B: True, C: True, NodeId("x"): False}, True),  # nor does a node that is not a replica
])
def test_all_confirm(answers: Mapping[NodeId, bool], expected: bool) -> None:
    assert aae.all_confirm((A, B, C), A, answers) is expected


def test_all_confirm_with_no_other_replica_is_trivially_true() -> None:
    assert aae.all_confirm((A,), A, {})


@pytest.mark.parametrize(("past_grace", "theirs_present", "expected"), [
    (False, False, True),  # a live record or a young tombstone goes to a replica that lacks it
    (False, True, True),
    (True, True, True),  # an old tombstone still goes to a replica holding an older version (else it resurrects)
    (True, False, False),  # but not to one that has nothing: that would undo a reap
])
def test_should_copy(past_grace: bool, theirs_present: bool, expected: bool) -> None:
    assert aae.should_copy(past_grace, theirs_present) is expected


def test_replica_range_peers_and_names() -> None:
    x = ReplicaRange(-5, 10, (A, B, C))
    assert x.id == (-5, 10) and x.name == "-5:10"
    assert x.peers(B) == (A, C) and x.peers(NodeId("z")) == (A, B, C)
    assert x.shape(total_leaves=1024, fanout=8) == merkle.shape_for(-5, 10, 1024, fanout=8)
