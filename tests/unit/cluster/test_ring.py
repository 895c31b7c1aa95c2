from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Hashable, Mapping

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.cluster import ring as r
from ringkv.cluster.ids import NodeId, Token
from ringkv.cluster.ring import NodeInfo, Replication, Ring

DCS = ("dc1", "dc2", "dc3")
RACKS = ("r1", "r2", "r3")


def node(k: int, datacenter: str = "dc1", rack: str = "rack1", capacity: float = 1.0) -> NodeInfo:
    return NodeInfo(NodeId(f"n{k:02d}"), datacenter, rack, capacity)


def spread(share: Mapping[NodeId, float], ring: Ring) -> float:
    """max/min of each node's share per unit of capacity."""
    per_unit = [share[n] / ring.nodes[n].capacity for n in ring.nodes]
    return max(per_unit) / min(per_unit)


def random_keys(count: int, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(r.TOKEN_MIN, r.TOKEN_MAX + 1) for _ in range(count)]


@pytest.fixture(scope="module")
def grown() -> list[Ring]:
    """grown[n]: n equal nodes n00..n{n-1} that joined one after another (RF 3, default tokens)."""
    rings = [Ring()]
    for k in range(16):
        rings.append(r.join(rings[-1], node(k)))
    return rings


# --- tokens ------------------------------------------------------------------------------------------------


def test_token_for_is_signed_murmur3() -> None:
    for key in (b"", b"a", b"user:42", bytes(range(256))):
        token = r.token_for(key)
        assert token == mmh3.hash64(key, signed=True)[0]
        assert r.TOKEN_MIN <= token <= r.TOKEN_MAX
    assert r.token_for(b"user:42") == r.token_for(b"user:42")


def test_token_count_follows_capacity() -> None:
    assert r.token_count(node(0)) == 16
    assert r.token_count(node(0, capacity=2.0)) == 32
    assert r.token_count(node(0, capacity=0.01)) == 1
    assert r.token_count(node(0, capacity=1.5), tokens_per_unit=8) == 12


# --- the ring as a value -----------------------------------------------------------------------------------


def test_ring_construction_and_edits() -> None:
    a, b = node(0), node(1, rack="r2")
    ring = Ring({a: [10, -5], b: [0]})
    assert ring.tokens == (-5, 0, 10)
    assert ring.owners == ("n00", "n01", "n00")
    assert ring.tokens_of(a.node_id) == (-5, 10)
    assert len(ring) == 2 and a.node_id in ring
    assert ring == Ring({b: [0], a: [-5, 10]}) and hash(ring) == hash(Ring({b: [0], a: [-5, 10]}))
    assert ring.without_node(b.node_id) == Ring({a: [-5, 10]})
    assert ring.without_node(b.node_id).with_node(b, [0]) == ring
    moved = ring.with_node(node(1, rack="r3"), [3])  # replaces the node's description and tokens
    assert moved.tokens == (-5, 3, 10) and moved.nodes[b.node_id].rack == "r3"
    with pytest.raises(KeyError):
        ring.without_node(NodeId("nope"))


def test_ring_rejects_bad_assignments() -> None:
    with pytest.raises(ValueError, match="claimed by both"):
        Ring({node(0): [1, 2], node(1): [2]})
    with pytest.raises(ValueError, match="no tokens"):
        Ring({node(0): []})
    with pytest.raises(ValueError, match="64-bit"):
        Ring({node(0): [2**63]})
    with pytest.raises(ValueError):
        node(0, capacity=0.0)


def test_owner_is_the_first_token_at_or_after_the_key() -> None:
    ring = Ring({node(0): [-100], node(1): [0], node(2): [100]})
    assert ring.owner(-100) == "n00"
    assert ring.owner(-99) == "n01"
    assert ring.owner(0) == "n01"
    assert ring.owner(50) == "n02"
    assert ring.owner(101) == "n00"  # wraps past the top
    assert ring.owner(r.TOKEN_MIN) == "n00"
    with pytest.raises(LookupError):
        Ring().owner(0)


# --- placement ---------------------------------------------------------------------------------------------


