"""The builders: every object's shape, and every object valid for the Kubernetes API (kubernetes-validate
--strict, the oldest version the chart supports and the newest schemas available)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ringkv_operator import plan, resources, settings
from ringkv_operator import spec as specmod

from .samples import SCHEDULING, kvcluster

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]'")

SETTINGS = settings.Settings(node_image="reg/ringkv:0.1.0", node_image_pull_policy="Always")
K8S_VERSIONS = ("1.29.0", "1.37.0")


def build(**spec: Any) -> tuple[specmod.ClusterSpec, list[dict[str, Any]]]:
    cluster = specmod.parse(kvcluster(**spec))
    shape = plan.desired_shape(cluster)
    return cluster, resources.all_objects(cluster, shape, SETTINGS)


def by_name(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def container(sts: dict[str, Any]) -> dict[str, Any]:
    [found] = sts["spec"]["template"]["spec"]["containers"]
    return found


def env(sts: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(sts)["env"]}


FULL = {"replicas": 5, "image": "reg/ringkv:0.2", "storage": {"size": "20Gi", "storageClassName": "fast"},
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "racks": [{"name": "a", "zone": "eu-1a"}, {"name": "b", "zone": "eu-1b"}, {"name": "c"}],
        "config": {"durability": "batch", "shutdown_timeout_s": 45, "hints_enabled": False}}
@pytest.mark.parametrize("spec", [{}, FULL, SCHEDULING, {**SCHEDULING, "antiAffinity": "Preferred"}],
                         ids=["defaults", "racks+everything", "scheduling+podTemplate", "preferred"])
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_passes_kubernetes_validate_strict(spec: dict[str, Any], version: str) -> None:
    _, objects = build(**spec)
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validation_would_notice_a_misspelt_field() -> None:
    _, objects = build()
    sts = by_name(objects, "StatefulSet", "demo")
    container(sts)["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSIONS[-1], strict=True)


def test_the_objects_of_a_cluster() -> None:
    _, objects = build()
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("ConfigMap", "demo-config"), ("Service", "demo-peers"), ("Service", "demo"),
        ("PodDisruptionBudget", "demo"), ("StatefulSet", "demo")]
    for obj in objects:
        assert obj["metadata"]["namespace"] == "db"
        assert obj["metadata"]["ownerReferences"] == [{
            "apiVersion": "ringkv.io/v1alpha1", "kind": "KVCluster", "name": "demo", "uid": "uid-1",
            "controller": True, "blockOwnerDeletion": True}]
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "ringkv"
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "demo"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "ringkv-operator"


def test_client_service_is_what_the_chart_and_its_servicemonitor_expect() -> None:
    cluster, objects = build()
    service = by_name(objects, "Service", "demo")
    assert service["metadata"]["labels"]["ringkv.io/service"] == "client"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"] == resources.selector_labels(cluster)


def test_peer_service_is_headless_and_publishes_nodes_before_they_are_ready() -> None:
    _, objects = build()
    service = by_name(objects, "Service", "demo-peers")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"peer": 7070, "http": 8080}
    assert by_name(objects, "StatefulSet", "demo")["spec"]["serviceName"] == "demo-peers"


def test_disruption_budget_allows_one_node_down() -> None:
    cluster, objects = build(racks=[{"name": "a"}, {"name": "b"}])
    pdb = by_name(objects, "PodDisruptionBudget", "demo")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": resources.selector_labels(cluster)}}
    for sts in (o for o in objects if o["kind"] == "StatefulSet"):  # one budget over every rack's pods
        pod_labels = sts["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_config_map_holds_the_node_settings() -> None:
    _, objects = build(replicas=5, readQuorum=1, writeQuorum=3, config={"durability": "batch", "memtable_mb": 32})
    data = by_name(objects, "ConfigMap", "demo-config")["data"]
    assert data == {
        "RINGKV_HOST": "0.0.0.0", "RINGKV_PORT": "8080", "RINGKV_PEER_PORT": "7070",
        "RINGKV_DATA_DIR": "/var/lib/ringkv/data", "RINGKV_CLUSTER_NAME": "db/demo",
        "RINGKV_SEEDS": "demo-0.demo-peers.db.svc:7070,demo-1.demo-peers.db.svc:7070",
        "RINGKV_REPLICATION_FACTOR": "3", "RINGKV_READ_QUORUM": "1", "RINGKV_WRITE_QUORUM": "3",
        "RINGKV_DRAIN_DELAY_S": "5", "RINGKV_DURABILITY": "batch", "RINGKV_MEMTABLE_MB": "32",
    }


def test_the_seeds_do_not_change_with_the_size() -> None:
    # so scaling does not change the pods' template (and roll every pod)
    for replicas in (1, 3, 8):
        _, objects = build(replicas=replicas, replicationFactor=1)
        assert by_name(objects, "ConfigMap", "demo-config")["data"]["RINGKV_SEEDS"] == \
            "demo-0.demo-peers.db.svc:7070,demo-1.demo-peers.db.svc:7070"


def test_node_identity_and_address_come_from_the_pod() -> None:
    _, objects = build()
    sts = by_name(objects, "StatefulSet", "demo")
    got = env(sts)
    assert got["RINGKV_NODE_ID"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}
    # $(VAR) refers to the variable defined before it: the pod's DNS name under the headless Service, which
    # is also how the seeds are written.
    assert got["RINGKV_ADVERTISE_HOST"] == "$(RINGKV_NODE_ID).demo-peers.db.svc"
    assert "RINGKV_RACK" not in got
    assert container(sts)["envFrom"] == [{"configMapRef": {"name": "demo-config"}}]
    assert sts["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_pods_probes_ports_and_command() -> None:
    _, objects = build()
    c = container(by_name(objects, "StatefulSet", "demo"))
    assert c["image"] == "reg/ringkv:0.1.0" and c["imagePullPolicy"] == "Always"  # the operator's default image
    assert c["command"] == ["ringkv", "node"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "peer": 7070}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http", "scheme": "HTTP"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http", "scheme": "HTTP"}
    # joining the ring and replaying the commit log happen before the node listens: the startup probe
    # gives that minutes before liveness counts
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 300


def test_pods_run_as_the_images_non_root_user() -> None:
    _, objects = build()
    pod = by_name(objects, "StatefulSet", "demo")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["fsGroup"] == 10001
    security = pod["containers"][0]["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts == {"data": "/var/lib/ringkv", "tmp": "/tmp", "certs": "/etc/ringkv/certs",
                      "tokens": "/etc/ringkv/tokens"}


def test_grace_period_outlasts_the_nodes_drain() -> None:
    assert by_name(build()[1], "StatefulSet", "demo")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"] == 60
    long = by_name(build(config={"shutdown_timeout_s": 120})[1], "StatefulSet", "demo")
    assert long["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120 + 5 + 30  # + drain + flush
    drain = by_name(build(config={"shutdown_timeout_s": 60, "drain_delay_s": 20})[1], "StatefulSet", "demo")
    assert drain["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60 + 20 + 30


def test_nodes_drain_for_five_seconds_after_sigterm_unless_told_otherwise() -> None:
    assert by_name(build()[1], "ConfigMap", "demo-config")["data"]["RINGKV_DRAIN_DELAY_S"] == "5"
    told = by_name(build(config={"drain_delay_s": 0})[1], "ConfigMap", "demo-config")
    assert told["data"]["RINGKV_DRAIN_DELAY_S"] == "0"


def test_volume_claim_template_from_spec_storage() -> None:
    _, objects = build(storage={"size": "20Gi", "storageClassName": "fast", "deletionPolicy": "Delete"})
    sts = by_name(objects, "StatefulSet", "demo")
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}},
                             "storageClassName": "fast"}
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Delete", "whenScaled": "Retain"}
    kept = by_name(build()[1], "StatefulSet", "demo")
    assert kept["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    assert "storageClassName" not in kept["spec"]["volumeClaimTemplates"][0]["spec"]


def pod_spec(sts: dict[str, Any]) -> dict[str, Any]:
    return sts["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_without_racks_no_two_nodes_share_a_kubernetes_node_and_they_spread_over_zones() -> None:
    cluster, objects = build()
    pod = pod_spec(by_name(objects, "StatefulSet", "demo"))
    assert pod["affinity"] == {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname",
         "labelSelector": {"matchLabels": resources.selector_labels(cluster)}}]}}
    assert pod["topologySpreadConstraints"] == [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
         "labelSelector": {"matchLabels": resources.selector_labels(cluster)}}]
    # nothing the spec did not ask for
    assert not {"nodeSelector", "tolerations", "priorityClassName", "imagePullSecrets"} & set(pod)
    assert pod["automountServiceAccountToken"] is False  # the nodes never call the Kubernetes API


def test_preferred_anti_affinity_lets_nodes_share_a_kubernetes_node_where_they_must() -> None:
    cluster, objects = build(antiAffinity="Preferred")
    assert pod_spec(by_name(objects, "StatefulSet", "demo"))["affinity"] == {"podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": resources.selector_labels(cluster)}}}]}}


def test_racks_run_on_the_nodes_their_zone_and_labels_select_and_never_share_a_node() -> None:
    cluster, objects = build(**SCHEDULING)
    a, b = (pod_spec(by_name(objects, "StatefulSet", f"demo-{r}")) for r in "ab")
    [term] = a["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [  # one term: all of them
        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["eu-1a"]},
        {"key": "example.com/power-feed", "operator": "In", "values": ["a"]}]
    [term] = b["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "node.kubernetes.io/pool", "operator": "In", "values": ["ringkv-b"]}]
    for pod in (a, b):  # across racks too: the selector is the whole cluster's
        [anti] = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert anti["labelSelector"] == {"matchLabels": resources.selector_labels(cluster)}
    assert "topologySpreadConstraints" not in a  # pinned to its zone
    [spread] = b["topologySpreadConstraints"]  # b has no zone: its own pods spread over zones
    assert spread["labelSelector"]["matchLabels"] == {**resources.selector_labels(cluster), "ringkv.io/rack": "b"}


def test_tolerations_node_selector_priority_and_pull_secrets_reach_every_node_pod() -> None:
    _, objects = build(**SCHEDULING)
    for sts in (o for o in objects if o["kind"] == "StatefulSet"):
        pod = pod_spec(sts)
        assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
        assert pod["tolerations"] == SCHEDULING["tolerations"]
        assert pod["priorityClassName"] == "stateful-high"
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert pod["automountServiceAccountToken"] is False


def test_a_racks_node_labels_follow_it_while_it_is_being_removed() -> None:
    """A rack dropped from the spec keeps its StatefulSet's template (its nodes are decommissioned one by one;
    a template change would be a second change at once): its labels come from status.placement."""
    from ringkv_operator import placement

    racked = {"replicas": 4, "racks": SCHEDULING["racks"]}
    before = specmod.parse(kvcluster(**racked))
    placed = placement.record(before)
    after = specmod.parse({**kvcluster(replicas=4, racks=SCHEDULING["racks"][:1]), "status": {"placement": placed}})
    after = dataclasses.replace(after, seed_pods=tuple(placed["seeds"]))  # what the handlers do
    before = dataclasses.replace(before, seed_pods=tuple(placed["seeds"]))
    rack_b = plan.RackSet("demo-b", 2, "b")
    built = [resources.statefulset(c, rack_b, plan.desired_shape(before), SETTINGS) for c in (before, after)]
    assert plan.template_hash(built[0]) == plan.template_hash(built[1])


def test_racks_become_one_statefulset_each_pinned_to_its_zone() -> None:
    _, objects = build(**FULL)
    sets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "StatefulSet"}
    assert {name: s["spec"]["replicas"] for name, s in sets.items()} == {"demo-a": 2, "demo-b": 2, "demo-c": 1}
    a = sets["demo-a"]
    assert env(a)["RINGKV_RACK"] == "a"
    assert a["spec"]["selector"]["matchLabels"]["ringkv.io/rack"] == "a"
    assert a["spec"]["template"]["metadata"]["labels"]["ringkv.io/rack"] == "a"
    [term] = a["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["eu-1a"]}]
    assert "nodeAffinity" not in sets["demo-c"]["spec"]["template"]["spec"]["affinity"]  # rack without a zone
    # the seeds: the first node of the first two racks, so losing one rack leaves a seed
    data = by_name(objects, "ConfigMap", "demo-config")["data"]
    assert data["RINGKV_SEEDS"] == "demo-a-0.demo-peers.db.svc:7070,demo-b-0.demo-peers.db.svc:7070"
    assert container(a)["image"] == "reg/ringkv:0.2"
    assert container(a)["resources"] == FULL["resources"]


def test_a_config_change_changes_the_pod_template() -> None:
    """Pods read the ConfigMap only at start: its hash in the template makes a change roll them."""
    def annotation(**spec: Any) -> str:
        sts = by_name(build(**spec)[1], "StatefulSet", "demo")
        return str(sts["spec"]["template"]["metadata"]["annotations"][resources.CONFIG_HASH_ANNOTATION])

    assert annotation() == annotation()
    assert annotation() != annotation(config={"durability": "batch"})
    assert annotation() != annotation(writeQuorum=3)


def test_status_selector_matches_the_pods() -> None:
    cluster, objects = build()
    pod_labels = by_name(objects, "StatefulSet", "demo")["spec"]["template"]["metadata"]["labels"]
    pairs = dict(item.split("=") for item in resources.selector(cluster).split(","))
    assert pairs.items() <= pod_labels.items()
