"""The operator's own check of the fields a cluster was placed with (for API servers that skipped the CRD's
CEL rules): recorded once, held to, with the CRD's messages."""

from __future__ import annotations

from typing import Any

from ringkv_operator import placement
from ringkv_operator import spec as specmod
from tests.unit.operator.samples import kvcluster


def spec(**fields: Any) -> specmod.ClusterSpec:
    return specmod.parse(kvcluster(**{"replicas": 3, **fields}))


RACKS = [{"name": "a", "zone": "z1"}, {"name": "b", "zone": "z2"}]


def test_the_record_is_taken_once_and_new_racks_join_it() -> None:
    first = placement.record(spec(racks=RACKS, config={"datacenter": "dc1"}))
    assert first == {"racks": {"a": "z1", "b": "z2"}, "storageClassName": None, "datacenter": "dc1",
                     "capacity": None, "numTokens": None, "seeds": ["demo-a-0", "demo-b-0"], "security": "operator",
                     "rackNodeLabels": []}
    grown = placement.record(spec(racks=[{"name": "c", "zone": "z3"}, *RACKS]), first)
    assert grown["racks"] == {"a": "z1", "b": "z2", "c": "z3"} and grown["datacenter"] == "dc1"
    assert grown["seeds"] == ["demo-a-0", "demo-b-0"]  # the seeds stay what they were at creation
    # a rack the spec dropped stays recorded while its StatefulSet is in use, then goes
    assert placement.record(spec(racks=RACKS[:1]), grown, {"a", "b"})["racks"] == {"a": "z1", "b": "z2"}
    assert placement.record(spec(racks=RACKS[:1]), grown, {"a"})["racks"] == {"a": "z1"}


def test_changes_to_placed_fields_are_refused_with_what_to_do_instead() -> None:
    record = placement.record(spec(racks=RACKS, config={"datacenter": "dc1"}))
    assert placement.violation(record, spec(racks=RACKS, config={"datacenter": "dc1"})) is None
    assert placement.violation(None, spec(racks=RACKS)) is None
    zone = placement.violation(record, spec(racks=[{"name": "a", "zone": "z9"}, RACKS[1]],
                                            config={"datacenter": "dc1"}))
    assert zone is not None and zone.startswith("spec.racks[].zone is immutable: a rack's volumes live in its zone; "
                                                "add a new rack in the other zone and remove this one instead")
    unzoned = placement.violation(record, spec(racks=[{"name": "a"}, RACKS[1]], config={"datacenter": "dc1"}))
    assert unzoned is not None and "rack 'a' was placed in z1" in unzoned
    dc = placement.violation(record, spec(racks=RACKS, config={"datacenter": "dc2"}))
    assert dc == ("spec.config.datacenter is immutable: the ring placed every key's replicas by datacenter; create "
                  "a new KVCluster in the other datacenter and move the data to it")
    added = placement.violation(record, spec(racks=RACKS, config={"datacenter": "dc1", "capacity": 2}))
    assert added is not None and added.startswith("spec.config.capacity is immutable")
    storage = placement.violation(record, spec(racks=RACKS, config={"datacenter": "dc1"},
                                               storage={"storageClassName": "fast"}))
    assert storage is not None and storage.startswith("spec.storage.storageClassName is immutable")
    # a new rack may have any zone; other settings may change
    assert placement.violation(record, spec(racks=[*RACKS, {"name": "c", "zone": "z7"}],
                                            config={"datacenter": "dc1", "log_level": "debug"})) is None


def test_the_security_mode_is_held_to() -> None:
    # A rolling change between TLS and plaintext splits the ring mid-roll: refused, as the CRD's rule does.
    record = placement.record(spec(racks=RACKS))
    assert placement.violation(record, spec(racks=RACKS, security={"mode": "operator"})) is None
    for mode in ("insecure", "cert-manager"):
        other = spec(racks=RACKS, security={"mode": mode, "issuerRef": {"name": "ca"}})
        assert placement.violation(record, other) == placement.SECURITY
    older = {k: v for k, v in record.items() if k != "security"}  # recorded before the mode was
    assert placement.record(spec(racks=RACKS, security={"mode": "insecure"}), older)["security"] == "insecure"


LABELLED = [{"name": "a", "zone": "z1", "nodeLabels": {"pool": "a"}}, {"name": "b", "nodeLabels": {"pool": "b"}}]


def test_racks_node_labels_follow_the_spec_and_outlive_it_while_the_rack_is_in_use() -> None:
    first = placement.record(spec(racks=LABELLED))
    assert first["rackNodeLabels"] == [{"rack": "a", "nodeLabels": {"pool": "a"}},
                                       {"rack": "b", "nodeLabels": {"pool": "b"}}]
    # they may change (the rack's pods roll onto the new nodes): the record follows, and is no violation
    moved = [LABELLED[0], {"name": "b", "nodeLabels": {"pool": "b2", "disk": "nvme"}}]
    changed = placement.record(spec(racks=moved), first)
    assert changed["rackNodeLabels"][1] == {"rack": "b", "nodeLabels": {"disk": "nvme", "pool": "b2"}}
    assert placement.violation(first, spec(racks=moved)) is None
    # a rack the spec dropped keeps them while its StatefulSet is in use, then they go with it
    dropped = placement.record(spec(racks=LABELLED[:1]), changed, {"a", "b"})
    assert dropped["rackNodeLabels"] == changed["rackNodeLabels"]
    assert placement.record(spec(racks=LABELLED[:1]), dropped, {"a"})["rackNodeLabels"] == first["rackNodeLabels"][:1]
    # recorded before node labels were: the spec's
    older = {k: v for k, v in first.items() if k != "rackNodeLabels"}
    assert placement.record(spec(racks=LABELLED), older)["rackNodeLabels"] == first["rackNodeLabels"]


def test_the_spec_reads_the_dropped_racks_labels_back_from_the_record() -> None:
    record = placement.record(spec(racks=LABELLED))
    cluster = specmod.parse({**kvcluster(replicas=3, racks=LABELLED[:1]), "status": {"placement": record}})
    assert cluster.rack_node_labels("a") == (("pool", "a"),)  # the spec's
    assert cluster.rack_node_labels("b") == (("pool", "b"),)  # the record's
    assert cluster.rack_node_labels("c") == () and cluster.rack_node_labels(None) == ()
    # what does not parse in the record is left out
    broken = {"rackNodeLabels": [{"rack": "b", "nodeLabels": {"bad key!": "x"}}, {"nodeLabels": {}}, "junk"]}
    assert specmod.parse({**kvcluster(replicas=3), "status": {"placement": broken}}).retired_rack_labels == ()