def test_preference_list_is_the_first_n_distinct_nodes_clockwise() -> None:
    ring = Ring({node(0): [0, 10], node(1): [20], node(2): [30, 40], node(3): [50]})
    assert ring.preference_list(5, 3) == ("n00", "n01", "n02")
    assert ring.preference_list(25, 3) == ("n02", "n03", "n00")  # n02's second token is skipped
    assert ring.preference_list(45, 2) == ("n03", "n00")
    assert ring.preference_list(45, 9) == ("n03", "n00", "n01", "n02")  # RF above the node count: all
    assert ring.preference_list(5, 0) == ()


def test_preference_list_prefers_distinct_racks() -> None:
    # clockwise: n00 r1, n01 r1, n02 r1, n03 r2, n04 r3
    ring = Ring(
        {
            node(0): [0],
            node(1): [10],
            node(2): [20],
            node(3, rack="r2"): [30],
            node(4, rack="r3"): [40],
        }
    )
    assert ring.preference_list(0, 3) == ("n00", "n03", "n04")
    # Only two racks among the candidates: a rack repeats, the earliest clockwise node filling in.
    two_racks = ring.without_node(NodeId("n04"))
    assert two_racks.preference_list(0, 3) == ("n00", "n01", "n03")


def test_int_replication_prefers_distinct_datacenters() -> None:
    ring = Ring(
        {
            node(0): [0],
            node(1, rack="r2"): [10],
            node(2, rack="r3"): [20],
            node(3, datacenter="dc2"): [30],
        }
    )
    assert ring.preference_list(0, 2) == ("n00", "n03")
    assert ring.preference_list(0, 3) == ("n00", "n01", "n03")


def test_per_datacenter_replication() -> None:
    ring = Ring(
        {
            node(0, datacenter="dc1", rack="a"): [0],
            node(1, datacenter="dc2", rack="x"): [10],
            node(2, datacenter="dc1", rack="a"): [20],
            node(3, datacenter="dc1", rack="b"): [30],
            node(4, datacenter="dc2", rack="x"): [40],
            node(5, datacenter="dc1", rack="c"): [50],
        }
    )
    assert ring.preference_list(0, {"dc1": 3, "dc2": 1}) == ("n00", "n01", "n03", "n05")
    assert ring.preference_list(0, {"dc1": 2, "dc2": 2}) == ("n00", "n01", "n03", "n04")
    assert ring.preference_list(0, {"dc2": 5}) == ("n01", "n04")  # fewer nodes than RF: all of them
    assert ring.preference_list(0, {"dc1": 1, "elsewhere": 3}) == ("n00",)


def test_extended_preference_list_appends_fallbacks_clockwise() -> None:
    ring = Ring({node(k): [k * 10] for k in range(6)})
    assert ring.extended_preference_list(0, 2) == ("n00", "n01", "n02", "n03", "n04")
    assert ring.extended_preference_list(35, 9) == ("n04", "n05", "n00", "n01", "n02", "n03")
    assert ring.extended_preference_list(0, 0) == ring.preference_list(0)
    assert list(ring.walk(25)) == ["n03", "n04", "n05", "n00", "n01", "n02"]


def test_ranges_for_merges_adjacent_ranges_and_wraps() -> None:
    ring = Ring({node(0): [0, 10], node(1): [20], node(2): [30]})
    assert ring.ranges_for(NodeId("n00"), 1) == [(30, 10)]  # (30, top] + (bottom, 0] + (0, 10]
    assert ring.ranges_for(NodeId("n01"), 1) == [(10, 20)]
    assert ring.ranges_for(NodeId("n01"), 2) == [(30, 20)]  # n00 holds two ranges in a row
    assert ring.ranges_for(NodeId("n02"), 3) == [(30, 30)]  # everything
    lone = Ring({node(0): [7]})
    assert lone.ranges_for(NodeId("n00"), 3) == [(7, 7)]
    assert lone.ownership(3) == {"n00": 1.0}


# --- placement invariants over random topologies -----------------------------------------------------------


