"""The status from observations: phase, conditions, members, the refusal condition."""

from __future__ import annotations

from typing import Any

from ringkv_operator import plan, scaling, status
from ringkv_operator import spec as specmod

from .samples import kvcluster

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"


def cluster(**spec: Any) -> specmod.ClusterSpec:
    return specmod.parse(kvcluster(**spec))


def pod(name: str, ready: bool = True, deleting: bool = False, template: str = "t1") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "db", "annotations": {plan.TEMPLATE_HASH_ANNOTATION: template}}
    if deleting:
        meta["deletionTimestamp"] = T0
    return {"metadata": meta, "status": {"podIP": "10.0.0.1", "conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}}


def member(node_id: str, up: bool = True, state: str = "normal") -> dict[str, Any]:
    return {"node_id": node_id, "status": state, "up": up, "host": f"{node_id}.demo-peers.db.svc", "rack": "rack1",
            "tokens": 16, "local": False, "phi": 0.1}


def sts(name: str = "demo", replicas: int = 3, template: str = "t1") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"replicas": replicas, "template": {
        "metadata": {"annotations": {plan.TEMPLATE_HASH_ANNOTATION: template}}}}}


PODS = ["demo-0", "demo-1", "demo-2"]


def conditions(got: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in got["conditions"]}


def compute(spec: specmod.ClusterSpec | None = None, previous: dict[str, Any] | None = None, now: str = T0,
            decision: plan.Decision | None = None, **observed: Any) -> dict[str, Any]:
    spec = spec or cluster()
    decision = decision or plan.Decision(plan.desired_shape(spec))
    return status.compute(spec, decision, status.Observed(**observed), previous or {}, now)


def test_a_healthy_cluster_is_running() -> None:
    got = compute(statefulsets=[sts()], pods=[pod(n) for n in PODS], members=[member(n) for n in PODS])
    assert got["phase"] == "Running"
    assert (got["replicas"], got["readyReplicas"], got["observedGeneration"]) == (3, 3, 1)
    assert got["selector"] == ("app.kubernetes.io/component=node,app.kubernetes.io/instance=demo,"
                               "app.kubernetes.io/name=ringkv")
    assert conditions(got) == {"Available": ("True", "QuorumReachable"), "Progressing": ("False", "Complete"),
                               "Degraded": ("False", "AsExpected"), "Scaling": ("False", "SizeMatchesSpec"),
                               "Rebalancing": ("False", "Balanced"), "ScalingRefused": ("False", "SizeMatchesSpec"),
                               "Paused": ("False", "Reconciling"), "ReconcileError": ("False", "Reconciled")}
    assert list(conditions(got)) == list(status.CONDITION_TYPES)
    assert got["rollout"] is None  # no rollout: the merge patch removes a finished one
    assert got["members"][0] == {"nodeId": "demo-0", "pod": "demo-0", "host": "demo-0.demo-peers.db.svc",
                                 "status": "normal", "up": True, "rack": "rack1", "tokens": 16}
    assert all(c["observedGeneration"] == 1 and c["lastTransitionTime"] == T0 for c in got["conditions"])


def test_creating_until_every_node_was_ready_once() -> None:
    got = compute(statefulsets=[sts()], pods=[pod("demo-0"), pod("demo-1", ready=False)],
                  members=[member("demo-0")])
    assert got["phase"] == "Creating"
    assert conditions(got)["Progressing"] == ("True", "Creating")
    assert conditions(got)["Degraded"][0] == "False"  # not degraded while being created
    assert conditions(got)["Available"] == ("False", "TooFewNodesReady")  # 1 < max(R, W) = 2
    two = compute(previous=got, pods=[pod("demo-0"), pod("demo-1"), pod("demo-2", ready=False)])
    assert two["phase"] == "Creating" and conditions(two)["Available"] == ("True", "QuorumReachable")


