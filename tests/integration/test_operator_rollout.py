"""Health and rollouts, against the faithful fake of Kubernetes (`kubefake`: kmock, a real `kopf run`, background
StatefulSet controllers and kubelets, real `ringkv node` processes for pods).

- A new template rolls one pod at a time, and only when the ring lets it: the operator applies it with the
  StatefulSet's partition at its size, and lowers the partition by one only once the pods above it are ready on
  it and every node sees every other up and normal, on one agreed ring, with few enough hints waiting.
- A rack's first pod waits until the ring has been healthy for the settle time.
- A pod that never gets ready turns the rollout stuck past the deadline: Degraded, reason RolloutStuck.
- The Kubernetes API refusing a request shows in the ReconcileError condition, and clears.
- ringkv.io/paused: "true" stops every change to the cluster until it is removed.
- A new operator default image restarts no cluster; ringkv.io/upgrade-image: "true" takes it.
- Objects of the cluster's names that are someone else's are left alone, and reported.

Every wait has a deadline; every process is stopped in teardown; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

kmock = pytest.importorskip("kmock", reason="kmock is missing (pip install -e '.[dev]')")

from aiohttp import web  # noqa: E402

from . import kubefake  # noqa: E402
from .kubefake import CONFIGMAPS, EVENTS, KVC, NS, PDBS, PODS, SERVICES, STS, Emulator, World, http_json, kvcluster  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

FAST = {"RINGKV_OPERATOR_ROLLOUT_SETTLE_SECONDS": "0"}
CONFIG = {"durability": "batch", "aae_enabled": "false", "gossip_interval_s": "0.25"}
ONE_NODE = {"replicas": 1, "replicationFactor": 1, "readQuorum": 1, "writeQuorum": 1, "storage": {"size": "1Gi"}}
# A lone node restarted waits for the second seed to answer: clusters that roll have two nodes at least.
TWO_NODES = {**ONE_NODE, "replicas": 2, "replicationFactor": 2}


def image_of(world: World, sts: str) -> str:
    return str((world.api.get(f"{STS}/{sts}") or {})["spec"]["template"]["spec"]["containers"][0]["image"])


def partition_of(obj: dict[str, Any] | None) -> int:
    return int((((obj or {}).get("spec") or {}).get("updateStrategy") or {}).get("rollingUpdate", {})
               .get("partition") or 0)


def rollout_of(world: World, name: str) -> dict[str, Any]:
    return dict(((world.kvcluster(name) or {}).get("status") or {}).get("rollout") or {})


def events(world: World, reason: str) -> list[dict[str, Any]]:
    return [e for e in world.api.items(EVENTS) if e.get("reason") == reason]


def hints_held(world: World, pods: list[str]) -> int:
    return sum(sum(http_json(world.controller.pod(p).node.url + "/admin/v1/hints")["pending"].values())
               for p in pods)


@dataclass
class Watch:
    """Polls in the background: the distinct partitions of a StatefulSet in order, and every distinct
    (phase, message) of the KVCluster's status.rollout."""

    world: World
    name: str
    sts: str
    partitions: list[int] = field(default_factory=list)
    rollouts: list[tuple[str, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                sts = self.world.api.get(f"{STS}/{self.sts}")
                if sts is not None and (not self.partitions or self.partitions[-1] != partition_of(sts)):
                    self.partitions.append(partition_of(sts))
                record = rollout_of(self.world, self.name)
                seen = (str(record.get("phase", "")), str(record.get("message", "")))
                if record and (not self.rollouts or self.rollouts[-1] != seen):
                    self.rollouts.append(seen)
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


# -- 1. the ring gates the rollout -------------------------------------------------------------------------------


def test_an_image_rollout_waits_for_the_ring_pod_by_pod(tmp_path: Path) -> None:
    # Hints are delivered at 2 KB/s, so those for a node that was down take a while to drain.
    env = {**FAST, "RINGKV_OPERATOR_ROLLOUT_MAX_PENDING_HINTS": "5"}
    with kubefake.world(tmp_path, operator_env=env) as world:
        api, controller = world.api, world.controller
        api.create(KVC, kvcluster("demo", replicas=3, image="ringkv:1", storage={"size": "1Gi"},
                                  config={**CONFIG, "hint_delivery_mb_s": "0.002"}))
        world.token("demo")
        world.wait("3 nodes Running", lambda: world.running("demo", 3), 120)
        watch = Watch(world, "demo", "demo")

        # demo-0 goes down; writes leave hints for it on the others.
        controller.hold("demo-0")
        url = controller.pod("demo-1").node.url
        world.wait("demo-0 down in the ring", lambda: any(
            m["node_id"] == "demo-0" and not m["up"] for m in http_json(url + "/admin/v1/members")["members"]), 30)
        for i in range(60):
            http_json(f"{url}/api/v1/put?w=1", {"key": f"k{i:03d}", "value": "x" * 400})
        world.wait("a hint per write", lambda: hints_held(world, ["demo-1", "demo-2"]) >= 60, 20)

        # A new image: applied with the partition at 3, so no pod rolls; the rollout waits for demo-0.
        api.patch(f"{KVC}/demo", {"metadata": {"generation": 2}, "spec": {"image": "ringkv:2"}})
        world.wait("the new image in the StatefulSet", lambda: image_of(world, "demo") == "ringkv:2")
        assert partition_of(api.get(f"{STS}/demo")) == 3
        world.wait("the rollout to wait for demo-0", lambda: (r := rollout_of(world, "demo")).get("phase")
                   == "WaitingForRing" and "demo-0" in r["message"] and r["pod"] == "demo-2")
        progressing = world.wait("Progressing to say so", lambda: (c := world.condition("demo", "Progressing"))
                                 .get("reason") == "WaitingForRing" and c)
        assert progressing["status"] == "True" and "before rolling demo-2" in progressing["message"]
        time.sleep(3)
        assert controller.rolls == []

        # demo-0 is back; its 60 hints trickle in; the rollout waits for them, then rolls.
        controller.release("demo-0")
        world.wait("the rollout to wait for the hints", lambda: "hints wait for delivery" in rollout_of(
            world, "demo").get("message", ""), 60)
        world.wait("the first pod to roll", lambda: controller.rolls, 120)
        assert hints_held(world, ["demo-0", "demo-1", "demo-2"]) <= 5  # delivered before demo-2 went down
        world.wait("the rolled cluster to be Running", lambda: world.running("demo", 3, generation=2), 180)
        watch.stop()

        assert [pod for pod, _ in controller.rolls] == ["demo-2", "demo-1", "demo-0"]
        assert watch.partitions == [0, 3, 2, 1, 0]  # one pod at a time
        # Each pod went down only once the one before was back: ready on the new template.
        for done, nxt in (("demo-2", "demo-1"), ("demo-1", "demo-0")):
            ready = [e.t for e in controller.events(done, "ready") if e.t > controller.events(done, "deleting")[0].t]
            assert ready and ready[0] < controller.events(nxt, "deleting")[0].t, (done, nxt)
        assert any(phase == "WaitingForRing" and "hints" in message for phase, message in watch.rollouts)
        assert [e["message"] for e in events(world, "RollingPod")][:1] == [
            "rolling demo-2 to the new template (StatefulSet demo, partition 2)"]
        assert rollout_of(world, "demo") == {}  # done: no rollout recorded
        assert world.condition("demo", "Progressing")["reason"] == "Complete"


def test_a_racks_first_pod_waits_for_the_ring_to_settle(tmp_path: Path) -> None:
    settle = 5.0
    with kubefake.world(tmp_path, operator_env={"RINGKV_OPERATOR_ROLLOUT_SETTLE_SECONDS": str(settle)}) as world:
        api, controller = world.api, world.controller
        api.create(KVC, kvcluster("ring", replicas=3, racks=[{"name": "a"}, {"name": "b"}, {"name": "c"}],
                                  image="ringkv:1", storage={"size": "1Gi"}, config=CONFIG))
        world.token("ring")
        world.wait("three racks Running", lambda: world.running("ring", 3), 120)
        api.patch(f"{KVC}/ring", {"metadata": {"generation": 2}, "spec": {"image": "ringkv:2"}})
        world.wait("the rolled cluster to be Running", lambda: world.running("ring", 3, generation=2), 180)
        assert [pod for pod, _ in controller.rolls] == ["ring-a-0", "ring-b-0", "ring-c-0"]
        for done, nxt in (("ring-a-0", "ring-b-0"), ("ring-b-0", "ring-c-0")):
            rolled = controller.events(done, "deleting")[0].t
            ready = next(e.t for e in controller.events(done, "ready") if e.t > rolled)
            gap = controller.events(nxt, "deleting")[0].t - ready
            assert gap >= settle - 1.0, f"{nxt} rolled {gap:.1f} s after {done} was ready again"


# -- 2. a stuck rollout, an API error ----------------------------------------------------------------------------


def test_a_pod_that_never_gets_ready_makes_the_rollout_stuck(tmp_path: Path) -> None:
    env = {**FAST, "RINGKV_OPERATOR_ROLLOUT_DEADLINE_SECONDS": "8"}
    with kubefake.world(tmp_path, operator_env=env) as world:
        api, controller = world.api, world.controller
        api.create(KVC, kvcluster("demo", replicas=3, image="ringkv:1", storage={"size": "1Gi"}, config=CONFIG))
        world.token("demo")
        world.wait("3 nodes Running", lambda: world.running("demo", 3), 120)
        api.patch(f"{KVC}/demo", {"metadata": {"generation": 2}, "spec": {"image": "ringkv:2"}})
        world.wait("the first pod to roll", lambda: controller.rolls, 60)
        controller.hold("demo-2")  # the new image does not start
        degraded = world.wait("Degraded: RolloutStuck", lambda: (c := world.condition("demo", "Degraded"))
                              .get("reason") == "RolloutStuck" and c, 60)
        assert degraded["status"] == "True"
        assert degraded["message"].startswith("demo-2 has not become ready on the new template for ")
        assert "StatefulSet demo" in degraded["message"]
        record = rollout_of(world, "demo")
        assert (record["pod"], record["phase"], record["partition"]) == ("demo-2", "Rolling", 2)
        assert [e["type"] for e in events(world, "RolloutStuck")] == ["Warning"]
        assert [pod for pod, _ in controller.rolls] == ["demo-2"]  # nothing else rolled meanwhile

        controller.release("demo-2")
        world.wait("the rolled cluster to be Running", lambda: world.running("demo", 3, generation=2), 180)
        assert world.condition("demo", "Degraded")["reason"] == "AsExpected"


@contextlib.contextmanager
def refused(api: Emulator, method: str, plural: str, code: int, message: str) -> Iterator[list[str]]:
    """The API server answers `code` to every `method` of `plural`, before storing anything (as RBAC, quota
    and validation do); the paths refused are listed."""
    handler = api.handler
    original = handler._handle
    seen: list[str] = []

    async def refuse(request: Any) -> Any:
        if request.method == method and request.resource is not None and request.resource.plural == plural:
            seen.append(str(request.url))
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                                      "reason": "Forbidden", "code": code}, status=code)
        return await original(request)

    handler._handle = refuse
    try:
        yield seen
    finally:
        del handler._handle


