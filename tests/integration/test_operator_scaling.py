"""The operator scales the ring, against the faithful fake of Kubernetes (`kubefake`: kmock, a real `kopf run`,
background StatefulSet controllers and kubelets, real `ringkv node` processes for pods).

Under a continuous W=2 write / R=2 read load through the nodes that stay (every acknowledged write recorded,
`topology_helpers.Load`), a KVCluster's spec.replicas is patched and the operator adds or removes one node at
a time: join + stream + verify on every ring before the next, decommission + `left` on every ring before the
StatefulSet is lowered. Afterwards every acknowledged key reads back at R=2 with its last acknowledged value:
0 lost, 0 not-found, and the status (operation, phases, conditions) and events of each step are asserted.

Background anti-entropy is off (it would repair what a join or a decommission failed to move, and hide it).
Every wait has a deadline; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration import kubefake
from tests.integration.kubefake import EVENTS, KVC, PVCS, STS, World, http_json, kvcluster
from tests.integration.topology_helpers import Load, read_all

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CONFIG = {"durability": "batch", "aae_enabled": "false", "gossip_interval_s": "0.25"}
SCALE_S = 240.0  # from the patch to the size reached, Running


@dataclass(frozen=True)
class Via:
    """A node the load goes through (what `Load` needs of one)."""

    node_id: str
    url: str


@dataclass
class Watch:
    """Polls the KVCluster's status in the background: every distinct (kind, node, phase) of status.operation,
    in order, and the largest number of nodes in an operation at once."""

    world: World
    name: str
    phases: list[tuple[str, str, str]] = field(default_factory=list)
    scaling_true: bool = False
    rebalancing_true: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            found = (self.world.kvcluster(self.name) or {}).get("status") or {}
            op = found.get("operation")
            if op:
                seen = (op["kind"], op["node"], op["phase"])
                if not self.phases or self.phases[-1] != seen:
                    self.phases.append(seen)
            for c in found.get("conditions") or []:
                if c["type"] == "Scaling" and c["status"] == "True":
                    self.scaling_true = True
                if c["type"] == "Rebalancing" and c["status"] == "True":
                    self.rebalancing_true = True
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def nodes(self, kind: str) -> list[str]:
        out: list[str] = []
        for k, node, _ in self.phases:
            if k == kind and (not out or out[-1] != node):
                out.append(node)
        return out

    def phases_of(self, node: str) -> list[str]:
        return [p for _, n, p in self.phases if n == node]


def settled(world: World, name: str, size: int, generation: int) -> dict[str, Any] | None:
    """The status once the cluster runs `size` nodes, no operation in flight, every member up and normal."""
    found = world.running(name, size, generation)
    if found is None or found.get("operation") or found.get("size") != size or found.get("target"):
        return None
    return found


def vias(world: World, pods: Sequence[str]) -> list[Via]:
    return [Via(p, world.controller.pod(p).node.url) for p in pods]


def event_reasons(world: World) -> list[str]:
    return [str(e.get("reason")) for e in world.api.items(EVENTS)]


def check_every_acknowledged_key(load: Load, via: Via) -> None:
    assert load.not_found == [], load.not_found[:10]
    assert load.errors == [], load.errors[:10]
    assert load.stale == [], load.stale[:10]
    acked = load.acknowledged()
    got = read_all(via, sorted(acked), r=2)  # type: ignore[arg-type]
    lost = [k for k, (status, values) in got.items()
            if status not in (200, 300) or not acked[k].current(v["seq"] for v in values)]
    assert lost == [], f"{len(lost)} of {len(acked)} acknowledged keys lost: {lost[:10]}"
    print(f"\nload: {load.summary()}; every one of {len(acked)} acknowledged keys reads back")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with kubefake.world(tmp_path) as w:
        yield w


def patch_replicas(world: World, name: str, replicas: int, generation: int) -> None:
    world.api.patch(f"{KVC}/{name}", {"metadata": {"generation": generation}, "spec": {"replicas": replicas}})


def test_3_to_5_to_3_under_load_loses_nothing(world: World) -> None:
    api, controller = world.api, world.controller
    api.create(KVC, kvcluster("grow", replicas=3, replicationFactor=3, readQuorum=2, writeQuorum=2,
                              storage={"size": "1Gi"}, config=CONFIG))
    world.token("grow")  # the clients here send its admin token
    first = world.wait("3 nodes Running", lambda: settled(world, "grow", 3, 1), 150)
    assert first["statefulSets"] == {"grow": 3} and first["placement"]["racks"] == {}
    load = Load(vias(world, ["grow-0", "grow-1", "grow-2"]), writers=3, pace_s=0.02)
    load.start()
    watch = Watch(world, "grow")
    try:
        world.wait("the load to write", lambda: load.counts["writes ok"] >= 100, 30)

        # 3 -> 5: one node at a time, each joined on every ring before the next pod exists
        started = time.monotonic()
        patch_replicas(world, "grow", 5, 2)
        up = world.wait("5 nodes Running", lambda: settled(world, "grow", 5, 2), SCALE_S)
        grew_s = time.monotonic() - started
        assert watch.nodes("ScaleUp") == ["grow-3", "grow-4"], watch.phases
        assert "Joining" in watch.phases_of("grow-3") and "AddingNode" in watch.phases_of("grow-3")
        assert (up["size"], up["statefulSets"], up["phase"]) == (5, {"grow": 5}, "Running")
        assert up["lastOperation"]["node"] == "grow-4" and up["lastOperation"]["result"] == "Succeeded"
        assert {m["nodeId"] for m in up["members"]} == {f"grow-{k}" for k in range(5)}
        created_4 = controller.first("created", "grow-4")
        ready_3 = controller.first("ready", "grow-3")
        assert created_4 is not None and ready_3 is not None and created_4.t > ready_3.t
        assert watch.scaling_true
        reasons = event_reasons(world)
        for reason in ("ScalingUp", "AddingNode", "NodeJoined", "Scaled"):
            assert reason in reasons, (reason, reasons)
        print(f"\n3 -> 5 in {grew_s:.1f} s; operations seen: {watch.phases}")

        # 5 -> 3: the highest ordinal first, each decommissioned and left on every ring before it is removed
        watch.phases.clear()
        started = time.monotonic()
        patch_replicas(world, "grow", 3, 3)
        down = world.wait("3 nodes Running again", lambda: settled(world, "grow", 3, 3), SCALE_S)
        shrank_s = time.monotonic() - started
        assert watch.nodes("ScaleDown") == ["grow-4", "grow-3"], watch.phases
        assert {"Decommissioning", "RemovingVolume"} <= set(watch.phases_of("grow-4")), watch.phases
        assert (down["size"], down["statefulSets"]) == (3, {"grow": 3})
        assert {m["nodeId"] for m in down["members"]} == {"grow-0", "grow-1", "grow-2"}
        assert (api.get(f"{STS}/grow") or {})["spec"]["replicas"] == 3
        deleted_4, deleted_3 = controller.first("deleted", "grow-4"), controller.first("deleted", "grow-3")
        assert deleted_4 is not None and deleted_3 is not None and deleted_4.t < deleted_3.t
        claims = {c["metadata"]["name"]: c for c in api.items(PVCS)}
        for pod in ("grow-3", "grow-4"):  # deletionPolicy Retain: kept, marked
            assert "ringkv.io/decommissioned" in claims[f"data-{pod}"]["metadata"].get("annotations", {}), pod
        reasons = event_reasons(world)
        for reason in ("ScalingDown", "Decommissioning", "NodeLeft", "RemovingNode", "NodeRemoved"):
            assert reason in reasons, (reason, reasons)
        print(f"5 -> 3 in {shrank_s:.1f} s; operations seen: {watch.phases}")

        # and back to 4: the decommissioned volume of grow-3 is deleted first, the node joins afresh
        old_uid = claims["data-grow-3"]["metadata"]["uid"]
        patch_replicas(world, "grow", 4, 4)
        world.wait("4 nodes Running", lambda: settled(world, "grow", 4, 4), SCALE_S)
        claim = api.get(f"{PVCS}/data-grow-3") or {}
        assert claim["metadata"]["uid"] != old_uid
        assert "ringkv.io/decommissioned" not in claim["metadata"].get("annotations", {})
        state = http_json(controller.pod("grow-3").node.url + "/admin/v1/node")
        assert state["mode"] == "normal"
    finally:
        watch.stop()
        load.stop()
    check_every_acknowledged_key(load, vias(world, ["grow-0"])[0])


def test_racked_3_to_6_to_3_grows_round_robin_and_shrinks_in_reverse(world: World) -> None:
    api = world.api
    racks = [{"name": "a"}, {"name": "b"}, {"name": "c"}]
    api.create(KVC, kvcluster("ring", replicas=3, replicationFactor=3, readQuorum=2, writeQuorum=2, racks=racks,
                              storage={"size": "1Gi"}, config=CONFIG))
    world.token("ring")  # the clients here send its admin token
    watch = Watch(world, "ring")
    first = world.wait("3 racks of one node", lambda: settled(world, "ring", 3, 1), 150)
    # a racked cluster is created one node at a time too
    assert watch.nodes("ScaleUp") == ["ring-a-0", "ring-b-0", "ring-c-0"], watch.phases
    assert first["statefulSets"] == {"ring-a": 1, "ring-b": 1, "ring-c": 1}
    load = Load(vias(world, ["ring-a-0", "ring-b-0", "ring-c-0"]), writers=3, pace_s=0.02)
    load.start()
    try:
        world.wait("the load to write", lambda: load.counts["writes ok"] >= 100, 30)
        watch.phases.clear()
        patch_replicas(world, "ring", 6, 2)
        up = world.wait("6 nodes Running", lambda: settled(world, "ring", 6, 2), SCALE_S * 1.5)
        assert watch.nodes("ScaleUp") == ["ring-a-1", "ring-b-1", "ring-c-1"], watch.phases
        assert up["statefulSets"] == {"ring-a": 2, "ring-b": 2, "ring-c": 2}
        assert {m["nodeId"]: m["rack"] for m in up["members"]}["ring-c-1"] == "c"

        watch.phases.clear()
        patch_replicas(world, "ring", 3, 3)
        down = world.wait("3 nodes Running again", lambda: settled(world, "ring", 3, 3), SCALE_S * 1.5)
        assert watch.nodes("ScaleDown") == ["ring-c-1", "ring-b-1", "ring-a-1"], watch.phases
        assert down["statefulSets"] == {"ring-a": 1, "ring-b": 1, "ring-c": 1}
        assert sorted(s["metadata"]["name"] for s in api.items(STS)) == ["ring-a", "ring-b", "ring-c"]
    finally:
        watch.stop()
        load.stop()
    check_every_acknowledged_key(load, vias(world, ["ring-a-0"])[0])


def preload(via: Via, count: int, prefix: str) -> None:
    """`count` keys of 1 KB at W=3, so that streaming them takes a while (the stream is throttled)."""
    for i in range(count):
        http_json(f"{via.url}/api/v1/put?w=3", {"key": f"{prefix}-{i:05d}", "value": {"pad": "p" * 1000}})


def phase_is(world: World, name: str, kind: str, *phases: str) -> dict[str, Any] | None:
    op = ((world.kvcluster(name) or {}).get("status") or {}).get("operation") or {}
    return op if op.get("kind") == kind and op.get("phase") in phases else None


def kill_operator(world: World) -> None:
    assert world.operator is not None and world.operator.proc is not None
    world.operator.proc.kill()
    world.operator.proc.wait(10)


def test_the_operator_killed_mid_join_and_mid_decommission_resumes(world: World) -> None:
    api, controller = world.api, world.controller
    slow = {**CONFIG, "stream_mb_s": "0.1"}  # ~100 KB/s: a node's share of 600 KB streams for seconds
    api.create(KVC, kvcluster("resume", replicas=3, replicationFactor=3, readQuorum=2, writeQuorum=2,
                              storage={"size": "1Gi"}, config=slow))
    world.token("resume")  # the clients here send its admin token
    world.wait("3 nodes Running", lambda: settled(world, "resume", 3, 1), 150)
    preload(vias(world, ["resume-0"])[0], 600, "heavy")
    load = Load(vias(world, ["resume-0", "resume-1", "resume-2"]), writers=3, pace_s=0.02)
    load.start()
    assert world.operator is not None
    try:
        # mid-join: the operator dies, the node goes on joining; the restarted operator picks the operation up
        patch_replicas(world, "resume", 4, 2)
        joining = world.wait("resume-3 joining", lambda: phase_is(world, "resume", "ScaleUp", "Joining"), 60)
        kill_operator(world)
        world.operator.start()
        up = world.wait("4 nodes Running", lambda: settled(world, "resume", 4, 2), SCALE_S)
        assert up["lastOperation"]["node"] == "resume-3" and up["lastOperation"]["started"] == joining["started"]
        assert controller.first("created", "resume-4") is None  # never two nodes at once
        assert world.operator.starts == 2

        # mid-decommission: the operator dies while the node streams its ranges away, and the leaver is
        # killed too (it comes back normal: its decommission rolled back); the restarted operator asks again
        patch_replicas(world, "resume", 3, 3)
        world.wait("resume-3 streaming its ranges away",
                   lambda: (op := phase_is(world, "resume", "ScaleDown", "Decommissioning"))
                   and (op.get("progress") or {}).get("phase") == "streaming", 60)
        kill_operator(world)
        controller.kill("resume-3")
        world.wait("resume-3 back, normal", lambda: _mode(world, "resume-3") == "normal", 60)
        world.operator.start()
        down = world.wait("3 nodes Running again", lambda: settled(world, "resume", 3, 3), SCALE_S)
        assert down["lastOperation"]["node"] == "resume-3" and down["lastOperation"]["result"] == "Succeeded"
        assert (api.get(f"{STS}/resume") or {})["spec"]["replicas"] == 3
        claim = api.get(f"{PVCS}/data-resume-3") or {}
        assert "ringkv.io/decommissioned" in claim["metadata"].get("annotations", {})
    finally:
        load.stop()
    check_every_acknowledged_key(load, vias(world, ["resume-0"])[0])


def _mode(world: World, pod: str) -> str | None:
    try:
        return str(http_json(world.controller.pod(pod).node.url + "/admin/v1/node")["mode"])
    except (OSError, KeyError, ValueError, RuntimeError):  # RuntimeError: the node is not running
        return None


def test_refusals_and_drift(world: World) -> None:
    api = world.api
    racks = [{"name": "a", "zone": "z1"}, {"name": "b", "zone": "z2"}, {"name": "c", "zone": "z3"}]
    api.create(KVC, kvcluster("guard", replicas=3, replicationFactor=3, readQuorum=2, writeQuorum=2, racks=racks,
                              image="ringkv:1", storage={"size": "1Gi"}, config=CONFIG))
    world.token("guard")  # the clients here send its admin token
    world.wait("3 nodes Running", lambda: settled(world, "guard", 3, 1), 150)

    def refused() -> dict[str, Any] | None:
        c = world.condition("guard", "ScalingRefused")
        return c if c.get("status") == "True" else None

    # two changes at once: the size and the pods' template in one update
    api.patch(f"{KVC}/guard", {"metadata": {"generation": 2}, "spec": {"replicas": 4, "image": "ringkv:9"}})
    both = world.wait("TwoChangesAtOnce", refused, 30)
    assert both["reason"] == "TwoChangesAtOnce"
    assert both["message"] == ("spec changes the size (3 -> 4 nodes) and the pods' template together; ringkv "
                               "applies one change at a time: revert one of them, and apply it again once the other "
                               "has finished")
    images = {s["metadata"]["name"]: (s["spec"]["replicas"], s["spec"]["template"]["spec"]["containers"][0]["image"])
              for s in api.items(STS)}
    assert images == {f"guard-{r}": (1, "ringkv:1") for r in "abc"}
    api.patch(f"{KVC}/guard", {"metadata": {"generation": 3}, "spec": {"replicas": 3, "image": "ringkv:1"}})
    world.wait("the refusal to clear", lambda: refused() is None, 30)

    # an immutable field: a rack's zone (the CRD's CEL rule refuses it; the operator holds to it too)
    moved = [{"name": "a", "zone": "z9"}, *racks[1:]]
    api.patch(f"{KVC}/guard", {"metadata": {"generation": 4}, "spec": {"racks": moved}})
    zone = world.wait("ImmutableFieldChanged", refused, 30)
    assert zone["reason"] == "ImmutableFieldChanged"
    assert zone["message"].startswith("spec.racks[].zone is immutable: a rack's volumes live in its zone; add a new "
                                      "rack in the other zone and remove this one instead")
    sts_a = api.get(f"{STS}/guard-a") or {}
    assert "z1" in str(sts_a["spec"]["template"]["spec"].get("affinity"))
    api.patch(f"{KVC}/guard", {"metadata": {"generation": 5}, "spec": {"racks": racks}})
    world.wait("the refusal to clear", lambda: refused() is None, 30)

    # drift: a StatefulSet scaled down by hand is scaled back
    api.patch(f"{STS}/guard-b", {"spec": {"replicas": 0}})
    world.wait("guard-b back to 1", lambda: (api.get(f"{STS}/guard-b") or {})["spec"]["replicas"] == 1, 30)
    world.wait("3 nodes Running", lambda: settled(world, "guard", 3, 5), 120)

    # drift: a StatefulSet scaled up by hand: the extra node is decommissioned (if it joined) and removed
    api.patch(f"{STS}/guard-c", {"spec": {"replicas": 2}})
    world.wait("guard-c back to 1", lambda: (api.get(f"{STS}/guard-c") or {})["spec"]["replicas"] == 1
               and "guard-c-1" not in world.controller.pod_names(), 120)
    final = world.wait("3 nodes Running", lambda: settled(world, "guard", 3, 5), 120)
    assert final["lastOperation"]["reason"] == "Drift" and final["lastOperation"]["node"] == "guard-c-1"
    drift = [e for e in api.items(EVENTS) if e.get("reason") == "Drift"]
    assert drift and drift[0]["type"] == "Warning" and "outside the KVCluster" in drift[0]["message"]
    assert {m["nodeId"] for m in final["members"]} == {"guard-a-0", "guard-b-0", "guard-c-0"}
