"""The fake Kubernetes controllers of kubefake.py, on their own (no operator): StatefulSets rendered by
ringkv_operator.resources, exactly what the operator writes, created straight in the emulator; their pods are
real `ringkv node` processes.

Each pod is made a cluster of its own (RINGKV_SEEDS: itself, an env entry after the ConfigMap's, as a pod
template may override it) so it is ready within a second or so: these tests are about the controllers, not
the ring. Every wait is on a condition with a deadline; ordering is asserted on the controllers' event log.
"""

from __future__ import annotations

import datetime
import functools
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kmock", reason="kmock is missing (pip install -e '.[dev]')")

from ringkv_operator import certs, credentials, plan, resources
from ringkv_operator import spec as specmod
from ringkv_operator.settings import Settings

from . import kubefake
from .kubefake import CONFIGMAPS, PODS, PVCS, STS, World, http_json
from .kubefake_secrets import SECRETS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with kubefake.world(tmp_path, operator=False) as w:
        yield w


TOKEN, DIGEST = certs.new_token()

def create_statefulset(world: World, name: str, replicas: int, **spec: Any) -> dict[str, Any]:
    """The ConfigMap and StatefulSet the operator would write for a KVCluster NAME of that size (RF 1), each
    pod seeding itself; `spec` fields override the StatefulSet's (persistentVolumeClaimRetentionPolicy...)."""
    cluster = specmod.parse(kubefake.kvcluster(name, replicas=replicas, replicationFactor=1, readQuorum=1,
                                               writeQuorum=1, config={"shutdown_timeout_s": 1}))
    shape = plan.desired_shape(cluster)
    world.api.create(CONFIGMAPS, resources.config_map(cluster, shape))
    shared = {f"{name}-tokens": {"tokens": certs.tokens_file([("operator", "admin", DIGEST)]).encode()},
              f"{name}-admin-token": {"token": TOKEN.encode()}}  # one token for every cluster of a test
    for secret in credentials.desired(cluster, shared, datetime.datetime.now(datetime.UTC)).objects:  # mounted
        world.api.create(SECRETS, secret)
    os.environ["RINGKV_TOKEN"] = TOKEN  # what http_json sends (the world's exit removes it)
    [sts] = resources.statefulsets(cluster, shape, Settings())
    env = sts["spec"]["template"]["spec"]["containers"][0]["env"]
    env.append({"name": "RINGKV_SEEDS", "value": f"$(RINGKV_NODE_ID).{resources.peer_service_name(name)}."
                                                 f"{kubefake.NS}.svc:{resources.PEER_PORT}"})
    sts["spec"].update(spec)
    return world.api.create(STS, sts)


def scale(world: World, name: str, replicas: int) -> None:
    world.api.patch(f"{STS}/{name}", {"spec": {"replicas": replicas}})


def pod_names(world: World, prefix: str) -> list[str]:
    return sorted(p["metadata"]["name"] for p in world.api.items(PODS) if p["metadata"]["name"].startswith(prefix))


def ready(world: World, pod: str) -> dict[str, Any] | None:
    """The Pod object once it is Running and Ready (and not being deleted), else None."""
    obj = world.api.get(f"{PODS}/{pod}")
    return obj if obj is not None and kubefake._running_and_ready(obj) else None


def all_ready(world: World, *pods: str) -> bool:
    return all(ready(world, p) for p in pods)


def sts_status(world: World, name: str) -> dict[str, Any]:
    return dict((world.api.get(f"{STS}/{name}") or {}).get("status") or {})


def status_with(world: World, name: str, **fields: Any) -> dict[str, Any] | None:
    """The StatefulSet's status once it has those field values, else None."""
    status = sts_status(world, name)
    return status if all(status.get(k) == v for k, v in fields.items()) else None


def claim_names(world: World, prefix: str) -> list[str]:
    return sorted(c["metadata"]["name"] for c in world.api.items(PVCS) if c["metadata"]["name"].startswith(prefix))


def when(world: World, action: str, pod: str) -> float:
    event = world.controller.first(action, pod)
    assert event is not None, f"no {action} event for {pod}\n{world.controller.diagnose()}"
    return event.t


def put(world: World, pod: str, key: str) -> None:
    http_json(world.controller.pod(pod).node.url + "/api/v1/put", {"key": key, "value": {"pod": pod}})


def get(world: World, pod: str, key: str) -> Any:
    try:
        return http_json(world.controller.pod(pod).node.url + f"/api/v1/get?key={key}")["value"]
    except OSError as e:  # 404: not found
        if getattr(e, "code", None) == 404:
            return None
        raise


def later_passes(world: World, passes: int = 3) -> None:
    """Wait until the controllers have looked at the API `passes` more times (to assert something did not
    happen)."""
    start = world.controller.passes
    world.wait(f"{passes} more controller passes", lambda: world.controller.passes >= start + passes, 10)


# -- ordering -----------------------------------------------------------------------------------------------------


