from __future__ import annotations

import pytest

from ringkv_operator import spec as specmod

from .samples import kvcluster


def test_an_empty_spec_gets_the_crds_defaults() -> None:
    cluster = specmod.parse(kvcluster())
    assert (cluster.replicas, cluster.replication_factor, cluster.read_quorum, cluster.write_quorum) == (3, 3, 2, 2)
    assert cluster.storage_size == "10Gi" and cluster.storage_class is None and not cluster.delete_volumes
    assert cluster.image is None and cluster.racks == () and cluster.config == ()
    assert (cluster.name, cluster.namespace, cluster.uid, cluster.generation) == ("demo", "db", "uid-1", 1)


def test_a_full_spec() -> None:
    cluster = specmod.parse(kvcluster(
        replicas=5, replicationFactor=3, readQuorum=1, writeQuorum=3, image="reg/ringkv:1",
        storage={"size": "50Gi", "storageClassName": "fast", "deletionPolicy": "Delete"},
        resources={"requests": {"cpu": "1"}}, racks=[{"name": "a", "zone": "z1"}, {"name": "b"}],
        config={"durability": "batch", "memtable_mb": 32, "hints_enabled": False, "capacity": 1.5},
    ))
    assert cluster.quorum == 3
    assert cluster.delete_volumes and cluster.storage_class == "fast"
    assert cluster.racks == (specmod.Rack("a", "z1"), specmod.Rack("b"))
    assert dict(cluster.config) == {"durability": "batch", "memtable_mb": "32", "hints_enabled": "false",
                                    "capacity": "1.5"}


def test_a_small_cluster_defaults_its_quorums_to_what_fits() -> None:
    cluster = specmod.parse(kvcluster(replicas=1, replicationFactor=1))
    assert (cluster.read_quorum, cluster.write_quorum) == (1, 1)


@pytest.mark.parametrize(("spec", "complaint"), [
    ({"replicas": 0}, "spec.replicas"),
    ({"replicas": True}, "spec.replicas"),
    ({"readQuorum": 4}, "spec.readQuorum"),
    ({"storage": {"deletionPolicy": "Maybe"}}, "deletionPolicy"),
    ({"racks": [{"name": "A"}]}, "DNS label"),
    ({"racks": [{"name": "a"}, {"name": "a"}]}, "listed twice"),
    ({"racks": [{"name": "r" * 50}]}, "longer than 52"),
    ({"config": {"seeds": "x:1"}}, "does not accept seeds"),
    ({"config": {"durability": ["sync"]}}, "strings, numbers or booleans"),
    ({"racks": [{"name": "a", "nodeLabels": {"bad key!": "x"}}]}, "not a label key"),
    ({"racks": [{"name": "a", "nodeLabels": {"pool": "no spaces"}}]}, "not a label value"),
    ({"racks": [{"name": "a", "nodeLabels": {"topology.kubernetes.io/zone": "z1"}}]}, "spec.racks\\[\\].zone"),
    ({"racks": [{"name": "a", "nodeLabels": {"pool": "a"}}], "nodeSelector": {"pool": "b"}}, "different values"),
    ({"antiAffinity": "Sometimes"}, "spec.antiAffinity"),
    ({"nodeSelector": {"a": 1}}, "not a label value"),
    ({"tolerations": [{"key": "k", "operator": "Maybe"}]}, "Equal or Exists"),
    ({"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}, "takes no value"),
    ({"tolerations": [{"operator": "Equal", "value": "v"}]}, "needs operator Exists"),
    ({"tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]}, "effect NoExecute"),
    ({"tolerations": [{"key": "k", "effect": "Sometimes"}]}, "effect must be"),
    ({"tolerations": [{"key": "k", "colour": "red"}]}, "take only"),
    ({"priorityClassName": "Not_A_Name"}, "DNS subdomain"),
    ({"imagePullSecrets": ["regcred"]}, "list of {name: SECRET}"),
    ({"podTemplate": {"spec": {"hostNetwork": True}}}, "spec.podTemplate: spec.hostNetwork cannot be set"),
    ({"podTemplate": {"metadata": {"labels": {"app.kubernetes.io/name": "x"}}}}, "operator's"),
])
def test_specs_the_operator_cannot_build_are_refused_with_a_reason(spec: dict[str, object], complaint: str) -> None:
    with pytest.raises(specmod.SpecError, match=complaint):
        specmod.parse(kvcluster(**spec))


def test_the_config_keys_are_exactly_the_crds() -> None:
    """The CRD's spec.config properties and the operator's list agree (no setting the operator derives)."""
    from pathlib import Path

    import yaml

    crd = yaml.safe_load((Path(__file__).resolve().parents[3] / "manifests" / "01-crd-kvclusters.yaml").read_text())
    [version] = crd["spec"]["versions"]
    config = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["config"]["properties"]
    assert set(config) == specmod.CONFIG_KEYS


def test_where_the_pods_run_and_what_they_are_given() -> None:
    overlay = {"metadata": {"labels": {"team": "a"}}, "spec": {"runtimeClassName": "gvisor"}}
    cluster = specmod.parse(kvcluster(
        racks=[{"name": "a", "zone": "z1", "nodeLabels": {"pool": "a", "example.com/feed": "1"}}, {"name": "b"}],
        antiAffinity="Preferred", nodeSelector={"kubernetes.io/os": "linux", "pool": "a"},
        tolerations=[{"key": "dedicated", "value": "ringkv", "effect": "NoSchedule"},
                     {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}],
        priorityClassName="stateful", imagePullSecrets=[{"name": "regcred"}], podTemplate=overlay))
    assert cluster.racks == (specmod.Rack("a", "z1", (("example.com/feed", "1"), ("pool", "a"))), specmod.Rack("b"))
    assert cluster.rack_node_labels("a") == (("example.com/feed", "1"), ("pool", "a"))
    assert cluster.anti_affinity == "Preferred"
    assert cluster.node_selector == (("kubernetes.io/os", "linux"), ("pool", "a"))  # the rack's value agrees
    assert [t.get("key") for t in cluster.tolerations] == ["dedicated", None]
    assert cluster.priority_class == "stateful" and cluster.image_pull_secrets == ("regcred",)
    assert cluster.pod_template == overlay


def test_the_scheduling_defaults() -> None:
    cluster = specmod.parse(kvcluster())
    assert cluster.anti_affinity == "Required"  # the CRD's default too
    assert (cluster.node_selector, cluster.tolerations, cluster.priority_class, cluster.image_pull_secrets,
            dict(cluster.pod_template), cluster.retired_rack_labels) == ((), (), None, (), {}, ())