def test_a_node_down_later_is_degraded() -> None:
    running = compute(statefulsets=[sts()], pods=[pod(n) for n in PODS], members=[member(n) for n in PODS])
    got = compute(previous=running, now=T1, statefulsets=[sts()],
                  pods=[pod("demo-0"), pod("demo-1"), pod("demo-2", ready=False)],
                  members=[member("demo-0"), member("demo-1"), member("demo-2", up=False)])
    assert got["phase"] == "Degraded"
    degraded = status.find(got["conditions"], "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "NodesNotReady")
    assert "2 of 3 nodes ready" in degraded["message"] and "demo-2" in degraded["message"]
    assert degraded["lastTransitionTime"] == T1  # it changed
    assert status.find(got["conditions"], "Available")["lastTransitionTime"] == T0  # it did not


def test_a_member_down_in_gossip_is_degraded_even_if_pods_are_ready() -> None:
    running = compute(statefulsets=[sts()], pods=[pod(n) for n in PODS], members=[member(n) for n in PODS])
    got = compute(previous=running, statefulsets=[sts()], pods=[pod(n) for n in PODS],
                  members=[member("demo-0"), member("demo-1"), member("demo-2", state="leaving")])
    assert got["phase"] == "Degraded" and conditions(got)["Degraded"] == ("True", "MembersDown")
    missing = compute(previous=running, statefulsets=[sts()], pods=[pod(n) for n in PODS],
                      members=[member("demo-0"), member("demo-1")])
    assert conditions(missing)["Degraded"] == ("True", "MembersMissing")


def test_a_join_abandoned_before_it_took_tokens_is_no_degradation() -> None:
    """A node added by hand and cut at once, gossip still remembering it `joining` without tokens (its pod is
    gone): it owns nothing. With tokens, or with its pod still there, it counts."""
    running = compute(statefulsets=[sts()], pods=[pod(n) for n in PODS], members=[member(n) for n in PODS])
    ghost = {**member("demo-3", up=False, state="joining"), "tokens": 0}
    got = compute(previous=running, statefulsets=[sts()], pods=[pod(n) for n in PODS],
                  members=[*(member(n) for n in PODS), ghost])
    assert got["phase"] == "Running" and conditions(got)["Degraded"][0] == "False"
    assert [m["nodeId"] for m in got["members"]] == PODS
    holding = compute(previous=running, statefulsets=[sts()], pods=[pod(n) for n in PODS],
                      members=[*(member(n) for n in PODS), {**ghost, "tokens": 16}])
    assert conditions(holding)["Degraded"] == ("True", "MembersDown")


def test_a_rollout_is_updating_not_degraded() -> None:
    running = compute(statefulsets=[sts()], pods=[pod(n) for n in PODS], members=[member(n) for n in PODS])
    # the StatefulSet has a new template; demo-2 was replaced and is starting, the others wait their turn
    got = compute(previous=running, statefulsets=[sts(template="t2")],
                  pods=[pod("demo-0"), pod("demo-1"), pod("demo-2", ready=False, template="t2")],
                  members=[member("demo-0")])
    assert got["phase"] == "Updating"
    assert conditions(got)["Progressing"] == ("True", "RollingUpdate")
    assert conditions(got)["Degraded"][0] == "False"
    waiting = compute(previous=running, statefulsets=[sts()], pods=[pod(n) for n in PODS],
                      members=[member(n) for n in PODS], pending_rollout=["demo-b"])
    assert waiting["phase"] == "Updating" and "demo-b" in status.find(waiting["conditions"], "Progressing")["message"]


def test_unknown_members_do_not_degrade_but_say_why() -> None:
    got = compute(statefulsets=[sts()], pods=[pod(n) for n in PODS], members=None,
                  members_error="http://demo-0...: ClientConnectorError")
    assert got["phase"] == "Running" and got["members"] == []
    assert "ClientConnectorError" in status.find(got["conditions"], "Degraded")["message"]


def test_terminating_pods_do_not_count() -> None:
    got = compute(statefulsets=[sts()], pods=[pod("demo-0"), pod("demo-1"), pod("demo-2", deleting=True)])
    assert (got["replicas"], got["readyReplicas"]) == (2, 2)


def test_a_refused_size_change_is_a_condition_and_the_cluster_runs_on() -> None:
    spec = cluster(replicas=5)
    running = compute(statefulsets=[sts()], pods=[pod(n) for n in PODS], members=[member(n) for n in PODS])
    step = scaling.Step({"demo": 3}, {"demo": 3}, refusal=scaling.Refusal("TwoChangesAtOnce", "one at a time"))
    got = compute(spec=spec, decision=plan.Decision(scaling.shape_of(spec, {"demo": 3})), previous=running, now=T1,
                  statefulsets=[sts()], pods=[pod(n) for n in PODS], members=[member(n) for n in PODS], step=step)
    refused = status.find(got["conditions"], "ScalingRefused")
    assert (refused["status"], refused["reason"], refused["message"]) == ("True", "TwoChangesAtOnce", "one at a time")
    assert refused["lastTransitionTime"] == T1
    assert status.find(got["conditions"], "Scaling")["status"] == "False"
    assert got["phase"] == "Running" and got["size"] == 3  # the cluster itself is fine at its running size
    assert status.newly_true(got, running, "ScalingRefused") == refused["message"]
    assert status.newly_true(got, got, "ScalingRefused") is None


def test_a_node_being_added_is_not_degraded_and_shows_the_operation() -> None:
    running = compute(statefulsets=[sts()], pods=[pod(n) for n in PODS], members=[member(n) for n in PODS])
    op = {"kind": "ScaleUp", "node": "demo-3", "phase": "Joining", "summary": "adding demo-3 (Joining): 3 -> 4",
          "message": "", "progress": {"rangesTotal": 4, "rangesDone": 1, "keys": 10}}
    step = scaling.Step({"demo": 4}, {"demo": 4}, operation=op, target={"demo": 5})
    got = compute(spec=cluster(replicas=5), decision=plan.Decision(scaling.shape_of(cluster(), {"demo": 4})),
                  previous=running, statefulsets=[sts()], pods=[*(pod(n) for n in PODS), pod("demo-3", ready=False)],
                  members=[*(member(n) for n in PODS), {**member("demo-3"), "status": "joining"}], step=step)
    assert got["phase"] == "Scaling" and got["operation"] == op and got["target"] == {"demo": 5}
    assert (got["size"], got["statefulSets"]) == (4, {"demo": 4})
    assert conditions(got)["Degraded"] == ("False", "AsExpected")
    assert conditions(got)["Scaling"] == ("True", "ScalingUp")
    assert conditions(got)["Rebalancing"] == ("True", "StreamingRanges")
    assert status.find(got["conditions"], "Rebalancing")["message"] == "demo-3: 1/4 ranges, 10 keys"


def test_an_unbuildable_spec_fails() -> None:
    got = status.failed("spec.replicas must be an integer from 1 to 100", {}, 4, T0)
    assert got["phase"] == "Failed" and got["observedGeneration"] == 4
    assert {c["type"]: c["reason"] for c in got["conditions"]} == {
        "Available": "InvalidSpec", "Progressing": "InvalidSpec", "Degraded": "InvalidSpec"}


def test_changed_ignores_keys_the_operator_does_not_write() -> None:
    got = compute(statefulsets=[sts()], pods=[pod(n) for n in PODS], members=[member(n) for n in PODS])
    assert not status.changed(got, {**got, "other": 1})
    assert status.changed(got, {**got, "readyReplicas": 2})
    again = compute(previous=got, now=T1, statefulsets=[sts()], pods=[pod(n) for n in PODS],
                    members=[member(n) for n in PODS])
    assert not status.changed(again, got)  # nothing happened: no write, no new transition times


def test_a_rollout_waiting_for_the_ring_says_why_and_a_stuck_one_is_degraded() -> None:
    running = compute(statefulsets=[sts()], pods=[pod(n) for n in PODS], members=[member(n) for n in PODS])
    record = {"statefulSet": "demo", "pod": "demo-2", "phase": plan.WAITING, "since": T0, "partition": 2,
              "message": "before rolling demo-2: demo-0 is not ready", "ringHealthy": False}
    got = compute(previous=running, now=T1, statefulsets=[sts(template="t2")], pods=[pod(n) for n in PODS],
                  members=[member(n) for n in PODS], rollout=record)
    progressing = status.find(got["conditions"], "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("True", "WaitingForRing")
    assert progressing["message"] == "rolling out a new template: demo; before rolling demo-2: demo-0 is not ready"
    assert got["phase"] == "Updating" and got["rollout"] == record
    assert conditions(got)["Degraded"] == ("False", "AsExpected")
    stuck = compute(previous=got, now=T1, statefulsets=[sts(template="t2")], pods=[pod(n) for n in PODS],
                    members=[member(n) for n in PODS], rollout={**record, "phase": plan.ROLLING},
                    stuck="demo-2 has not become ready on the new template for 700 s")
    degraded = status.find(stuck["conditions"], "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "RolloutStuck")
    assert degraded["message"] == "demo-2 has not become ready on the new template for 700 s"
    assert conditions(stuck)["Progressing"] == ("True", "RollingUpdate")
    assert status.stuck_message(stuck) == degraded["message"] and status.stuck_message(got) == ""


def test_a_paused_cluster_keeps_its_status_with_paused_true() -> None:
    running = compute(statefulsets=[sts()], pods=[pod(n) for n in PODS], members=[member(n) for n in PODS])
    held = status.paused(running, 2, T1)
    assert set(held) == {"conditions"}  # the phase and the rest stay
    paused = status.find(held["conditions"], "Paused")
    assert (paused["status"], paused["reason"], paused["lastTransitionTime"]) == ("True", "PausedByAnnotation", T1)
    assert [c["type"] for c in held["conditions"]].count("Paused") == 1
    assert status.newly_true(held, running, "Paused") is not None
    assert not status.changed(status.paused({**running, **held}, 2, T1), {**running, **held})
    resumed = compute(previous={**running, **held}, now=T1, statefulsets=[sts()], pods=[pod(n) for n in PODS],
                      members=[member(n) for n in PODS])
    assert conditions(resumed)["Paused"] == ("False", "Reconciling")
    assert status.is_paused({"metadata": {"annotations": {status.PAUSED_ANNOTATION: "true"}}})
    assert not status.is_paused({"metadata": {"annotations": {status.PAUSED_ANNOTATION: "false"}}})
    assert not status.is_paused({"metadata": {}})


def test_an_api_error_is_a_condition_until_a_pass_succeeds() -> None:
    running = compute(statefulsets=[sts()], pods=[pod(n) for n in PODS], members=[member(n) for n in PODS])
    message = 'POST /apis/apps/v1/namespaces/db/statefulsets: HTTP 403: statefulsets.apps "demo" is forbidden: ' \
              "exceeded quota: compute, requested: count/statefulsets.apps=1"
    failed = status.reconcile_error(running, status.api_error_reason(403, message), message, 1, T1)
    error = status.find(failed["conditions"], "ReconcileError")
    assert (error["status"], error["reason"], error["message"]) == ("True", "QuotaExceeded", message)
    assert status.find(failed["conditions"], "Available") == status.find(running["conditions"], "Available")
    again = compute(previous={**running, **failed}, now=T1, statefulsets=[sts()], pods=[pod(n) for n in PODS],
                    members=[member(n) for n in PODS])
    assert conditions(again)["ReconcileError"] == ("False", "Reconciled")
    assert [status.api_error_reason(c, "x") for c in (403, 409, 422, 404, 500)] == [
        "Forbidden", "Conflict", "Invalid", "NotFound", "ApiError"]


def test_objects_that_are_not_the_clusters_are_reported() -> None:
    got = compute(statefulsets=[sts()], pods=[pod(n) for n in PODS], members=[member(n) for n in PODS],
                  foreign=["StatefulSet demo"])
    error = status.find(got["conditions"], "ReconcileError")
    assert (error["status"], error["reason"]) == ("True", "ForeignObject")
    assert error["message"] == ("StatefulSet demo already exists and is not owned by this KVCluster (no "
                                "ownerReference with its uid): the operator leaves it alone and builds nothing on "
                                "it; delete or rename it")
    assert status.foreign_message(["ConfigMap demo-config", "Service demo"]).startswith(
        "ConfigMap demo-config, Service demo already exist and are not owned")