@st.composite
def topologies(draw: st.DrawFn) -> Ring:
    n = draw(st.integers(1, 8))
    infos = [
        NodeInfo(NodeId(f"n{i}"), datacenter=draw(st.sampled_from(DCS)), rack=draw(st.sampled_from(RACKS)))
        for i in range(n)
    ]
    small = draw(st.booleans())  # tokens crowded into a small interval, or anywhere
    bound = 1000 if small else r.TOKEN_MAX
    tokens = draw(st.lists(st.integers(-bound, bound), min_size=n, max_size=4 * n, unique=True))
    assignment: dict[NodeInfo, list[int]] = {info: [tokens[i]] for i, info in enumerate(infos)}
    for t in tokens[n:]:
        assignment[infos[draw(st.integers(0, n - 1))]].append(t)
    return Ring(assignment)


replications = st.one_of(
    st.integers(1, 5),
    st.dictionaries(st.sampled_from((*DCS, "dcX")), st.integers(0, 4), min_size=1, max_size=3),
)


def reference_preference_list(ring: Ring, key: int, replication: Replication) -> tuple[NodeId, ...]:
    """The placement rule applied to the whole clockwise walk, without the early stop or the caches."""
    order = [ring.nodes[n] for n in ring.walk(key)]
    groups: list[tuple[int, list[NodeInfo], tuple[Callable[[NodeInfo], Hashable], ...]]]
    if isinstance(replication, int):
        groups = [(replication, order, (lambda i: i.datacenter, lambda i: (i.datacenter, i.rack)))]
    else:
        groups = [
            (rf, [i for i in order if i.datacenter == dc], (lambda i: i.rack,))
            for dc, rf in replication.items()
        ]
    chosen: set[NodeId] = set()
    for rf, members, levels in groups:
        picked: list[NodeInfo] = []
        for domain in levels:
            used = {domain(p) for p in picked}
            for m in members:
                if len(picked) < rf and m not in picked and domain(m) not in used:
                    picked.append(m)
                    used.add(domain(m))
        picked += [m for m in members if m not in picked][: max(rf - len(picked), 0)]
        chosen |= {p.node_id for p in picked}
    return tuple(i.node_id for i in order if i.node_id in chosen)


@settings(max_examples=150, deadline=None)
@given(ring=topologies(), replication=replications, data=st.data())
def test_preference_list_invariants(ring: Ring, replication: Replication, data: st.DataObject) -> None:
    key = data.draw(
        st.one_of(
            st.integers(r.TOKEN_MIN, r.TOKEN_MAX),
            st.sampled_from(ring.tokens).flatmap(lambda t: st.sampled_from([t - 1, t, t + 1])),
        ).filter(lambda t: r.TOKEN_MIN <= t <= r.TOKEN_MAX)
    )
    replicas = ring.preference_list(key, replication)
    assert replicas == reference_preference_list(ring, key, replication)
    assert ring.preference_list(key, replication) is replicas  # cached
    assert len(set(replicas)) == len(replicas)
    walk = list(ring.walk(key))
    assert sorted(walk) == sorted(ring.nodes)
    assert [walk.index(x) for x in replicas] == sorted(walk.index(x) for x in replicas)  # clockwise order
    infos = [ring.nodes[x] for x in replicas]
    everyone = list(ring.nodes.values())
    if isinstance(replication, int):
        want = min(replication, len(ring))
        assert len(replicas) == want
        assert replicas[0] == ring.owner(key)
        assert len({i.datacenter for i in infos}) == min(want, len({i.datacenter for i in everyone}))
        pairs = {(i.datacenter, i.rack) for i in everyone}
        assert len({(i.datacenter, i.rack) for i in infos}) == min(want, len(pairs))
    else:
        for dc, rf in replication.items():
            in_dc = [i for i in everyone if i.datacenter == dc]
            mine = [i for i in infos if i.datacenter == dc]
            assert len(mine) == min(rf, len(in_dc))
            assert len({i.rack for i in mine}) == min(rf, len({i.rack for i in in_dc}))
        assert all(i.datacenter in replication for i in infos)
    extended = ring.extended_preference_list(key, 2, replication)
    assert extended[: len(replicas)] == replicas
    assert len(set(extended)) == len(extended) == min(len(replicas) + 2, len(ring))


