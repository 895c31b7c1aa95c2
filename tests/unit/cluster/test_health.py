"""`quorum_health`: which ranges a node's view of who is up leaves without a read quorum, with writes on
stand-ins, short of replicas, or without any write quorum; hand-built rings with known preference lists, a brute-force
oracle over random rings and up-sets, monotonicity in the up-set, and the JSON form."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ringkv.cluster.health import QuorumHealth, quorum_health
from ringkv.cluster.ids import NodeId
from ringkv.cluster.ring import TOKEN_MAX, TOKEN_MIN, NodeInfo, Ring


def ids(*names: str) -> list[NodeId]:
    return [NodeId(n) for n in names]


def counts(health: QuorumHealth) -> tuple[int, int, int, int]:
    return health.ranges, health.reads_unavailable, health.writes_on_stand_ins, health.under_replicated


def ring_of(tokens: dict[str, list[int]], racks: dict[str, str] | None = None) -> Ring:
    return Ring({NodeInfo(NodeId(n), rack=(racks or {}).get(n, "rack1")): t for n, t in tokens.items()})


THREE = ring_of({"a": [-100, 100], "b": [0, 200], "c": [50, 300]})  # RF 3: every range on all three
FOUR = ring_of({"a": [10], "b": [20], "c": [30], "d": [40]})  # RF 3: 10->abc 20->bcd 30->cda 40->dab


def test_all_up_nothing_unavailable() -> None:
    health = quorum_health(THREE, 3, 2, 2, ids("a", "b", "c"))
    assert health == QuorumHealth(6, 0, 0, False, 2, 2, under_replicated=0)
    assert not health.lost


def test_one_of_three_down_still_serves_quorums() -> None:
    for down in "abc":
        health = quorum_health(THREE, 3, 2, 2, ids(*(n for n in "abc" if n != down)))
        assert counts(health) == (6, 0, 0, 6)  # short of a replica everywhere, failing nowhere
        assert not health.writes_unavailable and not health.lost


def test_two_of_three_down_loses_every_range() -> None:
    health = quorum_health(THREE, 3, 2, 2, ids("b"))
    assert counts(health) == (6, 6, 6, 6)
    assert health.writes_unavailable and health.lost
    nobody = quorum_health(THREE, 3, 2, 2, [])
    assert nobody.reads_unavailable == 6 and nobody.writes_unavailable and nobody.lost


def test_counts_only_the_ranges_the_down_node_replicates() -> None:
    health = quorum_health(FOUR, 3, 2, 3, ids("a", "b", "c"))  # d replicates the ranges at 20, 30 and 40
    assert counts(health) == (4, 0, 3, 3)
    assert not health.writes_unavailable and not health.lost  # stand-ins degrade, they do not fail
    two_down = quorum_health(FOUR, 3, 2, 2, ids("a", "b"))  # c, d down: 20->b 30->a 40->ab 10->ab
    assert counts(two_down) == (4, 2, 2, 4)
    assert not two_down.writes_unavailable and two_down.lost


def test_writes_unavailable_only_below_w_members_up() -> None:
    assert not quorum_health(FOUR, 3, 1, 2, ids("a", "c")).writes_unavailable
    assert quorum_health(FOUR, 3, 1, 2, ids("a")).writes_unavailable
    assert quorum_health(FOUR, 3, 1, 3, ids("a", "b")).writes_unavailable
    assert not quorum_health(FOUR, 3, 1, 3, ids("a", "b", "d")).writes_unavailable


def test_up_nodes_outside_the_ring_and_duplicates_do_not_count() -> None:
    health = quorum_health(THREE, 3, 2, 2, ids("a", "a", "stranger", "other"))
    assert health.writes_unavailable and health.reads_unavailable == 6


def test_empty_ring_is_lost() -> None:
    health = quorum_health(Ring(), 3, 2, 2, ids("a"))
    assert counts(health) == (0, 0, 0, 0)
    assert health.writes_unavailable and health.lost


def test_to_json() -> None:
    health = quorum_health(FOUR, 3, 2, 2, ids("a", "b"))
    assert health.to_json() == {"ranges": 4, "reads_unavailable": 2, "writes_on_stand_ins": 2,
                                "writes_unavailable": False, "under_replicated": 4, "read_quorum": 2,
                                "write_quorum": 2, "lost": True}
    assert quorum_health(THREE, 3, 2, 2, ids("a", "b", "c")).to_json()["lost"] is False


# --- against a brute-force oracle ---------------------------------------------------------------------------

NAMES = [f"n{k}" for k in range(6)]


@st.composite
def cases(draw: st.DrawFn) -> tuple[Ring, int, int, int, set[NodeId]]:
    names = NAMES[: draw(st.integers(1, 6))]
    tokens = draw(st.lists(st.integers(TOKEN_MIN, TOKEN_MAX), min_size=len(names), max_size=4 * len(names),
                           unique=True))
    owners = [names[k] for k in range(len(names))] + draw(
        st.lists(st.sampled_from(names), min_size=len(tokens) - len(names), max_size=len(tokens) - len(names)))
    assignment: dict[str, list[int]] = {n: [] for n in names}
    for token, owner in zip(tokens, owners, strict=True):
        assignment[owner].append(token)
    racks = {n: draw(st.sampled_from(["r1", "r2"])) for n in names}
    rf = draw(st.integers(1, 5))
    read, write = draw(st.integers(1, rf)), draw(st.integers(1, rf))
    up = set(draw(st.sets(st.sampled_from([*names, "stranger"]))))
    return ring_of(assignment, racks), rf, read, write, {NodeId(n) for n in up}


def oracle(ring: Ring, rf: int, read: int, write: int, up: set[NodeId]) -> QuorumHealth:
    replicas = [set(ring.preference_list(t, rf)) for t in ring.tokens]
    alive = [len(r & up) for r in replicas]
    return QuorumHealth(len(ring.tokens), sum(a < read for a in alive), sum(a < write for a in alive),
                        len(set(ring.nodes) & up) < write, read, write,
                        under_replicated=sum(a < len(r) for a, r in zip(alive, replicas, strict=True)))


@given(cases())
def test_matches_the_oracle(case: tuple[Ring, int, int, int, set[NodeId]]) -> None:
    ring, rf, read, write, up = case
    for token in ring.tokens:  # the oracle leans on the placement: check the part of it that matters here
        assert len(set(ring.preference_list(token, rf))) == min(rf, len(ring))
    assert quorum_health(ring, rf, read, write, up) == oracle(ring, rf, read, write, up)


@given(cases(), st.sampled_from(NAMES))
def test_another_node_up_never_makes_things_worse(case: tuple[Ring, int, int, int, set[NodeId]],
                                                   extra: str) -> None:
    ring, rf, read, write, up = case
    before = quorum_health(ring, rf, read, write, up)
    after = quorum_health(ring, rf, read, write, up | {NodeId(extra)})
    assert after.reads_unavailable <= before.reads_unavailable
    assert after.writes_on_stand_ins <= before.writes_on_stand_ins
    assert after.under_replicated <= before.under_replicated
    assert after.writes_unavailable <= before.writes_unavailable
    assert after.lost <= before.lost
