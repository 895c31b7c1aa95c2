"""The pure decisions: shape, the size-change refusal, drift, and the order of a rollout."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ringkv_operator import plan, resources, scaling, settings
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


# -- rollout, pod by pod -----------------------------------------------------------------------------------------


def partitioned(name: str, image: str, replicas: int, partition: int) -> dict[str, Any]:
    return plan.with_partition(sts(name, image, replicas), partition)


def test_a_new_template_is_applied_with_the_partition_at_the_size() -> None:
    old, new = sts("demo", "old", 3), sts("demo", "new", 3)
    assert plan.partition_for(new, None) == 0  # a new StatefulSet: every pod is new anyway
    assert plan.partition_for(new, old) == 3  # no pod rolls until the operator says so
    assert plan.partition_for(new, partitioned("demo", "new", 3, 1)) == 1  # same template: left where it is
    held = plan.with_partition(new, 3)
    assert held["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"partition": 3}}
    assert "updateStrategy" not in new["spec"]  # a copy
    on_delete = {**new, "spec": {**new["spec"], "updateStrategy": {"type": "OnDelete"}}}
    assert plan.with_partition(on_delete, 3)["spec"]["updateStrategy"] == {"type": "OnDelete"}


def test_the_pods_above_the_partition_roll_first_then_the_next_one_waits_for_the_operator() -> None:
    live = partitioned("demo", "new", 3, 3)
    old = [pod(f"demo-{k}", "old") for k in range(3)]
    assert plan.roll(live, old) == plan.Roll("demo", "demo-2", False, 2, first=True)
    live = partitioned("demo", "new", 3, 2)
    assert plan.roll(live, old) == plan.Roll("demo", "demo-2", True, 2)  # being replaced
    assert plan.roll(live, [*old[:2], pod("demo-2", "new", ready=False)]) == plan.Roll("demo", "demo-2", True, 2)
    assert plan.roll(live, [*old[:2], pod("demo-2", "new")]) == plan.Roll("demo", "demo-1", False, 1)
    # a pod already on the template (recreated) needs no turn of its own
    assert plan.roll(live, [old[0], pod("demo-1", "new"), pod("demo-2", "new")]) == \
        plan.Roll("demo", "demo-0", False, 0)
    assert plan.roll(live, [pod(f"demo-{k}", "new") for k in range(3)]) == plan.Roll("demo", "", False, 0)
    assert plan.roll(partitioned("demo", "new", 3, 0), old) is None  # the controller's to finish
    assert plan.roll(sts("demo", "new", 3), old) is None  # no partition: as an older operator left it


def view(pod_name: str, hints: dict[str, int] | None = None,
         streaming: tuple[dict[str, Any], ...] = ()) -> scaling.NodeView:
    return scaling.NodeView(pod_name, True, "normal", "v1", True, {}, frozenset(), streaming, {}, None,
                    {} if hints is None else hints)


def test_the_ring_gate() -> None:
    nodes = {"demo-0": view("demo-0"), "demo-1": view("demo-1", {"demo-0": 3})}
    assert plan.ring_gate(nodes, "", 3) == ""
    assert plan.ring_gate(nodes, "demo-0 is not ready", 3) == "demo-0 is not ready"
    assert plan.ring_gate(nodes, "", 2) == ("3 hints wait for delivery (demo-1: 3), more than the 2 a rollout allows "
                                            "(RINGKV_OPERATOR_ROLLOUT_MAX_PENDING_HINTS)")
    streaming = {**nodes, "demo-2": view("demo-2", streaming=({"state": "streaming"}, {"state": "done"}))}
    assert plan.ring_gate(streaming, "", 3) == "ranges are streaming into demo-2"
    done = {**nodes, "demo-2": view("demo-2", streaming=({"state": "done"},))}
    assert plan.ring_gate(done, "", 3) == ""
    assert plan.ring_gate({**nodes, "demo-2": scaling.NodeView("demo-2", True)}, "", 3) == \
        "demo-2 did not say how many hints it holds"


T0, T5, T10, T40 = ("2026-01-01T00:00:00Z", "2026-01-01T00:00:05Z", "2026-01-01T00:00:10Z", "2026-01-01T00:00:40Z")


def test_advance_lowers_the_partition_only_past_the_gate() -> None:
    nxt = plan.Roll("demo", "demo-2", False, 2)
    waiting = plan.advance(nxt, "demo-0 is not ready", None, T0, T10, 0)
    assert waiting.partition is None and waiting.record == {
        "statefulSet": "demo", "pod": "demo-2", "phase": "WaitingForRing", "since": T10, "partition": 2,
        "message": "before rolling demo-2: demo-0 is not ready", "ringHealthy": False}
    still = plan.advance(nxt, "3 hints wait", waiting.record, T0, T40, 0)
    assert still.record is not None and still.record["since"] == T10  # the same wait
    go = plan.advance(nxt, "", still.record, T0, T40, 0)
    assert (go.partition, go.started) == (2, True)
    assert go.record is not None and go.record["phase"] == "Rolling" and go.record["since"] == T40
    rolling = plan.advance(plan.Roll("demo", "demo-2", True, 2), None, go.record, T0, T40, 0)
    assert rolling.partition is None and rolling.record is not None and rolling.record["since"] == T40
    assert plan.advance(None, None, go.record, T0, T40, 0) == plan.Advance(None)
    assert plan.advance(plan.Roll("demo", "", False, 0), None, go.record, T0, T40, 0) == plan.Advance(None, 0)


def test_a_statefulsets_first_pod_waits_for_the_ring_to_settle() -> None:
    first = plan.Roll("demo-b", "demo-b-0", False, 0, first=True)
    # the last pod became ready at T5; 30 s of settle from then
    settling = plan.advance(first, "", None, T5, T10, 30)
    assert settling.partition is None and settling.record is not None
    assert settling.record["phase"] == "Settling" and settling.record["message"] == (
        "before rolling demo-b-0, the first of StatefulSet demo-b: the ring has been healthy for 5 of 30 s")
    assert plan.advance(first, "", settling.record, T5, T40, 30).partition == 0
    # the ring was unhealthy when last looked at: healthy from now on
    unhealthy = {**settling.record, "ringHealthy": False}
    again = plan.advance(first, "", unhealthy, T5, T40, 30)
    assert again.partition is None and again.record is not None and again.record["healthySince"] == T40
    assert plan.advance(first, "", again.record, T5, "2026-01-01T00:01:10Z", 30).partition == 0
    # a cluster whose pods have long been ready rolls its first pod at once; later pods never settle
    assert plan.advance(first, "", None, "2025-12-31T00:00:00Z", T10, 30).partition == 0
    assert plan.advance(plan.Roll("demo-b", "demo-b-1", False, 1), "", None, T5, T10, 30).partition == 1


def test_a_rollout_at_one_pod_past_the_deadline_is_stuck() -> None:
    record = {"statefulSet": "demo", "pod": "demo-2", "phase": "Rolling", "since": T0,
              "message": "replacing demo-2 with the new template; waiting for it to be ready"}
    assert plan.stuck(record, T10, 30) == ""
    assert plan.stuck(record, T40, 30) == (
        "demo-2 has not become ready on the new template for 40 s (RINGKV_OPERATOR_ROLLOUT_DEADLINE_SECONDS 30), "
        "StatefulSet demo: replacing demo-2 with the new template; waiting for it to be ready")
    waiting = {**record, "phase": "WaitingForRing", "message": "before rolling demo-2: demo-0 is not ready"}
    assert plan.stuck(waiting, T40, 30).startswith("demo-2 has waited to roll for 40 s")
    assert plan.stuck(None, T40, 30) == ""


def test_pods_ready_since_the_last_of_them_got_ready() -> None:
    def ready(name: str, since: str, is_ready: bool = True) -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": {"conditions": [
            {"type": "Ready", "status": "True" if is_ready else "False", "lastTransitionTime": since}]}}

    assert plan.ready_since([ready("a", T5), ready("b", "2026-01-01T00:00:07.5+00:00"), ready("c", T40, False)]) \
        == "2026-01-01T00:00:07.5+00:00"
    assert plan.ready_since([]) == ""
    assert plan.seconds_between(T0, "2026-01-01T00:00:07.5+00:00") == 7.5
    assert plan.seconds_between("", T0) == 0.0


# -- the node image ----------------------------------------------------------------------------------------------


def test_the_node_image_is_pinned_until_asked_to_change() -> None:
    default = "ringkv:0.2.0"
    assert plan.node_image(None, None, None, default, False) == default  # a new cluster
    assert plan.node_image(None, "ringkv:0.1.0", "ringkv:0.1.0", default, False) == "ringkv:0.1.0"
    assert plan.node_image(None, None, "ringkv:0.1.0", default, False) == "ringkv:0.1.0"  # built before the record
    assert plan.node_image(None, "ringkv:0.1.0", None, default, True) == default  # ringkv.io/upgrade-image
    assert plan.node_image("reg/ringkv:9", "ringkv:0.1.0", None, default, False) == "reg/ringkv:9"
    # what status.nodeImage records: the image a StatefulSet was given, not one refused or waiting
    assert plan.image_in_use("ringkv:2", ["ringkv:1", "ringkv:2"], "ringkv:1", "ringkv:1") == "ringkv:2"
    assert plan.image_in_use("ringkv:9", ["ringkv:1"], "ringkv:1", "ringkv:1") == "ringkv:1"
    assert plan.image_in_use("ringkv:9", ["ringkv:1"], None, "ringkv:1") == "ringkv:1"
    assert plan.image_in_use("ringkv:1", [], None, None) == "ringkv:1"
    spec = cluster(image="reg/ringkv:9")
    [built] = resources.statefulsets(spec, plan.desired_shape(spec), settings.Settings())
    assert plan.container_image(built, resources.CONTAINER) == "reg/ringkv:9"
    assert plan.container_image(built, "other") is None


# -- ownership ---------------------------------------------------------------------------------------------------


def test_ownership_is_the_owner_references_uid_not_the_name() -> None:
    def obj(*refs: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {"name": "demo", "ownerReferences": list(refs)}}

    mine = {"kind": "KVCluster", "name": "demo", "uid": "u1"}
    assert plan.owned_by(obj(mine), "u1")
    assert not plan.owned_by(obj({**mine, "uid": "u0"}), "u1")  # an earlier KVCluster of the same name
    assert not plan.owned_by(obj({**mine, "kind": "Deployment"}), "u1")
    assert not plan.owned_by({"metadata": {"name": "demo"}}, "u1")
    assert not plan.owned_by(obj(mine), "")  # no uid known: nothing is ours
