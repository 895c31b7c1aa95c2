"""The scaling policy (`scaling.step`): which node goes next, each phase's move, the refusals, drift, and, as a
property, that any size change reaches the spec one node at a time through an idealised cluster."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv_operator import scaling
from ringkv_operator import spec as specmod
from ringkv_operator.scaling import Inputs, NodeView
from tests.unit.operator.samples import kvcluster

NOW = "2026-12-02T10:00:00Z"


def spec(replicas: int, racks: Sequence[str] = (), rf: int = 3, **extra: Any) -> specmod.ClusterSpec:
    body = kvcluster(replicas=replicas, replicationFactor=rf, **extra)
    if racks:
        body["spec"]["racks"] = [{"name": r} for r in racks]
    return specmod.parse(body)


def view(pod: str, members: Mapping[str, str], mode: str = "normal", **extra: Any) -> NodeView:
    return NodeView(pod, True, mode, "ring-1", True, dict(members), frozenset(m for m, s in members.items()
                                                                            if s != "left"), **extra)


def ring(pods: Sequence[str], **modes: str) -> dict[str, NodeView]:
    """Every pod answering, normal (or the mode given), seeing all of them; one view."""
    members = {p: modes.get(p.replace("-", "_"), "normal") for p in pods}
    return {p: view(p, members, members[p]) for p in pods}


def inputs(s: specmod.ClusterSpec, committed: Mapping[str, int], live: Mapping[str, int] | None = None,
           nodes: Mapping[str, NodeView] | None = None, operation: Mapping[str, Any] | None = None,
           claims: Mapping[str, Mapping[str, str]] | None = None, **extra: Any) -> Inputs:
    live = dict(committed) if live is None else live
    pods = sorted(scaling.pods_of(live))
    return Inputs(s, dict(committed), dict(live), {p: True for p in pods},
                  dict(claims if claims is not None else {scaling.claim_of(p): {} for p in pods}),
                  operation, nodes if nodes is not None else ring(pods), NOW, **extra)


# -- scale up -------------------------------------------------------------------------------------------------


def test_scale_up_adds_one_node_and_waits_for_it_to_join_on_every_ring() -> None:
    s = spec(5)
    first = scaling.step(inputs(s, {"demo": 3}))
    assert first.operation is not None
    assert (first.operation["kind"], first.operation["node"], first.operation["phase"]) == \
        ("ScaleUp", "demo-3", "AddingNode")
    assert first.committed == {"demo": 4} and first.replicas == {"demo": 4}
    assert (first.operation["from"], first.operation["to"]) == (3, 4)
    assert [e.reason for e in first.events] == ["ScalingUp", "AddingNode"]
    assert not first.rollout_allowed

    pods = ["demo-0", "demo-1", "demo-2"]
    starting = scaling.step(inputs(s, {"demo": 4}, operation=first.operation, nodes=ring(pods)))
    assert starting.operation is not None and starting.operation["phase"] == "AddingNode"
    assert "waiting for demo-3 to start" in starting.waiting

    streaming = [{"range": "1:2", "state": "done", "keys": 10, "bytes": 100},
                 {"range": "2:3", "state": "streaming", "keys": 5, "bytes": 50}]
    nodes = ring(pods)
    nodes["demo-3"] = view("demo-3", {p: "normal" for p in pods} | {"demo-3": "joining"}, "joining",
                           streaming=streaming)
    joining = scaling.step(inputs(s, {"demo": 4}, operation=starting.operation, nodes=nodes))
    assert joining.operation is not None and joining.operation["phase"] == "Joining"
    assert joining.operation["progress"] == {"rangesTotal": 2, "rangesDone": 1, "keys": 15, "bytes": 150}
    assert joining.operation["summary"] == "adding demo-3 (Joining, 1/2 ranges): 3 -> 4 nodes"

    # normal on its own ring, but one other node has not heard yet: not done
    nodes = ring([*pods, "demo-3"])
    nodes["demo-0"] = view("demo-0", {p: "normal" for p in pods} | {"demo-3": "joining"})
    waiting = scaling.step(inputs(s, {"demo": 4}, operation=joining.operation, nodes=nodes))
    assert waiting.operation is not None and "demo-0 does not see demo-3" in waiting.waiting

    done = scaling.step(inputs(s, {"demo": 4}, operation=joining.operation, nodes=ring([*pods, "demo-3"])))
    assert done.operation is None and done.finished is not None
    assert done.finished["result"] == "Succeeded" and done.finished["finished"] == NOW
    assert done.target == {"demo": 5}  # not there yet: the next node follows
    assert [e.reason for e in done.events] == ["NodeJoined"]

    nxt = scaling.step(inputs(s, {"demo": 4}, target=done.target))
    assert nxt.operation is not None and nxt.operation["node"] == "demo-4"


def test_the_next_node_waits_for_a_settled_ring() -> None:
    nodes = ring(["demo-0", "demo-1", "demo-2"], demo_1="leaving")
    got = scaling.step(inputs(spec(4), {"demo": 3}, nodes=nodes))
    assert got.operation is None and got.committed == {"demo": 3}
    assert got.waiting == "before adding demo-3: demo-0 does not see demo-1 up and normal"
    nodes = ring(["demo-0", "demo-1", "demo-2"])
    nodes["demo-2"] = replace(nodes["demo-2"], view="ring-2")
    assert scaling.step(inputs(spec(4), {"demo": 3}, nodes=nodes)).waiting.endswith("the nodes' rings differ")


def test_a_volume_left_by_a_decommission_is_deleted_before_the_pod_comes_back() -> None:
    claims = {f"data-demo-{k}": {} for k in range(3)} | {
        "data-demo-3": {scaling.DECOMMISSIONED_ANNOTATION: "2026-12-01T00:00:00Z"}}
    got = scaling.step(inputs(spec(4), {"demo": 3}, claims=claims))
    assert got.operation is not None and got.operation["phase"] == "PreparingVolume"
    assert got.actions == (scaling.Action("delete_claim", "data-demo-3"),)
    assert got.committed == {"demo": 3} and got.replicas == {"demo": 3}
    terminating = claims | {"data-demo-3": {scaling.TERMINATING: "1", scaling.DECOMMISSIONED_ANNOTATION: "x"}}
    waits = scaling.step(inputs(spec(4), {"demo": 3}, claims=terminating, operation=got.operation))
    assert waits.actions == () and "to be deleted" in waits.waiting
    gone = scaling.step(inputs(spec(4), {"demo": 3}, claims=claims | {"data-demo-3": {}}, operation=got.operation))
    assert gone.operation is not None and gone.operation["phase"] == "AddingNode" and gone.committed == {"demo": 4}


def test_racks_grow_round_robin_and_shrink_in_reverse() -> None:
    s6, s3 = spec(6, "abc"), spec(3, "abc")
    three = {"demo-a": 1, "demo-b": 1, "demo-c": 1}
    assert [n for n, _ in walk(s6, three)] == ["demo-a-1", "demo-b-1", "demo-c-1"]
    assert [n for n, _ in walk(s3, {"demo-a": 2, "demo-b": 2, "demo-c": 2})] == ["demo-c-1", "demo-b-1",
                                                                                  "demo-a-1"]


def test_a_new_cluster_of_one_statefulset_is_built_whole_one_with_racks_a_node_at_a_time() -> None:
    whole = scaling.step(inputs(spec(3), {}, live={}, nodes={}))
    assert whole.committed == {"demo": 3} and whole.operation is None
    racked = scaling.step(inputs(spec(3, "abc"), {}, live={}, nodes={}))
    assert racked.operation is not None and racked.operation["node"] == "demo-a-0"
    assert racked.committed == {"demo-a": 1}
    assert [n for n, _ in walk(spec(3, "abc"), {})] == ["demo-a-0", "demo-b-0", "demo-c-0"]


# -- scale down -----------------------------------------------------------------------------------------------


def test_scale_down_decommissions_verifies_then_lowers_the_statefulset() -> None:
    s = spec(3)
    pods = [f"demo-{k}" for k in range(4)]
    first = scaling.step(inputs(s, {"demo": 4}))
    assert first.operation is not None
    assert (first.operation["kind"], first.operation["node"], first.operation["phase"]) == \
        ("ScaleDown", "demo-3", "Decommissioning")
    assert first.actions == (scaling.Action("decommission", "demo-3"),)
    assert first.committed == {"demo": 4} and first.replicas == {"demo": 4}

    nodes = ring(pods, demo_3="leaving")
    nodes["demo-3"] = replace(nodes["demo-3"], decommission={
        "id": "decommission-1", "progress": {"phase": "streaming", "ranges_total": 8, "ranges_done": 3}})
    leaving = scaling.step(inputs(s, {"demo": 4}, operation=first.operation, nodes=nodes))
    assert leaving.operation is not None and leaving.actions == ()  # no second POST while it leaves
    assert leaving.operation["nodeOperation"] == "decommission-1"
    assert leaving.operation["progress"]["rangesDone"] == 3

    # it says left, but demo-0 still has it leaving: verify waits
    nodes = ring(pods, demo_3="left")
    nodes["demo-0"] = view("demo-0", {p: "normal" for p in pods[:3]} | {"demo-3": "leaving"})
    verifying = scaling.step(inputs(s, {"demo": 4}, operation=leaving.operation, nodes=nodes))
    assert verifying.operation is not None and verifying.operation["phase"] == "Verifying"
    assert verifying.replicas == {"demo": 4} and verifying.actions == ()

    removing = scaling.step(inputs(s, {"demo": 4}, operation=verifying.operation, nodes=ring(pods, demo_3="left")))
    assert removing.operation is not None and removing.operation["phase"] == "RemovingVolume"
    assert removing.committed == {"demo": 3} and removing.replicas == {"demo": 3}
    assert removing.actions == (scaling.Action("mark_claim", "data-demo-3"),)
    assert [e.reason for e in removing.events] == ["NodeLeft", "RemovingNode"]

    pod_still_there = scaling.step(inputs(s, {"demo": 3}, live={"demo": 3}, operation=removing.operation,
                                          claims={"data-demo-3": {scaling.DECOMMISSIONED_ANNOTATION: NOW}}))
    assert pod_still_there.operation is None  # pods_of(live) no longer has demo-3: done
    assert pod_still_there.actions == ()  # deletionPolicy Retain: the marked volume stays
    assert pod_still_there.finished is not None and "kept, marked decommissioned" in pod_still_there.finished["message"]

    delete = spec(3, storage={"deletionPolicy": "Delete"})
    deleted = scaling.step(inputs(delete, {"demo": 3}, operation=removing.operation,
                                  claims={"data-demo-3": {scaling.DECOMMISSIONED_ANNOTATION: NOW}}))
    assert deleted.actions == (scaling.Action("delete_claim", "data-demo-3"),)


def test_never_lowered_on_a_stale_marker_the_node_is_read_again() -> None:
    pods = [f"demo-{k}" for k in range(4)]
    op = scaling.step(inputs(spec(3), {"demo": 4})).operation
    assert op is not None
    verifying = {**op, "phase": "Verifying"}
    # restarted mid-decommission: back to normal (its decommission rolled back)
    again = scaling.step(inputs(spec(3), {"demo": 4}, operation=verifying, nodes=ring(pods)))
    assert again.operation is not None and again.operation["phase"] == "Decommissioning"
    assert again.replicas == {"demo": 4}
    removing = {**op, "phase": "RemovingNode"}
    again = scaling.step(inputs(spec(3), {"demo": 4}, operation=removing, nodes=ring(pods)))
    assert again.operation is not None and again.operation["phase"] == "Decommissioning"
    assert again.committed == {"demo": 4} and again.actions == ()


def test_a_leaver_that_is_down_counts_as_left_only_when_every_ring_says_so() -> None:
    pods = [f"demo-{k}" for k in range(4)]
    op = {**(scaling.step(inputs(spec(3), {"demo": 4})).operation or {}), "phase": "Decommissioning"}
    nodes = ring(pods, demo_3="leaving")
    del nodes["demo-3"]
    waits = scaling.step(inputs(spec(3), {"demo": 4}, operation=op, nodes=nodes))
    assert waits.operation is not None and waits.operation["phase"] == "Decommissioning"
    assert waits.waiting == "waiting for demo-3 to answer"
    nodes = ring(pods, demo_3="left")
    del nodes["demo-3"]
    goes = scaling.step(inputs(spec(3), {"demo": 4}, operation=op, nodes=nodes))
    assert goes.operation is not None and goes.operation["phase"] == "RemovingVolume"


# -- refusals ---------------------------------------------------------------------------------------------------


def test_refusals_below_rf_two_changes_and_immutable_fields() -> None:
    below = scaling.step(inputs(spec(2, rf=3), {"demo": 3}))
    assert below.refusal == scaling.Refusal("BelowReplicationFactor", (
        "spec.replicas cannot go below spec.replicationFactor (3): each key is stored on that many distinct "
        "nodes; keep spec.replicas at 3 or more"))
    assert below.operation is None and below.committed == {"demo": 3}

    both = scaling.step(inputs(spec(5), {"demo": 3}, template_changed=True))
    assert both.refusal is not None and both.refusal.reason == "TwoChangesAtOnce"
    assert both.refusal.message.startswith("spec changes the size (3 -> 5 nodes) and the pods' template together")
    assert both.operation is None and not both.rollout_allowed
    # a template change made while a size change was under way waits for it (queued)
    queued = scaling.step(inputs(spec(5), {"demo": 4}, template_changed=True, target={"demo": 5}))
    assert queued.refusal is None and queued.operation is not None and not queued.rollout_allowed

    fixed = scaling.step(inputs(spec(5), {"demo": 3}, immutable="spec.racks[].zone is immutable: ..."))
    assert fixed.refusal == scaling.Refusal("ImmutableFieldChanged", "spec.racks[].zone is immutable: ...")
    assert fixed.operation is None


def test_a_shrink_the_remaining_volumes_cannot_hold_is_refused() -> None:
    pods = [f"demo-{k}" for k in range(4)]
    gib = 2**30
    nodes = {p: replace(v, storage={"sstable_bytes": 7 * gib, "disk_total_bytes": 10 * gib})
             for p, v in ring(pods).items()}
    got = scaling.step(inputs(spec(3), {"demo": 4}, nodes=nodes))
    assert got.refusal is not None and got.refusal.reason == "InsufficientCapacity"
    assert "9.3 GiB each" in got.refusal.message and "80% of the smallest remaining volume (10.0 GiB)" in \
        got.refusal.message
    roomy = {p: replace(v, storage={"sstable_bytes": gib, "disk_total_bytes": 10 * gib}) for p, v in nodes.items()}
    assert scaling.step(inputs(spec(3), {"demo": 4}, nodes=roomy)).refusal is None


# -- drift ------------------------------------------------------------------------------------------------------


def test_a_statefulset_scaled_down_by_hand_is_scaled_back() -> None:
    got = scaling.step(inputs(spec(3), {"demo": 3}, live={"demo": 2}))
    assert got.replicas == {"demo": 3} and got.operation is None


def test_a_node_added_by_hand_is_decommissioned_before_it_is_cut() -> None:
    pods = [f"demo-{k}" for k in range(4)]
    got = scaling.step(inputs(spec(3), {"demo": 3}, live={"demo": 4}, nodes=ring(pods)))
    assert got.operation is not None and (got.operation["reason"], got.operation["node"]) == ("Drift", "demo-3")
    assert got.actions == (scaling.Action("decommission", "demo-3"),)
    assert got.replicas == {"demo": 4} and got.committed == {"demo": 3}
    assert got.events[0].type == "Warning" and got.events[0].reason == "Drift"
    # a pod that runs but does not answer yet is waited for (it may be about to announce itself)...
    nodes = ring(pods[:3])
    waits = scaling.step(inputs(spec(3), {"demo": 3}, live={"demo": 4}, nodes=nodes))
    assert waits.operation is not None and waits.operation["phase"] == "Decommissioning"
    assert waits.replicas == {"demo": 4} and waits.waiting == "waiting for demo-3 to answer"
    # ...one never created is cut at once
    never = replace(inputs(spec(3), {"demo": 3}, live={"demo": 4}, nodes=nodes), pods={p: True for p in pods[:3]})
    cut = scaling.step(never)
    assert cut.operation is not None and cut.operation["phase"] == "RemovingVolume" and cut.replicas == {"demo": 3}


# -- the property -------------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    """An idealised cluster: nodes start normal at once, a decommission leaves at once, pods follow replicas."""

    replicas: dict[str, int]
    left: set[str] = field(default_factory=set)
    claims: dict[str, dict[str, str]] = field(default_factory=dict)

    def nodes(self) -> dict[str, NodeView]:
        pods = sorted(scaling.pods_of(self.replicas))
        members = {p: "left" if p in self.left else "normal" for p in pods}
        return {p: view(p, members, members[p]) for p in pods}


def walk(s: specmod.ClusterSpec, committed: dict[str, int], limit: int = 300) -> list[tuple[str, str]]:
    """Run `step` against a Cluster until the spec is reached; the (node, kind) of each operation, in order."""
    world = Cluster(dict(committed), claims={scaling.claim_of(p): {} for p in scaling.pods_of(committed)})
    operation: dict[str, Any] | None = None
    target: dict[str, int] | None = None
    done: list[tuple[str, str]] = []
    for _ in range(limit):
        pods = scaling.pods_of(world.replicas)
        got = scaling.step(Inputs(s, committed, dict(world.replicas), {p: True for p in pods}, dict(world.claims),
                                  operation, world.nodes(), NOW, target=target))
        assert got.refusal is None, got.refusal
        before, after = sum(committed.values()), sum(got.committed.values())
        assert abs(after - before) <= 1, (committed, got.committed)  # one node at a time
        if before >= s.replication_factor:
            assert after >= s.replication_factor
        for action in got.actions:
            if action.kind == "decommission":
                world.left.add(action.name)
            elif action.kind == "delete_claim":
                world.claims.pop(action.name, None)
            elif action.kind == "mark_claim":
                world.claims[action.name] = {scaling.DECOMMISSIONED_ANNOTATION: NOW}
        deleted = {a.name for a in got.actions if a.kind == "delete_statefulset"}
        world.replicas = {n: r for n, r in got.replicas.items() if n not in deleted}
        for p in scaling.pods_of(world.replicas):
            world.claims.setdefault(scaling.claim_of(p), {})
            if p in world.left and world.claims[scaling.claim_of(p)] == {}:
                pass
        world.left = {p for p in world.left if p in scaling.pods_of(world.replicas)}
        if got.finished is not None:
            done.append((got.finished["node"], got.finished["kind"]))
        committed, operation, target = got.committed, got.operation, got.target
        if operation is None and committed == scaling.wanted_sizes(s):
            return done
    raise AssertionError(f"not reached in {limit} steps: {committed} -> {scaling.wanted_sizes(s)}")


@settings(max_examples=60, deadline=None)
@given(racks=st.integers(0, 4), start=st.integers(3, 9), end=st.integers(3, 9))
def test_any_size_change_reaches_the_spec_one_node_at_a_time(racks: int, start: int, end: int) -> None:
    names = "abcd"[:racks]
    committed = {r.name: r.replicas for r in scaling.shape_of(spec(start, names), scaling.wanted_sizes(
        spec(start, names)))}
    done = walk(spec(end, names), committed)
    assert len(done) == abs(end - start)
    assert {kind for _, kind in done} <= {"ScaleUp" if end > start else "ScaleDown"}
    # balanced at every step: rack sizes never differ by more than one


def test_a_rack_emptied_by_a_shrink_is_deleted_and_forgotten() -> None:
    s = spec(3, "abcd")
    four = {"demo-a": 1, "demo-b": 1, "demo-c": 1, "demo-d": 1}
    assert [n for n, _ in walk(s, four)] == ["demo-d-0"]
    # a status that still lists it at 0 (a merge patch once left it there) is no dead end
    got = scaling.step(inputs(s, {**four, "demo-d": 0}, live={k: v for k, v in four.items() if k != "demo-d"}))
    assert got.committed == {"demo-a": 1, "demo-b": 1, "demo-c": 1} and got.operation is None


def test_a_drifted_pod_is_cut_only_when_every_node_answers_that_it_never_joined() -> None:
    pods = [f"demo-{k}" for k in range(3)]
    nodes = ring(pods)
    del nodes["demo-1"]  # one node does not answer: no evidence
    never = replace(inputs(spec(3), {"demo": 3}, live={"demo": 4}, nodes=nodes), pods={p: True for p in pods})
    got = scaling.step(never)
    assert got.operation is not None and got.operation["phase"] == "Decommissioning" and got.replicas == {"demo": 4}


def test_adding_a_node_that_never_starts_is_cancelled_when_the_spec_no_longer_wants_it() -> None:
    first = scaling.step(inputs(spec(4), {"demo": 3}))
    assert first.operation is not None and first.committed == {"demo": 4}
    pods = ["demo-0", "demo-1", "demo-2"]
    # still wanted: waited for
    waits = scaling.step(inputs(spec(4), {"demo": 4}, operation=first.operation, nodes=ring(pods)))
    assert waits.operation is not None and waits.committed == {"demo": 4}
    # the spec went back to 3 and demo-3 never announced itself: cancelled, the StatefulSet back to 3
    back = scaling.step(inputs(spec(3), {"demo": 4}, operation=first.operation, nodes=ring(pods)))
    assert back.operation is None and back.committed == {"demo": 3} and back.replicas == {"demo": 3}
    assert back.finished is not None and back.finished["result"] == "Cancelled"
    assert [e.reason for e in back.events] == ["ScalingCancelled"]
    # once it is in a ring it is not cancelled: it joins, then the shrink removes it
    nodes = ring(pods)
    nodes["demo-0"] = view("demo-0", {p: "normal" for p in pods} | {"demo-3": "joining"})
    kept = scaling.step(inputs(spec(3), {"demo": 4}, operation=first.operation, nodes=nodes))
    assert kept.operation is not None and kept.committed == {"demo": 4}


def test_deleting_the_volume_ends_the_operation_only_once_it_is_seen_gone() -> None:
    delete = spec(3, storage={"deletionPolicy": "Delete"})
    op = {**(scaling.step(inputs(delete, {"demo": 4})).operation or {}), "phase": "RemovingVolume"}
    claims = {f"data-demo-{k}": {} for k in range(3)} | {"data-demo-3": {scaling.DECOMMISSIONED_ANNOTATION: NOW}}
    asked = scaling.step(inputs(delete, {"demo": 3}, operation=op, claims=claims))
    assert asked.operation is not None and asked.actions == (scaling.Action("delete_claim", "data-demo-3"),)
    terminating = claims | {"data-demo-3": {scaling.TERMINATING: NOW}}
    done = scaling.step(inputs(delete, {"demo": 3}, operation=asked.operation, claims=terminating))
    assert done.operation is None and done.finished is not None and done.actions == ()