def test_an_api_error_shows_in_a_condition_until_a_pass_succeeds(tmp_path: Path) -> None:
    message = ('poddisruptionbudgets.policy is forbidden: User "system:serviceaccount:ringkv-system:ringkv-operator" '
               'cannot create resource "poddisruptionbudgets" in API group "policy" in the namespace "db"')
    with kubefake.world(tmp_path, operator_env=FAST) as world:
        api = world.api
        with refused(api, "POST", "poddisruptionbudgets", 403, message) as seen:
            api.create(KVC, kvcluster("demo", **ONE_NODE))
            error = world.wait("ReconcileError", lambda: (c := world.condition("demo", "ReconcileError"))
                               .get("status") == "True" and c, 60)
            assert seen
            assert error["reason"] == "Forbidden" and message in error["message"]
            assert error["message"].startswith(f"POST /apis/policy/v1/namespaces/{NS}/poddisruptionbudgets: HTTP 403")
            assert api.get(f"{STS}/demo") is None  # the pass stopped there
        cleared = world.wait("the error to clear", lambda: (c := world.condition("demo", "ReconcileError"))
                             .get("status") == "False" and c, 60)
        assert cleared["reason"] == "Reconciled"
        assert api.get(f"{PDBS}/demo") is not None
        world.wait("the StatefulSet", lambda: api.get(f"{STS}/demo"))


