"""The controllers kmock lacks, over kubefake's `Emulator` (`kubefake_api`): the StatefulSet controller, the
kubelet, pvc-protection and the garbage collector. `Controllers` runs them as threads of this process; each polls
the API every POLL_S, nothing is driven by the test:

* one StatefulSet loop per StatefulSet (so the pods of several StatefulSets start concurrently), following
  the real controller's pass: pods 0..replicas-1 in order (create the claim, then the pod; OrderedReady
  halts at the first pod that is missing, terminating or not Running+Ready, Parallel goes on), then
  scale-down (highest ordinal first, one at a time, OrderedReady only once every lower pod is ready), then
  the rolling update (RollingUpdate, from the highest ordinal down to the partition: delete a pod of an
  older revision, wait until its replacement is ready, next). Deleting a pod is an API DELETE: the pod's
  kubelet stops the node and only then is the object gone and the pod created anew. It writes the
  StatefulSet's status.
* one kubelet per pod: it starts the node with the environment the kubelet would give the container
  (the ConfigMap of envFrom, then env with fieldRefs and $(VAR) resolved; only addresses are moved to
  loopback: seeds name pods by DNS, each pod keeps one peer port), restarts it when it exits (restartPolicy
  Always, back-off BACKOFF_S doubling up to BACKOFF_MAX_S, counted in restartCount) unless the test holds
  the pod, probes /ready, and writes the Pod's status (podIP 127.0.0.1, the node's real HTTP port as the
  container port "http"). Pods carry the finalizer KUBELET_FINALIZER, which stands for graceful deletion:
  a deleted Pod (by the controller or kubectl) stays, with its deletionTimestamp, until its node has
  exited after SIGTERM.
* pvc-protection and the garbage collector: a claim carries "kubernetes.io/pvc-protection", so a deleted
  claim stays Terminating while a pod refers to it; once none does, it goes and its volume directory is
  removed (reclaim policy Delete). A pod cannot be created while its claim is Terminating. Claims and pods
  whose owners (ownerReferences, by uid) are all gone are deleted: the StatefulSet's pods when it is
  deleted, and its claims when persistentVolumeClaimRetentionPolicy says Delete (whenDeleted: the claims
  are owned by the StatefulSet; whenScaled: a condemned pod's claim is owned by that pod).

Not emulated: readiness needs one successful probe (no periodSeconds/failureThreshold), minReadySeconds is
ignored unless `Controllers(honour_min_ready=True)`, a StatefulSet has no ControllerRevisions (a revision is a
hash of its template), maxUnavailable, OnDelete's semantics beyond "no rolling", scheduling, resource limits.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .kubefake_api import CONFIGMAPS, NS, PODS, PVCS, STS, Emulator, _now, free_port
from .kubefake_secrets import MissingSecret, SecretVolumes
from .nodes import NodeProcess

NODE_START_S = 45.0  # the first node waits up to 10 s for the second seed before it allocates tokens alone
POLL_S = 0.2  # how often every loop looks at the API
SECRET_SYNC_S = 1.0  # how often a kubelet refreshes its pods' Secret volumes (a real one: about a minute)
BACKOFF_S = 0.5  # the kubelet's restart back-off: doubles per crash up to BACKOFF_MAX_S,
BACKOFF_MAX_S = 4.0  # back to BACKOFF_S once a container has run BACKOFF_RESET_S
BACKOFF_RESET_S = 10.0
CLOSE_S = 30.0  # Controllers.close: the deadline for every thread and node to be gone
DRAIN_DELAY_S = 0.5  # the nodes' drain after SIGTERM, at most (the operator asks for 5 s)
KUBELET_FINALIZER = "kubefake.ringkv.io/kubelet"  # graceful pod deletion: gone once the kubelet has stopped it
PVC_PROTECTION = "kubernetes.io/pvc-protection"


class Event(NamedTuple):
    """One thing a controller did: `t` is time.monotonic(), `action` one of created, started, ready,
    not-ready, exited, start-failed, held, released, killed, deleting (the pod's DELETE was sent: by scale-down,
    a roll, the garbage collector or the test), stopping, stopped (the node exited; `detail` its exit code),
    deleted (the Pod object is gone), blocked (a pod waits for its Terminating claim), claim-created,
    claim-deleting, claim-deleted (and its volume directory removed)."""

    t: float
    action: str
    pod: str  # the pod, or the claim for claim-* events
    detail: str = ""


@dataclass(eq=False)
class Pod:
    """One pod as its kubelet runs it (read it under `Controllers.lock`; `node` is the running NodeProcess)."""

    name: str
    statefulset: str
    uid: str
    revision: str
    template: dict[str, Any]  # the pod template it was made from
    claim: str
    volume: Path  # the claim's volume directory, mounted as "data"
    node: NodeProcess
    secrets: SecretVolumes  # its secret volumes (certificates, tokens), kept current
    restarts: int = 0
    ready: bool = False
    started: bool = False  # has run once (phase Running)
    last_exit: int | None = None
    terminating: bool = False
    written: dict[str, Any] = field(default_factory=dict)  # the status last written to its Pod object
    ready_since: str = ""  # the Ready condition's lastTransitionTime


def revision(sts: dict[str, Any]) -> str:
    """The StatefulSet's update revision: a hash of its pod template (what a ControllerRevision names)."""
    template = json.dumps(sts["spec"]["template"], sort_keys=True).encode()
    return f"{sts['metadata']['name']}-{hashlib.sha256(template).hexdigest()[:10]}"


