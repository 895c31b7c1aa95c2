"""The operator as a real `kopf run` process against the kmock Kubernetes emulator, with real ringkv nodes.

Who plays what (kubefake.py has the details):

- kmock's KubernetesEmulator (in a thread of this process, on 127.0.0.1) is the API server. It stores objects
  and streams watches, and gives created objects a uid; no defaulting, no generation bumps. This test sets
  what an API server would (generation, resourceVersion) when it writes a KVCluster.
- `python -m kopf run -m ringkv_operator.handlers --all-namespaces --standalone --liveness=...` is the
  operator, exactly as the chart's Deployment runs it, pointed at the emulator by a kubeconfig.
- This test is kubectl: it creates, patches and deletes KVClusters over HTTP, after the operator's watch is
  open, since every new watch replays all objects.
- kubefake's controllers run in the background as the real ones do: a StatefulSet controller per StatefulSet
  (OrderedReady, scale-down and rolling updates from the highest ordinal, PVCs from the claim template), a
  kubelet per pod (a real `ringkv node` on 127.0.0.1 with the settings the operator put in the ConfigMap and
  the pod template, only addresses rewritten to loopback; restarted when it exits unless held; the Pod's
  status with podIP 127.0.0.1, the node's real HTTP port as the container port "http", Ready from /ready),
  pvc-protection and the garbage collector.
- The operator reaches the nodes' admin API at RINGKV_OPERATOR_NODE_URL_TEMPLATE=http://{pod_ip}:{port}
  (production: the pod's DNS name), so the members in the status come from the real ring.

Every wait has a deadline; every process is stopped in teardown; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

kmock = pytest.importorskip("kmock", reason="kmock is missing (pip install -e '.[dev]')")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]'")

from . import kubefake  # noqa: E402
from .kubefake import (  # noqa: E402
    CONFIGMAPS,
    EVENTS,
    KVC,
    NS,
    PDBS,
    PODS,
    PVCS,
    SERVICES,
    STS,
    World,
    http_json,
    kvcluster,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def put_ok(url: str, key: str, value: Any, w: int) -> bool:
    try:
        http_json(f"{url}/api/v1/put?w={w}", {"key": key, "value": value})
    except urllib.error.HTTPError as e:
        if e.code != 503:
            raise
        return False
    return True


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    # A rack's first pod rolls once the ring has been healthy for a second (not the default 30 s).
    with kubefake.world(tmp_path, operator_env={"RINGKV_OPERATOR_ROLLOUT_SETTLE_SECONDS": "1"}) as w:
        yield w


def owned_by(obj: dict[str, Any], name: str) -> bool:
    return obj["metadata"].get("ownerReferences") == [{
        "apiVersion": "ringkv.io/v1alpha1", "kind": "KVCluster", "name": name, "uid": f"uid-{name}",
        "controller": True, "blockOwnerDeletion": True}]


# -- the scenario ------------------------------------------------------------------------------------------------


def test_operator_runs_a_kvcluster_end_to_end(world: World, tmp_path: Path) -> None:
    api, controller = world.api, world.controller

    # 1. kubectl apply: the operator builds the objects, each owned by the KVCluster.
    api.create(KVC, kvcluster("demo", replicas=3, replicationFactor=3, readQuorum=2, writeQuorum=2,
                              image="ringkv:1", storage={"size": "1Gi"}, config={"durability": "batch"}))
    world.token("demo")  # the clients here send its admin token
    sts = world.wait("the StatefulSet", lambda: api.get(f"{STS}/demo"))
    objects = {
        "StatefulSet demo": sts,
        "Service demo": world.wait("the client Service", lambda: api.get(f"{SERVICES}/demo")),
        "Service demo-peers": world.wait("the peer Service", lambda: api.get(f"{SERVICES}/demo-peers")),
        "ConfigMap demo-config": world.wait("the ConfigMap", lambda: api.get(f"{CONFIGMAPS}/demo-config")),
        "PodDisruptionBudget demo": world.wait("the PDB", lambda: api.get(f"{PDBS}/demo")),
    }
    for what, obj in objects.items():
        assert owned_by(obj, "demo"), what
        kubernetes_validate.validate(obj, "1.37.0", strict=True)  # what the operator wrote is valid Kubernetes
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "ringkv:1"
    assert objects["Service demo"]["spec"]["ports"][0]["name"] == "http"
    assert objects["Service demo"]["metadata"]["labels"]["ringkv.io/service"] == "client"
    assert objects["Service demo-peers"]["spec"]["publishNotReadyAddresses"] is True
    assert objects["PodDisruptionBudget demo"]["spec"]["maxUnavailable"] == 1
    assert objects["ConfigMap demo-config"]["data"]["RINGKV_DURABILITY"] == "batch"
    assert "ringkv.io/finalizer" in (world.kvcluster("demo") or {})["metadata"]["finalizers"]

    # 2. The StatefulSet's pods run real nodes; the status shows them, and the ring they formed.
    status = world.wait("the cluster to be Running with 3 members", lambda: world.running("demo", 3), 120)
    assert status["replicas"] == 3 and status["observedGeneration"] == 1
    world.wait("the Ring column to show agreement", lambda: (world.kvcluster("demo") or {})["status"].get(
        "ringAgreed") is True, 30)
    assert status["selector"] == ("app.kubernetes.io/component=node,app.kubernetes.io/instance=demo,"
                                  "app.kubernetes.io/name=ringkv")
    assert {m["nodeId"] for m in status["members"]} == {"demo-0", "demo-1", "demo-2"}
    assert all(m["pod"] == m["nodeId"] and m["tokens"] > 0 and m["host"] == "127.0.0.1" for m in status["members"])
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {"Available": ("True", "QuorumReachable"), "Progressing": ("False", "Complete"),
                          "Degraded": ("False", "AsExpected"), "Scaling": ("False", "SizeMatchesSpec"),
                          "Rebalancing": ("False", "Balanced"), "ScalingRefused": ("False", "SizeMatchesSpec"),
                          "Paused": ("False", "Reconciling"), "ReconcileError": ("False", "Reconciled")}
    node = controller.pod("demo-1").node
    ring = http_json(node.url + "/admin/v1/ring")
    assert (ring["replication_factor"], ring["read_quorum"], ring["write_quorum"]) == (3, 2, 2)
    assert http_json(node.url + "/admin/v1/members")["cluster_name"] == f"{NS}/demo"
    # The status's members are one node's view; every coordinator sees every replica up a gossip round later.
    world.wait("a put at W=3 to succeed", lambda: put_ok(node.url, "before-rollout", {"n": 1}, w=3), 15)
    liveness = world.operator.liveness()
    assert liveness is not None and liveness["reconciler"]["last_reconcile"] > 0
    # The operator's own metrics: passes counted, the cluster's phase and sizes.
    exposed = world.wait("the operator's metrics to show demo Running", lambda: (
        m := world.operator.metrics()) and _sample(m, "ringkv_operator_cluster_phase", name="demo",
                                                   phase="Running") == 1 and m)
    assert _sample(exposed, "ringkv_operator_reconciles_total", result="ok") >= 1
    assert _sample(exposed, "ringkv_operator_cluster_ready_nodes", name="demo") == 3
    assert _sample(exposed, "ringkv_operator_cluster_desired_nodes", name="demo") == 3
    assert _sample(exposed, "ringkv_operator_clusters") == 1

    # 3. A new image rolls into the StatefulSet; the controller replaces the pods one by one.
    api.patch(f"{KVC}/demo", {"metadata": {"generation": 2}, "spec": {"image": "ringkv:2"}})
    world.wait("the new image in the StatefulSet", lambda: (api.get(f"{STS}/demo") or {})["spec"]["template"]
               ["spec"]["containers"][0]["image"] == "ringkv:2")
    world.wait("the rolled cluster to be Running", lambda: world.running("demo", 3, generation=2), 120)
    assert [pod for pod, _ in controller.rolls] == ["demo-2", "demo-1", "demo-0"]  # highest ordinal first
    got = http_json(controller.pod("demo-0").node.url + "/api/v1/get?key=before-rollout&r=3")
    assert got["value"] == {"n": 1}

    # 4. A node crashes and stays down: Degraded, still Available (2 of 3 >= max(R, W)); back: Running.
    #    The operator is restarted first: it resumes from what it observes.
    assert world.operator.stop() == 0
    world.operator.start()
    controller.hold("demo-2")
    world.wait("Degraded", lambda: world.condition("demo", "Degraded").get("status") == "True", 60)
    assert world.condition("demo", "Available")["status"] == "True"
    assert (world.kvcluster("demo") or {})["status"]["phase"] == "Degraded"
    world.wait("the operator's metrics to show demo Degraded", lambda: _sample(
        world.operator.metrics(), "ringkv_operator_cluster_phase", name="demo", phase="Degraded") == 1)
    controller.release("demo-2")
    world.wait("Running again", lambda: world.running("demo", 3, generation=2), 90)

    # 5. Fewer nodes than the replication factor is refused with a condition (the API server's CEL rule
    #    refuses it too; kmock runs none); the StatefulSet keeps its 3 nodes.
    api.patch(f"{KVC}/demo", {"metadata": {"generation": 3}, "spec": {"replicas": 2}})
    refused = world.wait("the ScalingRefused condition",
                         lambda: (c := world.condition("demo", "ScalingRefused")).get("status") == "True" and c)
    assert refused["reason"] == "BelowReplicationFactor" and refused["observedGeneration"] == 3
    assert refused["message"] == ("spec.replicas cannot go below spec.replicationFactor (3): each key is stored on "
                                  "that many distinct nodes; keep spec.replicas at 3 or more")
    assert (api.get(f"{STS}/demo") or {})["spec"]["replicas"] == 3
    assert (world.kvcluster("demo") or {})["status"]["phase"] == "Running"
    events = [e for e in api.items(EVENTS) if e.get("reason") == "ScalingRefused"]
    assert events and events[0]["type"] == "Warning"
    api.patch(f"{KVC}/demo", {"metadata": {"generation": 4}, "spec": {"replicas": 3}})
    world.wait("the refusal to clear", lambda: world.condition("demo", "ScalingRefused").get("status") == "False")

    # 6. Deletion: the operator removes what it owns, the volumes stay (deletionPolicy Retain), the
    #    finalizer goes and with it the KVCluster.
    claims = sorted(c["metadata"]["name"] for c in api.items(PVCS))
    assert claims == ["data-demo-0", "data-demo-1", "data-demo-2"]
    api.delete(f"{KVC}/demo")
    world.wait("the KVCluster to be gone", lambda: world.kvcluster("demo") is None)
    for path in (f"{STS}/demo", f"{SERVICES}/demo", f"{SERVICES}/demo-peers", f"{CONFIGMAPS}/demo-config",
                 f"{PDBS}/demo"):
        assert api.get(path) is None, path
    assert sorted(c["metadata"]["name"] for c in api.items(PVCS)) == claims
    world.wait("the pods to be gone", lambda: not api.items(PODS))
    world.wait("the cluster's series to leave the operator's metrics",
               lambda: 'name="demo"' not in world.operator.metrics() and world.operator.metrics())


def _sample(exposition: str, metric: str, **labels: str) -> float | None:
    """The value of the sample METRIC whose labels include LABELS, from a Prometheus text exposition."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def test_deletion_policy_delete_removes_the_volumes(world: World) -> None:
    api = world.api
    api.create(KVC, kvcluster("scratch", replicas=1, replicationFactor=1, readQuorum=1, writeQuorum=1,
                              storage={"size": "1Gi", "deletionPolicy": "Delete"}))
    world.token("scratch")  # the clients here send its admin token
    world.wait("the node of the cluster", lambda: (world.kvcluster("scratch") or {}).get("status", {})
               .get("readyReplicas") == 1, 60)
    assert [c["metadata"]["name"] for c in api.items(PVCS)] == ["data-scratch-0"]
    sts = api.get(f"{STS}/scratch") or {}
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    api.delete(f"{KVC}/scratch")
    world.wait("the KVCluster and its volume to be gone",
               lambda: world.kvcluster("scratch") is None and not api.items(PVCS))
    assert api.get(f"{STS}/scratch") is None