# -- 3. pause --------------------------------------------------------------------------------------------------


def test_a_paused_cluster_is_left_alone_until_resumed(tmp_path: Path) -> None:
    with kubefake.world(tmp_path, operator_env=FAST) as world:
        api, controller = world.api, world.controller
        api.create(KVC, kvcluster("demo", image="ringkv:1", config=CONFIG, **TWO_NODES))
        world.token("demo")
        world.wait("the nodes Running", lambda: world.running("demo", 2), 120)
        api.patch(f"{KVC}/demo", {"metadata": {"annotations": {"ringkv.io/paused": "true"}}})
        paused = world.wait("Paused", lambda: (c := world.condition("demo", "Paused")).get("status") == "True"
                            and c)
        assert paused["reason"] == "PausedByAnnotation"
        assert [e["type"] for e in events(world, "Paused")] == ["Normal"]

        # Paused: a spec change patches nothing, a deleted object is not made again, the phase stays.
        api.patch(f"{KVC}/demo", {"metadata": {"generation": 2}, "spec": {"image": "ringkv:2"}})
        api.delete(f"{SERVICES}/demo")
        passes = controller.passes
        world.wait("a few seconds of passes", lambda: controller.passes > passes + 25)
        assert image_of(world, "demo") == "ringkv:1"
        assert api.get(f"{SERVICES}/demo") is None
        found = (world.kvcluster("demo") or {})["status"]
        assert found["phase"] == "Running" and found["observedGeneration"] == 1
        assert controller.rolls == []

        api.patch(f"{KVC}/demo", {"metadata": {"annotations": {"ringkv.io/paused": None}}})
        world.wait("Paused False", lambda: world.condition("demo", "Paused").get("status") == "False")
        world.wait("the client Service again", lambda: api.get(f"{SERVICES}/demo"))
        world.wait("the new image rolled", lambda: world.running("demo", 2, generation=2)
                   and len(controller.rolls) == 2, 120)
        assert image_of(world, "demo") == "ringkv:2"
        assert [e["type"] for e in events(world, "Resumed")] == ["Normal"]