def _meta(obj: dict[str, Any] | None) -> dict[str, Any]:
    return dict((obj or {}).get("metadata") or {})


def _terminating(obj: dict[str, Any]) -> bool:
    return bool(_meta(obj).get("deletionTimestamp"))


def _running_and_ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return status.get("phase") == "Running" and not _terminating(obj) and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def _ordinal(sts_name: str, pod_name: str) -> int | None:
    match = re.fullmatch(re.escape(sts_name) + r"-(\d+)", pod_name)
    return int(match[1]) if match else None


class Controllers:
    """The StatefulSet controller, the kubelet, pvc-protection and the garbage collector over `api` (see the
    module docstring). Started by the constructor; `close()` stops every thread and node.

    Reads for tests, all under `lock`: `pod(name)`, `pod_names()`, `events()`, `rolls`, `volume_dir(claim)`,
    `volumes()`. Actions: `hold(pod)` (kill the node and keep it down, also before the pod exists),
    `release(pod)`, `kill(pod)` (SIGKILL once: the kubelet restarts it)."""

    def __init__(self, api: Emulator, root: Path, honour_min_ready: bool = False) -> None:
        self.api = api
        self.root = root
        self.honour_min_ready = honour_min_ready
        self.lock = threading.RLock()
        self.pods: dict[str, Pod] = {}  # the pods with a kubelet, by name
        self.rolls: list[tuple[str, dict[str, str]]] = []  # (pod replaced by a rolling update, every set's image)
        self._events: list[Event] = []
        self._held: set[str] = set()
        self._peer_ports: dict[str, int] = {}  # by pod name, for as long as the test runs
        self._volumes: dict[str, tuple[Path, float, str]] = {}  # claim -> (its volume directory, when bound, uid)
        self._blocked: set[str] = set()  # pods waiting for a Terminating claim (logged once)
        self._stop = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._errors: list[str] = []
        self.passes = 0  # supervisor passes so far (wait for a few more to see that something did not happen)
        self._start_thread("supervisor", self._supervise)

    # -- for tests -----------------------------------------------------------------------------------------

    def pod(self, name: str) -> Pod:
        with self.lock:
            if name not in self.pods:
                raise KeyError(f"no pod {name} (pods: {sorted(self.pods)})")
            return self.pods[name]

    def pod_names(self) -> list[str]:
        with self.lock:
            return sorted(self.pods)

    def events(self, pod: str | None = None, action: str | None = None) -> list[Event]:
        with self.lock:
            return [e for e in self._events
                    if (pod is None or e.pod == pod) and (action is None or e.action == action)]

    def first(self, action: str, pod: str) -> Event | None:
        found = self.events(pod, action)
        return found[0] if found else None

    def volume_dir(self, claim: str) -> Path | None:
        """The volume directory bound to the claim (the node's data directory is its `data` subdirectory)."""
        with self.lock:
            bound = self._volumes.get(claim)
            return bound[0] if bound else None

    def volumes(self) -> dict[str, Path]:
        with self.lock:
            return {claim: path for claim, (path, _, _) in self._volumes.items()}

    def hold(self, pod: str) -> None:
        """Kill the pod's node and keep it down (a crash-looping container) until `release`."""
        with self.lock:
            self._held.add(pod)
            self._log("held", pod)
            running = self.pods.get(pod)
        if running is not None:
            running.node.send_signal(signal.SIGKILL)  # reaped by its kubelet

    def release(self, pod: str) -> None:
        with self.lock:
            self._held.discard(pod)
            self._log("released", pod)

    def kill(self, pod: str) -> None:
        """SIGKILL the pod's node once; its kubelet restarts it."""
        node = self.pod(pod).node
        self._log("killed", pod)
        node.send_signal(signal.SIGKILL)

    def diagnose(self, events: int = 40) -> str:
        with self.lock:
            lines = [f"{e.t:.2f} {e.action} {e.pod} {e.detail}".rstrip() for e in self._events[-events:]]
            pods = {n: f"ready={p.ready} restarts={p.restarts} running={p.node.running}"
                    for n, p in sorted(self.pods.items())}
            errors = self._errors[-5:]
        return ("--- controllers: events (tail) ---\n" + "\n".join(lines) + f"\npods: {pods}"
                + ("\nerrors:\n" + "\n".join(errors) if errors else ""))

    def close(self) -> None:
        """Stop every loop and every node (SIGKILL), within CLOSE_S."""
        self._stop.set()
        deadline = time.monotonic() + CLOSE_S
        for _ in range(2):  # the second pass catches a node a kubelet was starting during the first
            with self.lock:
                threads, pods = list(self._threads.values()), list(self.pods.values())
            for pod in pods:
                pod.node.kill()
            for thread in threads:
                thread.join(max(0.1, deadline - time.monotonic()))
        with self.lock:
            alive = [t.name for t in self._threads.values() if t.is_alive()]
            pods = list(self.pods.values())
        for pod in pods:
            pod.node.kill()
        assert not alive, f"threads still running after {CLOSE_S:.0f} s: {alive}"

    # -- plumbing ------------------------------------------------------------------------------------------

    def _log(self, action: str, pod: str, detail: str = "") -> None:
        with self.lock:
            self._events.append(Event(time.monotonic(), action, pod, detail))

    def _start_thread(self, name: str, target: Callable[[], None]) -> None:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    target()
                    return
                except Exception as e:  # an API hiccup: note it, start the pass again
                    with self.lock:
                        self._errors.append(f"{name}: {e!r}")
                    self._stop.wait(POLL_S)

        thread = threading.Thread(target=run, name=f"kubefake-{name}", daemon=True)
        with self.lock:
            self._threads[name] = thread
        thread.start()

    def _alive(self, name: str) -> bool:
        with self.lock:
            thread = self._threads.get(name)
        return thread is not None and thread.is_alive()

    def _peer_port(self, pod: str) -> int:
        with self.lock:
            if pod not in self._peer_ports:
                self._peer_ports[pod] = free_port()
            return self._peer_ports[pod]

    # -- supervisor: a loop per StatefulSet; pvc-protection; the garbage collector -----------------------------

    def _supervise(self) -> None:
        while not self._stop.wait(POLL_S):
            since = time.monotonic()
            sets = self.api.items(STS)
            for sts in sets:
                name, uid = sts["metadata"]["name"], str(_meta(sts).get("uid", ""))
                if not self._alive(f"sts-{name}-{uid}"):
                    self._start_thread(f"sts-{name}-{uid}", functools.partial(self._statefulset_loop, name, uid))
            pods, claims = self.api.items(PODS), self.api.items(PVCS)
            self._collect_garbage(sets, pods, claims)
            self._protect_claims(pods, claims, since)
            with self.lock:
                self.passes += 1

    def _collect_garbage(self, sets: list[dict[str, Any]], pods: list[dict[str, Any]],
                         claims: list[dict[str, Any]]) -> None:
        """Delete what all of whose owners are gone (background cascading deletion)."""
        live = {("StatefulSet", s["metadata"]["name"], _meta(s).get("uid")) for s in sets}
        live |= {("Pod", p["metadata"]["name"], _meta(p).get("uid")) for p in pods}
        for path, objects in ((PODS, pods), (PVCS, claims)):
            for obj in objects:
                owners = _meta(obj).get("ownerReferences") or []
                if owners and not _terminating(obj) and all(
                        (o.get("kind"), o.get("name"), o.get("uid")) not in live for o in owners):
                    self._log("deleting" if path == PODS else "claim-deleting", obj["metadata"]["name"],
                              "garbage collector")
                    self.api.delete(f"{path}/{obj['metadata']['name']}")

    def _protect_claims(self, pods: list[dict[str, Any]], claims: list[dict[str, Any]], since: float) -> None:
        """A Terminating claim goes once no pod refers to it; a gone claim's volume directory is removed."""
        used = {v["persistentVolumeClaim"]["claimName"] for p in pods
                for v in (p.get("spec") or {}).get("volumes") or [] if "persistentVolumeClaim" in v}
        for claim in claims:
            name = claim["metadata"]["name"]
            if _terminating(claim) and name not in used and PVC_PROTECTION in (_meta(claim).get("finalizers") or []):
                self._release_volume(name)  # before the claim goes: a claim of that name made next gets a new one
                with contextlib.suppress(urllib.error.HTTPError):  # 404: gone meanwhile
                    self.api.patch(f"{PVCS}/{name}", {"metadata": {"finalizers": [
                        f for f in _meta(claim)["finalizers"] if f != PVC_PROTECTION]}})
        present = {c["metadata"]["name"] for c in self.api.items(PVCS)}  # and claims gone without protection
        with self.lock:
            gone = [name for name, (_, bound, _) in self._volumes.items() if name not in present and bound < since]
        for name in gone:
            self._release_volume(name)

    def _release_volume(self, claim: str) -> None:
        """The claim is gone: so is its volume (reclaim policy Delete)."""
        with self.lock:
            bound = self._volumes.pop(claim, None)
        if bound is not None:
            shutil.rmtree(bound[0], ignore_errors=True)
            self._log("claim-deleted", claim, str(bound[0]))

    # -- the StatefulSet controller ---------------------------------------------------------------------------

    def _statefulset_loop(self, name: str, uid: str) -> None:
        while not self._stop.wait(POLL_S):
            sts = self.api.get(f"{STS}/{name}")
            if sts is None or _meta(sts).get("uid", "") != uid:
                return  # deleted: the garbage collector takes its pods (and claims, if they are its)
            pods = {p["metadata"]["name"]: p for p in self.api.items(PODS)
                    if _ordinal(name, p["metadata"]["name"]) is not None
                    and any(o.get("uid") == uid for o in _meta(p).get("ownerReferences") or [])}
            claims = {c["metadata"]["name"]: c for c in self.api.items(PVCS)}
            try:
                self._reconcile(sts, pods, claims)
            finally:
                self._write_status(sts, list(pods.values()))

    def _reconcile(self, sts: dict[str, Any], pods: dict[str, dict[str, Any]],
                   claims: dict[str, dict[str, Any]]) -> None:
        """One pass of the real controller's updateStatefulSet, as far as ringkv's StatefulSets use it."""
        name, spec = sts["metadata"]["name"], sts["spec"]
        replicas, update = int(spec.get("replicas", 1)), revision(sts)
        monotonic = spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
        by_ordinal = {k: p for n, p in pods.items() if (k := _ordinal(name, n)) is not None}
        self._own_claims(sts, replicas, claims)

        for k in range(replicas):  # the replicas, in order
            pod = by_ordinal.get(k)
            if pod is None:
                self._create_pod(sts, f"{name}-{k}", update)
                if monotonic:
                    return
            elif monotonic and not self._available(sts, pod):  # missing, terminating or not yet ready: halt
                return

        condemned = sorted((k for k in by_ordinal if k >= replicas), reverse=True)
        for k in condemned:  # scale-down: highest ordinal first
            pod = by_ordinal[k]
            if _terminating(pod):
                if monotonic:
                    return
                continue
            if monotonic and not all(self._available(sts, p) for j, p in by_ordinal.items() if j < k):
                return
            if (spec.get("persistentVolumeClaimRetentionPolicy") or {}).get("whenScaled") == "Delete":
                self._set_claim_owner(claims.get(f"data-{name}-{k}"), [self._owner("v1", "Pod", pod)])
            self._delete_pod(pod["metadata"]["name"], "scale-down")
            if monotonic:
                return

        strategy = spec.get("updateStrategy") or {"type": "RollingUpdate"}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            return
        partition = int((strategy.get("rollingUpdate") or {}).get("partition") or 0)
        for k in reversed(range(partition, replicas)):  # the rolling update: highest ordinal first
            pod = by_ordinal.get(k)
            if pod is None:
                return
            if _meta(pod).get("labels", {}).get("controller-revision-hash") != update and not _terminating(pod):
                images = {s["metadata"]["name"]: s["spec"]["template"]["spec"]["containers"][0]["image"]
                          for s in self.api.items(STS)}
                with self.lock:
                    self.rolls.append((pod["metadata"]["name"], images))
                self._delete_pod(pod["metadata"]["name"], f"rolling update to {update}")
                return
            if not self._available(sts, pod):
                return

    def _available(self, sts: dict[str, Any], pod: dict[str, Any]) -> bool:
        if not _running_and_ready(pod):
            return False
        min_ready = int(sts["spec"].get("minReadySeconds") or 0) if self.honour_min_ready else 0
        if min_ready <= 0:
            return True
        ready = next(c for c in pod["status"]["conditions"] if c.get("type") == "Ready")
        since = datetime.datetime.fromisoformat(ready["lastTransitionTime"])
        return (datetime.datetime.now(tz=datetime.UTC) - since).total_seconds() >= min_ready

    @staticmethod
    def _owner(api_version: str, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": api_version, "kind": kind, "name": obj["metadata"]["name"],
                "uid": _meta(obj).get("uid", ""), "controller": True, "blockOwnerDeletion": True}

    def _own_claims(self, sts: dict[str, Any], replicas: int, claims: dict[str, dict[str, Any]]) -> None:
        """whenDeleted Delete: the claims of the replicas are owned by the StatefulSet (the garbage collector
        deletes them with it); Retain: by nobody."""
        policy = (sts["spec"].get("persistentVolumeClaimRetentionPolicy") or {}).get("whenDeleted", "Retain")
        owners = [self._owner("apps/v1", "StatefulSet", sts)] if policy == "Delete" else []
        for k in range(replicas):
            self._set_claim_owner(claims.get(f"data-{sts['metadata']['name']}-{k}"), owners)

    def _set_claim_owner(self, claim: dict[str, Any] | None, owners: list[dict[str, Any]]) -> None:
        if claim is not None and not _terminating(claim) and (_meta(claim).get("ownerReferences") or []) != owners:
            with contextlib.suppress(urllib.error.HTTPError):
                self.api.patch(f"{PVCS}/{claim['metadata']['name']}", {"metadata": {"ownerReferences": owners}})

    def _create_pod(self, sts: dict[str, Any], name: str, update: str) -> None:
        """The claim first (from the template "data"), then the Pod object, then its kubelet."""
        [claim_template] = [t for t in sts["spec"]["volumeClaimTemplates"] if t["metadata"]["name"] == "data"]
        claim = f"data-{name}"
        found = self.api.get(f"{PVCS}/{claim}")
        if found is not None and _terminating(found):
            with self.lock:
                if name not in self._blocked:
                    self._blocked.add(name)
                    self._log("blocked", name, f"claim {claim} is being deleted")
            return
        with self.lock:
            self._blocked.discard(name)
        if found is None:
            found = self.api.create(PVCS, {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": NS, "labels": claim_template["metadata"].get("labels", {}),
                             "finalizers": [PVC_PROTECTION]},
                "spec": claim_template["spec"]})
            self._log("claim-created", claim)
        claim_uid = str(_meta(found).get("uid") or "")
        if claim in self._volumes and self._volumes[claim][2] != claim_uid:
            self._release_volume(claim)  # the volume of an earlier claim of that name
        with self.lock:
            if claim not in self._volumes:  # bind a volume (a fresh directory) to the claim
                path = self.root / "volumes" / f"pvc-{claim_uid}"
                path.mkdir(parents=True, exist_ok=True)
                self._volumes[claim] = (path, time.monotonic(), claim_uid)
            volume = self._volumes[claim][0]

        template = json.loads(json.dumps(sts["spec"]["template"]))
        uid = str(uuid.uuid4())
        pod_spec = template["spec"]
        pod_spec["volumes"] = [*(pod_spec.get("volumes") or []),
                               {"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
        pod_spec.update({"hostname": name, "subdomain": sts["spec"]["serviceName"]})
        self.api.create(PODS, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "uid": uid,
                         "labels": {**template["metadata"].get("labels", {}), "controller-revision-hash": update,
                                    "statefulset.kubernetes.io/pod-name": name,
                                    "apps.kubernetes.io/pod-index": name.rsplit("-", 1)[1]},
                         "annotations": template["metadata"].get("annotations", {}),
                         "ownerReferences": [self._owner("apps/v1", "StatefulSet", sts)],
                         "finalizers": [KUBELET_FINALIZER]},
            "spec": pod_spec,
            "status": {"phase": "Pending"},
        })
        node = NodeProcess(volume / "data", node_id=name, log_dir=self.root / "logs" / f"{name}-{uid[:8]}",
                           insecure=False)  # the pod's environment says (RINGKV_INSECURE or certificates)
        secrets = SecretVolumes(self.api, self.root / "secrets" / f"{name}-{uid[:8]}", template)
        pod = Pod(name, sts["metadata"]["name"], uid, update, template, claim, volume, node, secrets)
        with self.lock:
            self.pods[name] = pod
            self._log("created", name, update)
        self._start_thread(f"kubelet-{name}-{uid}", lambda: self._kubelet(pod))

    def _delete_pod(self, name: str, why: str) -> None:
        self._log("deleting", name, why)
        self.api.delete(f"{PODS}/{name}")

    def _write_status(self, sts: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        name = sts["metadata"]["name"]
        update, previous = revision(sts), sts.get("status") or {}
        hashes = [_meta(p).get("labels", {}).get("controller-revision-hash") for p in pods]
        ready = sum(1 for p in pods if _running_and_ready(p))
        status: dict[str, Any] = {
            "replicas": len(pods), "readyReplicas": ready,
            "availableReplicas": sum(1 for p in pods if self._available(sts, p)),
            "updatedReplicas": hashes.count(update), "updateRevision": update,
            "currentRevision": previous.get("currentRevision") or update,
        }
        if status["updatedReplicas"] == status["replicas"] == ready == int(sts["spec"].get("replicas", 1)):
            status["currentRevision"] = update  # the rolling update is complete
        status["currentReplicas"] = hashes.count(status["currentRevision"])
        if _meta(sts).get("generation") is not None:
            status["observedGeneration"] = _meta(sts)["generation"]
        if any(previous.get(k) != v for k, v in status.items()):
            with contextlib.suppress(urllib.error.HTTPError):  # 404: deleted meanwhile
                self.api.patch(f"{STS}/{name}", {"status": status})

    # -- the kubelet ----------------------------------------------------------------------------------------

    def _kubelet(self, pod: Pod) -> None:
        """Run the pod's container until its Pod object is deleted; then stop it and let the object go."""
        backoff, not_before, since, synced = BACKOFF_S, 0.0, 0.0, 0.0
        while not self._stop.is_set():
            obj = self.api.get(f"{PODS}/{pod.name}")
            if obj is None or _meta(obj).get("uid") != pod.uid or _terminating(obj):
                self._terminate(pod, obj)
                return
            with self.lock:
                held = pod.name in self._held
            now = time.monotonic()
            if pod.started and now - synced > SECRET_SYNC_S:  # the kubelet refreshes mounted Secrets
                with contextlib.suppress(MissingSecret):
                    if pod.secrets.sync():
                        self._log("secrets-updated", pod.name)
                synced = now
            if pod.node.running:
                if held:
                    pod.node.kill()  # held while it was starting
                elif now - since > BACKOFF_RESET_S:
                    backoff = BACKOFF_S
            if not pod.node.running:
                if since:  # it ran: it exited
                    pod.last_exit = pod.node.kill()
                    self._log("exited", pod.name, str(pod.last_exit))
                    since, not_before = 0.0, now + (0.0 if held else backoff)
                    backoff = min(2 * backoff, BACKOFF_MAX_S)
                if held:
                    not_before = 0.0  # a release restarts it at once
                elif now >= not_before:
                    since, not_before, backoff = self._run_container(pod, backoff)
            self._write_pod(pod, pod.node.running and self._probe(pod))
            self._stop.wait(POLL_S)

    def _run_container(self, pod: Pod, backoff: float) -> tuple[float, float, float]:
        """Start the node; returns (running since, not before, back-off)."""
        try:
            pod.secrets.sync()
        except MissingSecret as e:  # ContainerCreating until it exists
            self._log("secret-missing", pod.name, str(e))
            return 0.0, time.monotonic() + POLL_S, backoff
        try:
            pod.node.extra_args = self._flags(pod)
            pod.node.start(NODE_START_S)
        except AssertionError as e:  # it exited or hung before its ready line (or its config is wrong)
            self._log("start-failed", pod.name, str(e).splitlines()[0])
            return 0.0, time.monotonic() + backoff, min(2 * backoff, BACKOFF_MAX_S)
        finally:
            pod.restarts = max(0, pod.node.starts - 1)  # every start after the first is a restart
        pod.started = True
        self._log("started", pod.name, pod.node.url)
        return time.monotonic(), 0.0, backoff

    def _terminate(self, pod: Pod, obj: dict[str, Any] | None) -> None:
        """Graceful deletion: SIGTERM, wait for the exit, then remove the finalizer (the object goes)."""
        pod.terminating = True
        self._log("stopping", pod.name)
        if pod.node.running:
            try:
                code: int | None = pod.node.stop()
            except AssertionError as e:  # did not exit in time: SIGKILLed
                code = None
                with self.lock:
                    self._errors.append(str(e)[:2000])
            self._log("stopped", pod.name, str(code))
        else:
            pod.node.kill()
        if obj is not None and _meta(obj).get("uid") == pod.uid:
            with contextlib.suppress(urllib.error.HTTPError):
                self.api.patch(f"{PODS}/{pod.name}", {"metadata": {"finalizers": [
                    f for f in _meta(obj).get("finalizers") or [] if f != KUBELET_FINALIZER]}})
        with self.lock:
            if self.pods.get(pod.name) is pod:
                del self.pods[pod.name]
            self._log("deleted", pod.name)

    def _env(self, pod: Pod) -> dict[str, str]:
        """The container's environment as the kubelet makes it: the ConfigMap (envFrom), then env with
        fieldRefs and $(VAR) references resolved."""
        [container] = pod.template["spec"]["containers"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            config_map = self.api.get(f"{CONFIGMAPS}/{source['configMapRef']['name']}")
            assert config_map is not None, f"{pod.name}: ConfigMap {source['configMapRef']['name']} does not exist"
            env.update(config_map["data"])
        for var in container.get("env") or []:
            if "valueFrom" in var:
                assert var["valueFrom"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}
                env[var["name"]] = pod.name
            else:
                env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), var["value"])
        return env

    def _flags(self, pod: Pod) -> list[str]:
        env = self._env(pod)
        service = pod.template["spec"].get("subdomain") or ""
        # What the operator decided, checked; then only the addresses are moved to loopback.
        assert env["RINGKV_NODE_ID"] == pod.name
        assert env["RINGKV_ADVERTISE_HOST"].startswith(f"{pod.name}.") and env["RINGKV_ADVERTISE_HOST"].endswith(
            f".{NS}.svc"), env["RINGKV_ADVERTISE_HOST"]
        [container] = pod.template["spec"]["containers"]
        [mount] = [m["mountPath"] for m in container.get("volumeMounts") or [] if m["name"] == "data"]
        assert env["RINGKV_DATA_DIR"].startswith(mount + "/"), (env["RINGKV_DATA_DIR"], mount)
        pod.node.data_dir = pod.volume / os.path.relpath(env["RINGKV_DATA_DIR"], mount)
        seeds = []
        for seed in env["RINGKV_SEEDS"].split(","):
            host, port = seed.rsplit(":", 1)
            assert host.endswith(f"{service}.{NS}.svc") and port == "7070", seed
            seeds.append(f"127.0.0.1:{self._peer_port(host.split('.')[0])}")
        env.update({"RINGKV_SEEDS": ",".join(seeds), "RINGKV_ADVERTISE_HOST": "127.0.0.1",
                    "RINGKV_PEER_PORT": str(self._peer_port(pod.name))})
        if "RINGKV_DRAIN_DELAY_S" in env:  # kept, but short: no Service endpoints here to wait for
            env["RINGKV_DRAIN_DELAY_S"] = f"{min(float(env['RINGKV_DRAIN_DELAY_S']), DRAIN_DELAY_S):g}"
        env = {key: pod.secrets.rewrite(value) for key, value in env.items()}  # mounted Secrets: their files
        flags = []
        for key, value in sorted(env.items()):
            if key not in ("RINGKV_HOST", "RINGKV_PORT", "RINGKV_NODE_ID", "RINGKV_DATA_DIR"):  # NodeProcess's
                flags += ["--" + key.removeprefix("RINGKV_").lower().replace("_", "-"), value]
        return flags

    @staticmethod
    def _probe(pod: Pod) -> bool:
        try:
            with urllib.request.urlopen(pod.node.url + "/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, RuntimeError):  # RuntimeError: it exited meanwhile
            return False

    def _write_pod(self, pod: Pod, ready: bool) -> None:
        """The Pod's status (and its container port "http": the node's real one), when it changed."""
        running = pod.node.running
        with self.lock:
            held = pod.name in self._held
        try:
            port = int(pod.node.url.rsplit(":", 1)[1]) if running else 8080
        except RuntimeError:
            running, port = False, 8080
        containers = json.loads(json.dumps(pod.template["spec"]["containers"]))
        containers[0]["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"},
                                  {"name": "peer", "containerPort": self._peer_port(pod.name), "protocol": "TCP"}]
        if running:
            state: dict[str, Any] = {"running": {}}
        else:
            state = {"waiting": {"reason": "CrashLoopBackOff" if pod.started or held else "ContainerCreating"}}
        container_status: dict[str, Any] = {
            "name": containers[0]["name"], "image": containers[0]["image"], "ready": ready, "started": running,
            "restartCount": pod.restarts, "state": state}
        if pod.last_exit is not None:
            container_status["lastState"] = {"terminated": {"exitCode": pod.last_exit}}
        written: dict[str, Any] = {"ready": ready, "spec": {"containers": containers}, "status": {
            "phase": "Running" if pod.started else "Pending", "podIP": "127.0.0.1", "hostIP": "127.0.0.1",
            "containerStatuses": [container_status]}}
        if written == pod.written:
            return
        previous = pod.written.get("ready")
        since = pod.ready_since if previous == ready and pod.ready_since else _now()
        ready_s = "True" if ready else "False"
        patch = {"spec": written["spec"], "status": {**written["status"], "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": ready_s, "lastTransitionTime": since},
            {"type": "Ready", "status": ready_s, "lastTransitionTime": since}]}}
        try:
            self.api.patch(f"{PODS}/{pod.name}", patch)
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
            return  # gone: the next pass terminates
        pod.ready, pod.written, pod.ready_since = ready, written, since
        if previous != ready:
            self._log("ready" if ready else "not-ready", pod.name)
