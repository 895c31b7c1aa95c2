"""node.json: when a node keeps its incarnation and when it must take a new one (issue 9, defects 1 and 8),
its generation floor, and the file round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkv.net import identity
from ringkv.net.identity import Identity, IdentityError

NOW = 1_700_000_000_000


def saved(**fields: object) -> dict[str, object]:
    doc: dict[str, object] = {"format": 2, "node_id": "n1", "incarnation": "old", "tokens": [5, 9],
                              "generation": NOW - 10, "running": False, "peers": [], "durability": "sync"}
    doc.update(fields)
    return doc


@pytest.mark.parametrize(("doc", "durability", "renewed"), [
    (None, "sync", True),  # a new or wiped data directory: its counters are gone
    (saved(node_id="n2"), "sync", True),  # someone else's data directory
    ({"node_id": "n1", "tokens": [5, 9]}, "sync", True),  # format 1: the bare node id issued the old dots
    (saved(running=True, durability="batch"), "batch", True),  # crashed under batch: acks may be lost
    (saved(running=True, durability="off"), "sync", True),  # what counts is the run that crashed...
    (saved(running=True, durability="sync"), "batch", False),  # ...not this one
    (saved(running=True), "sync", False),  # crashed under sync: nothing anyone saw was lost
    (saved(running=False, durability="batch"), "batch", False),  # stopped cleanly
])
def test_a_node_keeps_its_incarnation_only_when_it_kept_its_counters(
        doc: dict[str, object] | None, durability: str, renewed: bool) -> None:
    decision = identity.decide(doc, "n1", durability, NOW, "fresh")
    assert decision.new_incarnation is renewed
    assert decision.identity.incarnation == ("fresh" if renewed else "old")
    assert decision.identity.running  # persisted as running before the node serves
    assert decision.reason


def test_tokens_and_the_remembered_ring_belong_to_the_same_node_only() -> None:
    peers = [{"id": "n2"}]
    assert identity.decide(saved(peers=peers), "n1", "sync", NOW, "x").identity.tokens == (5, 9)
    assert identity.decide(saved(peers=peers), "n1", "sync", NOW, "x").identity.peers == tuple(peers)
    other = identity.decide(saved(node_id="n9", peers=peers), "n1", "sync", NOW, "x").identity
    assert (other.tokens, other.peers) == ((), ())


def test_a_decommissioned_directory_stays_left_for_its_node_only(tmp_path: Path) -> None:
    assert identity.decide(saved(tokens=[], left=True), "n1", "sync", NOW, "x").identity.left
    assert not identity.decide(saved(), "n1", "sync", NOW, "x").identity.left  # older files have no `left`
    assert not identity.decide(saved(node_id="n9", left=True), "n1", "sync", NOW, "x").identity.left
    path = str(tmp_path / "node.json")
    identity.save(path, Identity("n1", "abcd", (), 1, False, (), "sync", left=True))
    assert identity.decide(identity.load(path), "n1", "sync", NOW, "x").identity.left


@given(stored=st.integers(0, 2**50), now=st.integers(0, 2**50))
def test_the_generation_always_moves_past_the_stored_one(stored: int, now: int) -> None:
    # Defect 8: the generation was the wall clock alone; a node restarted with its clock behind was ignored.
    generation = identity.decide(saved(generation=stored), "n1", "sync", now, "x").identity.generation
    assert generation == max(stored + 1, now)


def test_node_json_round_trips_and_garbage_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "node.json")
    assert identity.load(path) is None
    ident = Identity("n1", "abcd", (1, 2), 42, True, ({"id": "n2"},), "sync")
    identity.save(path, ident)
    decision = identity.decide(identity.load(path), "n1", "batch", 0, "new")
    assert (decision.identity.incarnation, decision.identity.tokens, decision.identity.generation) == ("abcd", (1, 2),
                                                                                                       43)
    (tmp_path / "node.json").write_text("{not json")
    with pytest.raises(IdentityError):
        identity.load(path)