# -- 4. the node image is pinned ---------------------------------------------------------------------------------


def test_a_new_operator_default_image_restarts_no_cluster(tmp_path: Path) -> None:
    with kubefake.world(tmp_path, operator_env=FAST) as world:
        api, controller, operator = world.api, world.controller, world.operator
        assert operator is not None
        api.create(KVC, kvcluster("demo", config=CONFIG, **TWO_NODES))  # no spec.image: the operator's default
        world.token("demo")
        status = world.wait("the nodes Running", lambda: world.running("demo", 2), 120)
        assert status["nodeImage"] == "ringkv:0.1.0" and image_of(world, "demo") == "ringkv:0.1.0"
        pod_uids = sorted(p["metadata"]["uid"] for p in api.items(PODS))

        # The operator is upgraded: its default image is another.
        assert operator.stop() == 0
        operator.env["RINGKV_OPERATOR_NODE_IMAGE"] = "ringkv:0.2.0"
        operator.start()
        world.wait("the new operator's passes", lambda: (live := operator.liveness()) is not None
                   and live["reconciler"]["last_reconcile"] > live["reconciler"]["started"] + 3, 60)
        assert image_of(world, "demo") == "ringkv:0.1.0"
        assert sorted(p["metadata"]["uid"] for p in api.items(PODS)) == pod_uids and controller.rolls == []
        assert (world.kvcluster("demo") or {})["status"]["nodeImage"] == "ringkv:0.1.0"

        # Asked for: the new default rolls, and is kept once the annotation is gone.
        api.patch(f"{KVC}/demo", {"metadata": {"annotations": {"ringkv.io/upgrade-image": "true"}}})
        world.wait("the new default in the StatefulSet", lambda: image_of(world, "demo") == "ringkv:0.2.0")
        world.wait("the pods rolled", lambda: [p for p, _ in controller.rolls] == ["demo-1", "demo-0"]
                   and world.running("demo", 2), 120)
        world.wait("status.nodeImage", lambda: (world.kvcluster("demo") or {})["status"]["nodeImage"]
                   == "ringkv:0.2.0")
        api.patch(f"{KVC}/demo", {"metadata": {"annotations": {"ringkv.io/upgrade-image": None}}})
        passes = controller.passes
        world.wait("a few seconds of passes", lambda: controller.passes > passes + 15)
        assert image_of(world, "demo") == "ringkv:0.2.0" and len(controller.rolls) == 2


