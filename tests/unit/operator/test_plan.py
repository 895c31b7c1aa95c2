"""The pure decisions: shape, the size-change refusal, drift, and the order of a rollout."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ringkv_operator import plan, resources, settings
from ringkv_operator import spec as specmod

from .samples import kvcluster


def cluster(**spec: Any) -> specmod.ClusterSpec:
    return specmod.parse(kvcluster(**spec))


def live_sts(name: str, replicas: int, rack: str | None = None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/instance": "demo"} | ({plan.RACK_LABEL: rack} if rack else {})
    return {"kind": "StatefulSet", "metadata": {"name": name, "labels": labels}, "spec": {"replicas": replicas}}


# -- shape -------------------------------------------------------------------------------------------------------


def test_without_racks_one_statefulset() -> None:
    assert plan.desired_shape(cluster(replicas=4, replicationFactor=3)) == (plan.RackSet("demo", 4),)


@pytest.mark.parametrize(("replicas", "sizes"), [(3, [1, 1, 1]), (5, [2, 2, 1]), (7, [3, 2, 2]), (2, [1, 1])])
def test_node_i_goes_to_rack_i_mod_racks(replicas: int, sizes: list[int]) -> None:
    racks = [{"name": "a", "zone": "z1"}, {"name": "b"}, {"name": "c"}]
    shape = plan.desired_shape(cluster(replicas=replicas, replicationFactor=min(3, replicas), racks=racks))
    assert [r.replicas for r in shape] == sizes  # a rack without nodes gets no StatefulSet
    assert shape[0] == plan.RackSet("demo-a", sizes[0], "a", "z1")


def test_node_order_and_seeds() -> None:
    # the seeds do not change with the size (the pods' template would)
    for replicas in (2, 3, 7):
        assert plan.seeds(cluster(replicas=replicas)) == ["demo-0", "demo-1"]
        assert plan.seeds(cluster(replicas=replicas, racks=[{"name": "a"}, {"name": "b"}, {"name": "c"}])) == \
            ["demo-a-0", "demo-b-0"]
    assert plan.seeds(cluster(replicas=1, replicationFactor=1)) == ["demo-0", "demo-1"]
    shape = plan.desired_shape(cluster(replicas=5, racks=[{"name": "a"}, {"name": "b"}]))
    assert plan.node_order(shape) == ["demo-a-0", "demo-b-0", "demo-a-1", "demo-b-1", "demo-a-2"]
    assert plan.seed_pods(shape) == ["demo-a-0", "demo-b-0"]
    assert plan.seed_pods(plan.desired_shape(cluster(replicas=3))) == ["demo-0", "demo-1"]


# -- drift -------------------------------------------------------------------------------------------------------


def test_contains_ignores_what_the_api_server_adds() -> None:
    desired = {"spec": {"ports": [{"name": "http", "port": 8080}], "type": "ClusterIP"}}
    live = {"spec": {"ports": [{"name": "http", "port": 8080, "nodePort": None}], "type": "ClusterIP",
                     "clusterIP": "10.0.0.1"}, "status": {}}
    assert plan.contains(live, desired)
    assert not plan.contains(live, {"spec": {"type": "NodePort"}})
    assert not plan.contains(live, {"spec": {"ports": []}})  # lists: same length
    assert not plan.contains({}, desired)


def test_patch_for_an_unchanged_object_is_none() -> None:
    spec = cluster()
    [sts] = resources.statefulsets(spec, plan.desired_shape(spec), settings.Settings())
    assert plan.patch_for(sts, sts) is None
    assert plan.patch_for(sts, None) is None  # missing: created, not patched


def test_a_statefulset_patch_leaves_out_the_immutable_fields() -> None:
    spec = cluster()
    [old] = resources.statefulsets(spec, plan.desired_shape(spec), settings.Settings())
    new_spec = cluster(image="reg/ringkv:2")
    [new] = resources.statefulsets(new_spec, plan.desired_shape(new_spec), settings.Settings())
    patch = plan.patch_for(new, old)
    assert patch is not None
    assert patch["spec"]["template"]["spec"]["containers"][0]["image"] == "reg/ringkv:2"
    assert not set(plan.STATEFULSET_IMMUTABLE) & set(patch["spec"])
    assert "selector" in new["spec"]  # the desired object itself is not changed


def test_a_config_map_patch_removes_dropped_keys() -> None:
    desired = {"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"A": "1"}}
    live = {"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"A": "0", "B": "2"}}
    assert plan.patch_for(desired, live) == {"kind": "ConfigMap", "metadata": {"name": "c"},
                                             "data": {"A": "1", "B": None}}


# -- rollout -----------------------------------------------------------------------------------------------------


def sts(name: str, image: str, replicas: int = 1) -> dict[str, Any]:
    """A StatefulSet as the operator builds them, reduced to what the rollout reads: its hashes."""
    return {"kind": "StatefulSet", "metadata": {"name": name, "annotations": {plan.SPEC_HASH_ANNOTATION: f"s-{image}"}},
            "spec": {"replicas": replicas,
                     "template": {"metadata": {"annotations": {plan.TEMPLATE_HASH_ANNOTATION: f"t-{image}"}}}}}


def pod(name: str, image: str, ready: bool = True) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": {plan.TEMPLATE_HASH_ANNOTATION: f"t-{image}"}},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


RACKS = ("demo-a", "demo-b", "demo-c")


def test_settled_and_rolling_are_read_from_the_pods() -> None:
    old, patched = sts("demo-a", "old"), sts("demo-a", "new")
    assert plan.settled(old, [pod("demo-a-0", "old"), pod("demo-ab-0", "new", ready=False)])
    assert not plan.rolling(old, [pod("demo-a-0", "old")])
    # just patched: the StatefulSet's status may not know yet, the pod's template hash does
    assert not plan.settled(patched, [pod("demo-a-0", "old")])
    assert plan.rolling(patched, [pod("demo-a-0", "old")])
    assert not plan.settled(old, [])  # the pod is not there (yet)
    assert not plan.settled(old, [pod("demo-a-0", "old", ready=False)])
    assert plan.settled(patched, [pod("demo-a-0", "new")])


def test_missing_statefulsets_are_created_at_once() -> None:
    assert plan.rollout([(sts("demo-a", "new"), None), (sts("demo-b", "new"), None)], []) == ["demo-a", "demo-b"]


def test_a_new_template_rolls_one_rack_at_a_time() -> None:
    live = {name: sts(name, "old") for name in RACKS}
    pods = {name: pod(f"{name}-0", "old") for name in RACKS}

    def step() -> list[str]:
        return plan.rollout([(sts(name, "new"), live[name]) for name in RACKS], list(pods.values()))

    assert step() == ["demo-a"]
    live["demo-a"] = sts("demo-a", "new")  # patched; its pod still runs the old template
    assert step() == []
    pods["demo-a"] = pod("demo-a-0", "new", ready=False)  # replaced, not ready yet
    assert step() == []
    pods["demo-a"] = pod("demo-a-0", "new")
    assert step() == ["demo-b"]
    live["demo-b"], pods["demo-b"] = sts("demo-b", "new"), pod("demo-b-0", "new")
    assert step() == ["demo-c"]
    live["demo-c"], pods["demo-c"] = sts("demo-c", "new"), pod("demo-c-0", "new")
    assert step() == []


def test_an_unsettled_rack_blocks_other_racks_but_gets_its_own_fix() -> None:
    pairs = [(sts("demo-a", "new"), sts("demo-a", "old")), (sts("demo-b", "new"), sts("demo-b", "old"))]
    pods = [pod("demo-a-0", "old"), pod("demo-b-0", "old", ready=False)]  # b crashes with the old image
    assert plan.rollout(pairs, pods) == ["demo-b"]
    assert plan.rollout(pairs[:1], [pod("demo-a-0", "old"), pod("demo-a-1", "old", ready=False)]) == ["demo-a"]


def test_nothing_drifted_nothing_to_do() -> None:
    pairs = [(sts(name, "new"), sts(name, "new")) for name in RACKS]
    assert plan.rollout(pairs, [pod(f"{name}-0", "new") for name in RACKS]) == []


def test_a_statefulset_drifts_when_its_spec_hash_does_not_when_the_server_normalizes() -> None:
    spec = cluster(resources={"requests": {"cpu": "0.5"}})
    [sts] = resources.statefulsets(spec, plan.desired_shape(spec), settings.Settings())
    served = json.loads(json.dumps(sts))  # as the API server returns it: defaulted and normalized
    served["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "500m"
    served["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    assert plan.patch_for(sts, served) is None
    new = cluster(resources={"requests": {"cpu": "0.5"}}, image="reg/ringkv:2")
    [changed] = resources.statefulsets(new, plan.desired_shape(new), settings.Settings())
    patch = plan.patch_for(changed, served)
    assert patch is not None and patch["metadata"]["annotations"] == changed["metadata"]["annotations"]


# -- deletion ----------------------------------------------------------------------------------------------------


def test_deletion_takes_only_what_the_cluster_owns() -> None:
    def obj(name: str, uid: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "ownerReferences": [{"kind": "KVCluster", "uid": uid}]}}

    assert [o["metadata"]["name"] for o in plan.owned([obj("a", "u1"), obj("b", "u2"), {"metadata": {"name": "c"}}],
                                                     "u1")] == ["a"]


def test_deletion_policy_delete_takes_the_nodes_claims_only() -> None:
    claims = [{"metadata": {"name": n}} for n in ("data-demo-0", "data-demo-a-12", "data-demo-x", "data-demos-0",
                                                  "other-demo-0")]
    assert [c["metadata"]["name"] for c in plan.volume_claims("demo", claims)] == ["data-demo-0", "data-demo-a-12"]


def test_the_labels_deletion_lists_by_are_on_every_object() -> None:
    spec = cluster(racks=[{"name": "a"}])
    shape = plan.desired_shape(spec)
    for obj in resources.all_objects(spec, shape, settings.Settings()):
        assert resources.owned_labels("demo").items() <= obj["metadata"]["labels"].items()
    [sts] = resources.statefulsets(spec, shape, settings.Settings())
    claim_labels = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["labels"]
    assert resources.claim_labels("demo").items() <= claim_labels.items()