@settings(max_examples=80, deadline=None)
@given(ring=topologies(), replication=replications, keys=st.lists(st.integers(r.TOKEN_MIN, r.TOKEN_MAX)))
def test_ranges_for_agrees_with_preference_lists(
    ring: Ring, replication: Replication, keys: list[int]
) -> None:
    def inside(t: int, start: int, end: int) -> bool:
        return start < t <= end if start < end else (t > start or t <= end)

    ownership = ring.ownership(replication)
    for node_id in ring.nodes:
        ranges = ring.ranges_for(node_id, replication)
        covered = sum((end - start) % r.RING_SIZE or r.RING_SIZE for start, end in ranges)
        assert covered / r.RING_SIZE == pytest.approx(ownership[node_id], abs=1e-12)
        for key in [*keys, *ring.tokens]:
            held = any(inside(key, start, end) for start, end in ranges)
            assert held == (node_id in ring.preference_list(key, replication))


# --- allocation: balance -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5, 8, 16])
def test_allocation_balances_replicated_ownership(grown: list[Ring], n: int) -> None:
    ring = grown[n]
    share = ring.ownership(3)
    assert sum(share.values()) == pytest.approx(3.0)
    assert spread(share, ring) <= 1.15
    assert all(len(ring.tokens_of(x)) == 16 for x in ring.nodes)


def test_allocation_stays_balanced_at_every_size(grown: list[Ring]) -> None:
    for ring in grown[5:]:
        assert spread(ring.ownership(3), ring) <= 1.2, len(ring)
    for ring in grown[3:]:
        assert spread(ring.ownership(1), ring) <= 1.3, len(ring)  # primary ownership too


@pytest.mark.parametrize("big_at", [0, 7])
def test_allocation_weights_by_capacity(big_at: int) -> None:
    ring = Ring()
    for k in range(8):
        ring = r.join(ring, node(k, capacity=2.0 if k == big_at else 1.0))
    big = NodeId(f"n{big_at:02d}")
    assert len(ring.tokens_of(big)) == 32
    for replication in (3, 1):
        share = ring.ownership(replication)
        others = statistics.mean(v for x, v in share.items() if x != big)
        assert 2 * 0.85 <= share[big] / others <= 2 * 1.15
        assert spread(share, ring) <= 1.3


def test_allocation_balances_racks() -> None:
    ring = Ring()
    for k in range(9):
        ring = r.join(ring, node(k, rack=RACKS[k % 3]))
    assert spread(ring.ownership(3), ring) <= 1.15
    for key in random_keys(500):
        assert len({ring.nodes[x].rack for x in ring.preference_list(key, 3)}) == 3


def test_allocation_with_per_datacenter_replication() -> None:
    replication = {"dc1": 3, "dc2": 2}
    # Six nodes in dc1 over three racks, four in dc2 over two, joining in a mixed order.
    placement = [
        *("dc1/r1", "dc2/r1", "dc1/r2", "dc1/r3", "dc2/r2"),
        *("dc1/r1", "dc1/r2", "dc2/r1", "dc1/r3", "dc2/r2"),
    ]
    ring = Ring()
    for k, where in enumerate(placement):
        dc, rack = where.split("/")
        ring = r.join(ring, node(k, datacenter=dc, rack=rack), replication=replication)
    share = ring.ownership(replication)
    for dc, rf in replication.items():
        members = [x for x, info in ring.nodes.items() if info.datacenter == dc]
        assert sum(share[x] for x in members) == pytest.approx(rf)
        assert max(share[x] for x in members) / min(share[x] for x in members) <= 1.2
    for key in random_keys(500):
        infos = [ring.nodes[x] for x in ring.preference_list(key, replication)]
        assert sorted(i.datacenter for i in infos) == ["dc1", "dc1", "dc1", "dc2", "dc2"]
        assert len({i.rack for i in infos if i.datacenter == "dc1"}) == 3
        assert len({i.rack for i in infos if i.datacenter == "dc2"}) == 2


# --- allocation: movement and determinism ------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5, 8, 15])
def test_joining_moves_about_one_share_of_keys_and_only_to_the_newcomer(grown: list[Ring], n: int) -> None:
    before, after = grown[n], grown[n + 1]
    newcomer = NodeId(f"n{n:02d}")
    keys = random_keys(20_000)
    moved = [k for k in keys if before.owner(k) != after.owner(k)]
    assert all(after.owner(k) == newcomer for k in moved)
    fraction = len(moved) / len(keys)
    assert 0.5 / (n + 1) <= fraction <= 1.5 / (n + 1)
    for key in keys[:3000]:  # replica sets only ever gain the newcomer
        assert set(after.preference_list(key)) - set(before.preference_list(key)) <= {newcomer}