# -- 5. ownership --------------------------------------------------------------------------------------------------


def foreign_config_map() -> dict[str, Any]:
    """A ConfigMap named like the cluster's, owned by an earlier KVCluster of the same name (another uid)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a-config", "namespace": NS, "labels": {"app": "theirs"},
                         "ownerReferences": [{"apiVersion": "ringkv.io/v1alpha1", "kind": "KVCluster", "name": "a",
                                              "uid": "uid-of-another-a", "controller": True}]},
            "data": {"THEIRS": "1"}}


def foreign_statefulset() -> dict[str, Any]:
    """Someone else's StatefulSet named like the cluster's (no pods: replicas 0)."""
    labels = {"app": "theirs"}
    return {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "b", "namespace": NS, "labels": labels},
            "spec": {"replicas": 0, "serviceName": "theirs", "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "app", "image": "theirs:1"}]}}}}


def test_objects_of_the_clusters_names_that_are_not_its_own_are_left_alone(tmp_path: Path) -> None:
    with kubefake.world(tmp_path, operator_env=FAST) as world:
        api = world.api
        theirs = {"cm": api.create(CONFIGMAPS, foreign_config_map()), "sts": api.create(STS, foreign_statefulset())}
        api.create(KVC, kvcluster("a", **ONE_NODE))
        api.create(KVC, kvcluster("b", **ONE_NODE))

        for name, what in (("a", "ConfigMap a-config"), ("b", "StatefulSet b")):
            error = world.wait(f"{name}: ForeignObject", lambda name=name: (  # type: ignore[misc]
                c := world.condition(name, "ReconcileError")).get("reason") == "ForeignObject" and c, 60)
            assert error["status"] == "True" and error["message"].startswith(f"{what} already exists and is not "
                                                                             "owned by this KVCluster")
        assert sorted(e["involvedObject"]["name"] for e in events(world, "ForeignObject")) == ["a", "b"]
        # b's other objects are made; a builds nothing on someone else's ConfigMap.
        world.wait("b's Services", lambda: api.get(f"{SERVICES}/b") and api.get(f"{SERVICES}/b-peers"))
        assert api.get(f"{STS}/a") is None
        passes = world.controller.passes
        world.wait("a few seconds of passes", lambda: world.controller.passes > passes + 15)
        cm, sts = api.get(f"{CONFIGMAPS}/a-config") or {}, api.get(f"{STS}/b") or {}
        assert cm["data"] == {"THEIRS": "1"} and cm["metadata"]["labels"] == {"app": "theirs"}
        assert cm["metadata"]["ownerReferences"] == theirs["cm"]["metadata"]["ownerReferences"]
        assert sts["spec"] == theirs["sts"]["spec"] and sts["metadata"].get("ownerReferences") is None
        assert sts["metadata"].get("annotations") is None and not api.items(PODS)

        # Deleting b takes what b owns, not the StatefulSet of its name.
        api.delete(f"{KVC}/b")
        world.wait("b gone", lambda: world.kvcluster("b") is None and api.get(f"{SERVICES}/b") is None)
        assert (api.get(f"{STS}/b") or {}).get("spec") == theirs["sts"]["spec"]