def test_pods_of_two_statefulsets_start_concurrently(world: World) -> None:
    create_statefulset(world, "a", 2)
    create_statefulset(world, "b", 2)
    world.wait("both StatefulSets ready", lambda: all_ready(world, "a-0", "a-1", "b-0", "b-1"), 60)
    first_pod_1_ready = min(when(world, "ready", "a-1"), when(world, "ready", "b-1"))
    assert when(world, "started", "a-0") < first_pod_1_ready
    assert when(world, "started", "b-0") < first_pod_1_ready
    for name in ("a", "b"):  # and the status says so, a pass later
        status = world.wait(f"{name}'s status", functools.partial(status_with, world, name, readyReplicas=2))
        assert (status["replicas"], status["availableReplicas"], status["updatedReplicas"]) == (2, 2, 2)
        assert status["currentRevision"] == status["updateRevision"] == kubefake.revision(
            world.api.get(f"{STS}/{name}") or {})


def test_ordered_ready_creates_pod_1_only_once_pod_0_is_ready(world: World) -> None:
    world.controller.hold("a-0")  # a-0 crash-loops from its first start
    create_statefulset(world, "a", 2)
    create_statefulset(world, "b", 2)
    world.wait("b ready (a's stuck pod holds only a)", lambda: all_ready(world, "b-0", "b-1"), 60)
    later_passes(world)
    assert pod_names(world, "a-") == ["a-0"] and not world.controller.events("a-1")
    assert ready(world, "a-0") is None
    world.controller.release("a-0")
    world.wait("a ready", lambda: all_ready(world, "a-0", "a-1"), 60)
    assert when(world, "ready", "a-0") < when(world, "created", "a-1")


# -- scale-down and volumes ------------------------------------------------------------------------------------


def test_scale_down_removes_the_highest_ordinal_first_and_retains_its_volume(world: World) -> None:
    create_statefulset(world, "c", 3)  # whenScaled Retain, as the operator writes it
    world.wait("c ready", lambda: all_ready(world, "c-0", "c-1", "c-2"), 60)
    put(world, "c-2", "kept")
    volume = world.controller.volume_dir("data-c-2")
    assert volume is not None and (volume / "data").is_dir()

    scale(world, "c", 1)
    world.wait("c scaled to 1", lambda: pod_names(world, "c-") == ["c-0"], 60)
    assert when(world, "deleted", "c-2") < when(world, "deleting", "c-1")  # one at a time, highest first
    assert [e.detail for e in world.controller.events(action="stopped")] == ["0", "0"]  # SIGTERM: clean exits
    assert claim_names(world, "data-c-") == ["data-c-0", "data-c-1", "data-c-2"]
    status = world.wait("the status of 1", functools.partial(status_with, world, "c", replicas=1))
    assert status["readyReplicas"] == 1

    scale(world, "c", 3)  # the retained claims, so the volumes, are reused
    world.wait("c ready again", lambda: all_ready(world, "c-0", "c-1", "c-2"), 60)
    assert world.controller.volume_dir("data-c-2") == volume
    assert world.controller.pod("c-2").node.data_dir == volume / "data"
    assert get(world, "c-2", "kept") == {"pod": "c-2"}


def test_when_scaled_delete_removes_the_claim_and_when_deleted_delete_the_rest(world: World) -> None:
    create_statefulset(world, "d", 2, persistentVolumeClaimRetentionPolicy={"whenScaled": "Delete",
                                                                            "whenDeleted": "Delete"})
    world.wait("d ready", lambda: all_ready(world, "d-0", "d-1"), 60)
    put(world, "d-1", "lost")
    volume = world.controller.volume_dir("data-d-1")
    assert volume is not None

    scale(world, "d", 1)
    world.wait("d-1 and its claim gone", lambda: pod_names(world, "d-") == ["d-0"]
               and claim_names(world, "data-d-") == ["data-d-0"] and not volume.exists(), 60)
    assert when(world, "deleted", "d-1") < when(world, "claim-deleted", "data-d-1")

    scale(world, "d", 2)
    world.wait("d ready again", lambda: all_ready(world, "d-0", "d-1"), 60)
    assert world.controller.volume_dir("data-d-1") not in (None, volume)
    assert get(world, "d-1", "lost") is None

    survivor = world.controller.volume_dir("data-d-0")
    assert survivor is not None
    world.api.delete(f"{STS}/d")  # whenDeleted Delete: pods, then claims and volumes go with the StatefulSet
    world.wait("d's pods, claims and volumes gone", lambda: not pod_names(world, "d-")
               and not claim_names(world, "data-d-") and not survivor.exists(), 60)
    assert world.controller.pod_names() == []