def test_racks_get_a_statefulset_each_and_roll_one_after_another(world: World) -> None:
    api, controller = world.api, world.controller
    api.create(KVC, kvcluster("ring", replicas=3, racks=[{"name": "a"}, {"name": "b"}, {"name": "c"}],
                              image="ringkv:1", storage={"size": "1Gi"}))
    world.token("ring")  # the clients here send its admin token
    status = world.wait("three racks of one node Running", lambda: world.running("ring", 3), 120)
    assert sorted(s["metadata"]["name"] for s in api.items(STS)) == ["ring-a", "ring-b", "ring-c"]
    assert {m["nodeId"]: m["rack"] for m in status["members"]} == {"ring-a-0": "a", "ring-b-0": "b", "ring-c-0": "c"}

    # A new image: the operator hands it to one rack's StatefulSet at a time, the next only once every pod
    # of the previous one runs it and is ready, so no key ever has two replicas restarting.
    api.patch(f"{KVC}/ring", {"metadata": {"generation": 2}, "spec": {"image": "ringkv:2"}})
    world.wait("the rolled cluster to be Running", lambda: world.running("ring", 3, generation=2), 120)
    assert controller.rolls == [
        ("ring-a-0", {"ring-a": "ringkv:2", "ring-b": "ringkv:1", "ring-c": "ringkv:1"}),
        ("ring-b-0", {"ring-a": "ringkv:2", "ring-b": "ringkv:2", "ring-c": "ringkv:1"}),
        ("ring-c-0", {"ring-a": "ringkv:2", "ring-b": "ringkv:2", "ring-c": "ringkv:2"}),
    ]


def test_a_spec_the_operator_cannot_build_fails_visibly(world: World) -> None:
    """The API server's validation would stop most bad specs; what gets through is reported, not built."""
    world.api.create(KVC, kvcluster("bad", replicas=3, config={"seeds": "elsewhere:7070"}))
    status = world.wait("phase Failed", lambda: ((world.kvcluster("bad") or {}).get("status") or {})
                        .get("phase") == "Failed" and world.kvcluster("bad"))["status"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "InvalidSpec" and "seeds" in degraded["message"]
    assert world.api.get(f"{STS}/bad") is None
