"""node.json and storage that lost data behind the node's back: tables the manifest names gone missing, or
an engine sequence number below the one saved at the last start (files deleted, or the volume restored from
an older copy). The node's counters may have gone with the data, so it takes a new incarnation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkv.net import identity
from ringkv.net.identity import Identity

NOW = 1_700_000_000_000


def saved(**fields: object) -> dict[str, object]:
    doc: dict[str, object] = {"format": 2, "node_id": "n1", "incarnation": "old", "tokens": [5, 9],
                              "generation": NOW - 10, "running": False, "peers": [], "durability": "sync",
                              "data_seq": 1000}
    doc.update(fields)
    return doc


@pytest.mark.parametrize(("doc", "data_seq", "lost", "renewed"), [
    (saved(), 1000, 0, False),  # clean stop, nothing lost
    (saved(), 5000, 0, False),  # more data than before: fine
    (saved(), 1000, 1, True),  # a table the manifest names is missing
    (saved(), 9999, 3, True),  # tables lost, whatever the sequence number says
    (saved(), 999, 0, True),  # less data than when the node last started: lost or restored
    (saved(), 0, 0, True),  # wiped tables and commit log, node.json kept
    (saved(running=True), 999, 0, True),  # a crash under sync does not excuse lost data
    (saved(running=True), 1000, 0, False),
    (saved(data_seq=None), 0, 0, False),  # a file from before data_seq: nothing to compare with
    ({k: v for k, v in saved().items() if k != "data_seq"}, 0, 0, False),
    (saved(running=True, durability="off"), 5000, 0, True),  # renewed anyway (unclean stop)
    (None, 1000, 0, True),
])
def test_the_incarnation_is_renewed_when_storage_lost_data(doc: dict[str, object] | None, data_seq: int,
                                                            lost: int, renewed: bool) -> None:
    decision = identity.decide(doc, "n1", "sync", NOW, "fresh", data_seq=data_seq, lost_tables=lost)
    assert decision.new_incarnation is renewed
    assert decision.identity.incarnation == ("fresh" if renewed else "old")
    assert decision.identity.data_seq == data_seq  # what the next start compares with
    assert decision.reason
    if doc is not None and doc.get("node_id") == "n1":  # the node keeps its place on the ring either way
        assert decision.identity.tokens == (5, 9)
        assert decision.identity.generation == max(NOW - 10 + 1, NOW)


def test_the_reason_names_the_loss() -> None:
    lost = identity.decide(saved(), "n1", "sync", NOW, "fresh", data_seq=1000, lost_tables=2)
    assert "2 table" in lost.reason
    behind = identity.decide(saved(), "n1", "sync", NOW, "fresh", data_seq=10, lost_tables=0)
    assert "10" in behind.reason and "1000" in behind.reason


@given(saved_seq=st.integers(0, 2**63 - 1), data_seq=st.integers(0, 2**63 - 1), lost=st.integers(0, 50),
       running=st.booleans())
def test_renewal_follows_the_data_rules_for_every_clean_or_sync_run(saved_seq: int, data_seq: int, lost: int,
                                                                    running: bool) -> None:
    decision = identity.decide(saved(data_seq=saved_seq, running=running), "n1", "sync", NOW, "fresh",
                               data_seq=data_seq, lost_tables=lost)
    assert decision.new_incarnation is (lost > 0 or data_seq < saved_seq)


def test_data_seq_round_trips_through_node_json(tmp_path: Path) -> None:
    path = str(tmp_path / "node.json")
    identity.save(path, Identity("n1", "abcd", (1, 2), 42, False, (), "sync", data_seq=777))
    doc = identity.load(path)
    assert doc is not None and doc["data_seq"] == 777
    assert not identity.decide(doc, "n1", "sync", NOW, "new", data_seq=777).new_incarnation
    assert identity.decide(doc, "n1", "sync", NOW, "new", data_seq=776).new_incarnation