def test_a_deleted_claim_goes_once_no_pod_uses_it(world: World) -> None:
    create_statefulset(world, "e", 2)
    world.wait("e ready", lambda: all_ready(world, "e-0", "e-1"), 60)
    scale(world, "e", 1)
    world.wait("e-1 gone", lambda: pod_names(world, "e-") == ["e-0"], 60)
    unused = world.controller.volume_dir("data-e-1")
    assert unused is not None and unused.exists()
    world.api.delete(f"{PVCS}/data-e-1")  # a claim of a removed pod: gone at once, with its volume
    world.wait("data-e-1 and its volume gone", lambda: claim_names(world, "data-e-") == ["data-e-0"]
               and not unused.exists(), 30)

    used = world.controller.volume_dir("data-e-0")
    assert used is not None
    world.api.delete(f"{PVCS}/data-e-0")  # in use by e-0: Terminating while e-0 runs
    later_passes(world)
    claim = world.api.get(f"{PVCS}/data-e-0") or {}
    assert claim["metadata"].get("deletionTimestamp") and used.exists() and ready(world, "e-0")
    first_e0 = world.controller.pod("e-0").uid

    world.api.delete(f"{PODS}/e-0")  # kubectl delete pod: e-0 stops, the claim goes, then e-0 and a new claim
    world.wait("e-0 again, on a new volume", lambda: (obj := ready(world, "e-0")) is not None
               and obj["metadata"]["uid"] != first_e0 and world.controller.volume_dir("data-e-0") not in (None, used),
               60)
    assert not used.exists()
    assert when(world, "deleted", "e-0") < when(world, "claim-deleted", "data-e-0")
    blocked = world.controller.events("e-0", "blocked")  # the pod was not created while its claim terminated
    created = world.controller.events("e-0", "created")
    assert len(created) == 2 and (not blocked or blocked[0].t < created[1].t)
    assert created[1].t > when(world, "claim-deleted", "data-e-0")


# -- the kubelet -----------------------------------------------------------------------------------------------


def restart_count(world: World, pod: str) -> int:
    obj = world.api.get(f"{PODS}/{pod}") or {}
    statuses = (obj.get("status") or {}).get("containerStatuses") or [{}]
    return int(statuses[0].get("restartCount", -1))


def restarted(world: World, pod: str, times: int) -> bool:
    return ready(world, pod) is not None and restart_count(world, pod) == times


def test_a_killed_node_is_restarted_with_back_off(world: World) -> None:
    create_statefulset(world, "f", 1)
    world.wait("f ready", lambda: ready(world, "f-0"), 60)
    assert restart_count(world, "f-0") == 0
    for n in (1, 2):
        pid = world.controller.pod("f-0").node.pid
        world.controller.kill("f-0")  # kill -9
        world.wait(f"restart {n}", functools.partial(restarted, world, "f-0", n), 30)
        assert world.controller.pod("f-0").node.pid != pid
    exited = [e.t for e in world.controller.events("f-0", "exited")]
    started = [e.t for e in world.controller.events("f-0", "started")]
    assert len(exited) == 2 and len(started) == 3
    assert started[1] - exited[0] >= kubefake.BACKOFF_S * 0.9  # back-off 0.5 s, then 1 s
    assert started[2] - exited[1] >= 2 * kubefake.BACKOFF_S * 0.9
    obj = world.api.get(f"{PODS}/f-0") or {}
    assert obj["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == -signal.SIGKILL


def test_a_deleted_pod_is_stopped_and_recreated_on_its_volume(world: World) -> None:
    create_statefulset(world, "g", 1)
    first = world.wait("g ready", lambda: ready(world, "g-0"), 60)
    put(world, "g-0", "survives")
    volume = world.controller.volume_dir("data-g-0")

    world.api.delete(f"{PODS}/g-0")  # kubectl delete pod g-0
    world.wait("g-0 recreated", lambda: (obj := ready(world, "g-0")) is not None
               and obj["metadata"]["uid"] != first["metadata"]["uid"], 60)
    assert [e.action for e in world.controller.events("g-0")
            if e.action in ("stopping", "stopped", "deleted", "created")] == [
        "created", "stopping", "stopped", "deleted", "created"]
    assert world.controller.events("g-0", "stopped")[0].detail == "0"
    assert world.controller.volume_dir("data-g-0") == volume
    assert get(world, "g-0", "survives") == {"pod": "g-0"}


def test_a_template_change_rolls_the_pods_from_the_highest_ordinal(world: World) -> None:
    create_statefulset(world, "h", 2)
    world.wait("h ready", lambda: all_ready(world, "h-0", "h-1"), 60)
    world.api.patch(f"{STS}/h", {"spec": {"template": {"metadata": {"annotations": {"rolled": "yes"}}}}})
    update = kubefake.revision(world.api.get(f"{STS}/h") or {})
    world.wait("h rolled", lambda: all((obj := ready(world, p)) and obj["metadata"]["labels"]
                                       ["controller-revision-hash"] == update for p in ("h-0", "h-1")), 60)
    assert [pod for pod, _ in world.controller.rolls] == ["h-1", "h-0"]
    assert when(world, "deleting", "h-1") < [e.t for e in world.controller.events("h-1", "ready")][1] \
        < when(world, "deleting", "h-0")  # the replaced pod is ready before the next goes
    status = world.wait("the rolled status", functools.partial(status_with, world, "h", currentRevision=update))
    assert status["updatedReplicas"] == status["currentReplicas"] == 2