def test_leaving_moves_only_the_leavers_keys(grown: list[Ring]) -> None:
    before = grown[8]
    leaver = NodeId("n03")
    after = before.without_node(leaver)
    keys = random_keys(20_000, seed=2)
    for key in keys:
        if before.owner(key) == leaver:
            assert after.owner(key) != leaver
        else:
            assert after.owner(key) == before.owner(key)
    for key in keys[:3000]:
        assert set(before.preference_list(key)) - {leaver} <= set(after.preference_list(key))


def test_allocation_is_deterministic(grown: list[Ring]) -> None:
    ring = grown[4]
    newcomer = node(99)
    first = r.allocate_tokens(ring, newcomer, 16)
    assert first == r.allocate_tokens(ring, newcomer, 16)
    assert len(set(first)) == 16 and not set(first) & set(ring.tokens)
    rebuilt = Ring()
    for k in range(4):
        rebuilt = r.join(rebuilt, node(k))
    assert rebuilt == ring


def test_allocation_edge_cases(grown: list[Ring]) -> None:
    assert r.allocate_tokens(grown[3], node(9), 0) == ()
    first = r.allocate_tokens(Ring(), node(0), 4)  # an empty ring: evenly spaced
    gaps = {(b - a) % r.RING_SIZE for a, b in zip(first, (*first[1:], first[0]), strict=True)}
    assert gaps == {r.RING_SIZE // 4}
    more = r.join(grown[3], node(0, capacity=1.5))  # a node already present gets the missing tokens
    assert len(more.tokens_of(NodeId("n00"))) == 24
    assert set(grown[3].tokens) < set(more.tokens)
    shrunk = node(0, capacity=0.5)  # join never takes tokens away (that would move data)
    assert r.join(grown[3], shrunk) == grown[3].with_node(shrunk, grown[3].tokens_of(NodeId("n00")))


# --- allocation: the incremental evaluation agrees with recomputing the ring -------------------------------


def allocation_cost(ring: Ring, capacity: Mapping[NodeId, float], replication: int) -> float:
    share, primary = ring.ownership(replication), ring.ownership(1)
    return sum(
        (share.get(x, 0.0) ** 2 + r._PRIMARY_WEIGHT * primary.get(x, 0.0) ** 2) / c
        for x, c in capacity.items()
    )


@pytest.mark.parametrize("seed", range(6))
def test_split_evaluation_matches_a_full_recomputation(seed: int) -> None:
    rng = random.Random(seed)
    infos = [
        NodeInfo(NodeId(f"n{i}"), rng.choice(DCS[:2]), rng.choice(RACKS), capacity=rng.choice([1, 2]))
        for i in range(rng.randint(2, 6))
    ]
    tokens = rng.sample(range(-(2**62), 2**62, 2**50), 3 * len(infos))
    ring = Ring({info: tokens[i :: len(infos)] for i, info in enumerate(infos)})
    newcomer = rng.choice(
        [
            NodeInfo(NodeId("new"), datacenter="dc9", rack="r9"),  # a new datacenter: every walk may change
            NodeInfo(NodeId("new"), rack=rng.choice(RACKS)),
            infos[0],  # a member getting more tokens
        ]
    )
    replication = rng.randint(1, 4)
    allocation = r._Allocation(ring, newcomer, replication)
    capacity = {i.node_id: i.capacity for i in [*infos, newcomer]}
    before = allocation_cost(ring, capacity, replication)
    mine = ring.tokens_of(newcomer.node_id) if newcomer.node_id in ring else ()
    for j in range(len(ring.tokens)):
        cost, offset = allocation._evaluate(j, newcomer.capacity)
        token = Token((ring.tokens[j - 1] + offset - r.TOKEN_MIN) % r.RING_SIZE + r.TOKEN_MIN)
        after = ring.with_node(newcomer, (*mine, token))
        assert cost == pytest.approx(allocation_cost(after, capacity, replication) - before, abs=1e-9)
