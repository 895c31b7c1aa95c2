"""The operator as a real `kopf run` process against the kmock Kubernetes emulator, with real ringkv nodes.

Who plays what:

- kmock's KubernetesEmulator (in a thread of this process, on 127.0.0.1) is the API server. It stores objects
  and streams watches, nothing more: no defaulting, no generation bumps, no garbage collector, no controllers.
  This test sets what an API server would (uid, generation, resourceVersion) when it writes a KVCluster.
- `python -m kopf run -m ringkv_operator.handlers --all-namespaces --standalone --liveness=...` is the
  operator, exactly as the chart's Deployment runs it, pointed at the emulator by a kubeconfig.
- This test is kubectl (it creates, patches and deletes KVClusters over HTTP, after the operator's watch is
  open, since every new watch replays all objects) and the StatefulSet controller (`StatefulSetController`):
  for each pod of a StatefulSet it starts a real `ringkv node` on 127.0.0.1 with the settings the operator
  put in the ConfigMap and the pod template (only addresses are rewritten to loopback: seeds name pods by
  DNS), writes the Pod object (podIP 127.0.0.1, the node's real HTTP port as the container port "http",
  Ready from the node's /ready) and the StatefulSet's status, and rolls pods over a new template.
- The operator reaches the nodes' admin API at RINGKV_OPERATOR_NODE_URL_TEMPLATE=http://{pod_ip}:{port}
  (production: the pod's DNS name), so the members in the status come from the real ring.

Every wait has a deadline; every process is stopped in teardown; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .nodes import NodeProcess

kmock = pytest.importorskip("kmock", reason="kmock is missing (pip install -e '.[dev]')")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]'")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

TOP = Path(__file__).resolve().parents[2]
NS = "db"
KVC = f"/apis/ringkv.io/v1alpha1/namespaces/{NS}/kvclusters"
STS = f"/apis/apps/v1/namespaces/{NS}/statefulsets"
PODS = f"/api/v1/namespaces/{NS}/pods"
SERVICES = f"/api/v1/namespaces/{NS}/services"
CONFIGMAPS = f"/api/v1/namespaces/{NS}/configmaps"
PDBS = f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets"
PVCS = f"/api/v1/namespaces/{NS}/persistentvolumeclaims"
EVENTS = f"/api/v1/namespaces/{NS}/events"
RESYNC_S = 1.0
NODE_START_S = 45.0  # the first node waits up to 10 s for the second seed before it allocates tokens alone
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = 30.0, every_s: float = 0.2,
             diagnose: Callable[[], str] = lambda: "") -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{diagnose()}")
        time.sleep(every_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the API server: kmock ---------------------------------------------------------------------------------------


class Emulator:
    """kmock's KubernetesEmulator on 127.0.0.1, in a thread with its own event loop; the test talks to it over
    HTTP like kubectl does."""

    RESOURCES = {
        "ringkv.io/v1alpha1/kvclusters": {"kind": "KVCluster", "namespaced": True, "singular": "kvcluster",
                                          "shortnames": {"kvc"}, "subresources": {"status", "scale"}},
        "apps/v1/statefulsets": {"kind": "StatefulSet", "namespaced": True, "subresources": {"status", "scale"}},
        "policy/v1/poddisruptionbudgets": {"kind": "PodDisruptionBudget", "namespaced": True},
        "v1/pods": {"kind": "Pod", "namespaced": True, "subresources": {"status"}},
        "v1/services": {"kind": "Service", "namespaced": True},
        "v1/configmaps": {"kind": "ConfigMap", "namespaced": True},
        "v1/persistentvolumeclaims": {"kind": "PersistentVolumeClaim", "namespaced": True},
        "v1/events": {"kind": "Event", "namespaced": True},
        "v1/namespaces": {"kind": "Namespace", "namespaced": False},  # kopf's backbone resources
        "apiextensions.k8s.io/v1/customresourcedefinitions": {"kind": "CustomResourceDefinition",
                                                              "namespaced": False},
    }
    VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.handler: Any = None
        self.url = ""
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise AssertionError("kmock did not start within 15 s")
        if self._error is not None:
            raise AssertionError(f"kmock failed to start: {self._error!r}")

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported to the constructor
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with kmock.KubernetesEmulator() as handler, kmock.Server(handler, host="127.0.0.1") as server:
            for name, info in self.RESOURCES.items():
                handler.resources[name] = kmock.ResourceInfo(verbs=self.VERBS, **info)
            self.handler, self.url = handler, str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def watching(self, plural: str) -> bool:
        """Whether a watch of that resource has been opened (by the operator)."""
        return any(str(r.action).endswith("WATCH") and r.resource is not None and r.resource.plural == plural
                   for r in list(self.handler))

    # -- kubectl ------------------------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.request("GET", path)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise
        return found

    def items(self, path: str) -> list[dict[str, Any]]:
        return list((self.get(path) or {}).get("items") or [])

    def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.request("POST", path, obj)
        return created

    def patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = self.request("PATCH", path, patch, "application/merge-patch+json")
        return patched

    def delete(self, path: str) -> None:
        with contextlib.suppress(urllib.error.HTTPError):
            self.request("DELETE", path)


# -- the operator: `kopf run` ------------------------------------------------------------------------------------


class Operator:
    def __init__(self, emulator: Emulator, workdir: Path) -> None:
        self.workdir = workdir
        self.kubeconfig = workdir / "kubeconfig"
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": emulator.url}}],
            "users": [{"name": "test", "user": {"token": "not-checked"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test", "namespace": NS}}],
        }))
        self.liveness_port = free_port()
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "operator.log"

    def argv(self) -> list[str]:
        # The chart's command, but the liveness endpoint on loopback.
        return [sys.executable, "-m", "kopf", "run", "-m", "ringkv_operator.handlers", "--all-namespaces",
                "--standalone", f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz", "--verbose"]

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RINGKV_", "KUBE"))}
        env.update({
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": os.pathsep.join([str(TOP / "operator"), env.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
            "POD_NAMESPACE": "ringkv-system",
            "RINGKV_OPERATOR_NODE_IMAGE": "ringkv:0.1.0",
            "RINGKV_OPERATOR_NODE_IMAGE_PULL_POLICY": "IfNotPresent",
            "RINGKV_OPERATOR_NODE_URL_TEMPLATE": "http://{pod_ip}:{port}",
            "RINGKV_OPERATOR_RESYNC_SECONDS": str(RESYNC_S),
        })
        self.starts += 1
        with open(self.log, "ab") as log:
            log.write(f"\n===== start {self.starts}: {' '.join(self.argv())}\n".encode())
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)

    def liveness(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                return dict(json.loads(r.read()))
        except (OSError, ValueError):
            return None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def tail(self, chars: int = 6000) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "--- operator log (tail) ---\n" + self.log.read_text(errors="replace")[-chars:]
        return ""


# -- the StatefulSet controller: real nodes ----------------------------------------------------------------------


@dataclass
class Pod:
    name: str
    node: NodeProcess
    peer_port: int
    revision: str
    template: dict[str, Any]  # the pod template it was made from (its labels and annotations are the pod's)
    held: bool = False  # stopped by the test: not restarted until released


@dataclass
class StatefulSetController:
    """Plays the StatefulSet controller (and kubelet) for the emulator: pods as real `ringkv node`
    processes, OrderedReady, rolling updates highest ordinal first, PVCs from the claim templates."""

    api: Emulator
    root: Path
    pods: dict[str, Pod] = field(default_factory=dict)
    peer_ports: dict[str, int] = field(default_factory=dict)
    rolls: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (pod, every StatefulSet's image)

    @staticmethod
    def revision(sts: dict[str, Any]) -> str:
        template = json.dumps(sts["spec"]["template"], sort_keys=True).encode()
        return f"{sts['metadata']['name']}-{hashlib.sha256(template).hexdigest()[:10]}"

    def sync(self) -> None:
        sets = self.api.items(STS)
        for sts in sets:
            try:
                self._sync(sts)
            except urllib.error.HTTPError as e:
                if e.code != 404:  # deleted meanwhile: its pods go below, on the next pass
                    raise
        owned = {f"{s['metadata']['name']}-{k}" for s in sets for k in range(s["spec"]["replicas"])}
        for name in [n for n in self.pods if n not in owned]:  # the StatefulSet is gone: so are its pods
            self.pods.pop(name).node.kill()
            self.api.delete(f"{PODS}/{name}")

    def _sync(self, sts: dict[str, Any]) -> None:
        name, replicas, revision = sts["metadata"]["name"], sts["spec"]["replicas"], self.revision(sts)
        for k in range(replicas):
            self.peer_ports.setdefault(f"{name}-{k}", free_port())
        for k in range(replicas):  # OrderedReady: pod k only once pods 0..k-1 run
            pod = self.pods.get(f"{name}-{k}")
            if pod is None:
                self._create_claim(sts, f"{name}-{k}")
                pod = self.pods[f"{name}-{k}"] = self._start(sts, f"{name}-{k}", revision)
            elif not pod.node.running and not pod.held:
                pod.node.start(NODE_START_S)
            self._write_pod(sts, pod)
            self._write_status(sts, revision)
        for k in reversed(range(replicas)):  # RollingUpdate: highest ordinal first, one at a time
            pod = self.pods[f"{name}-{k}"]
            if pod.revision != revision and not pod.held:
                images = {s["metadata"]["name"]: s["spec"]["template"]["spec"]["containers"][0]["image"]
                          for s in self.api.items(STS)}
                self.rolls.append((pod.name, images))
                assert pod.node.stop() == 0, pod.node.stderr()
                self._write_pod(sts, pod)
                self.pods[pod.name] = pod = self._start(sts, pod.name, revision, pod.node)
                self._write_pod(sts, pod)
                self._write_status(sts, revision)

    def _env(self, sts: dict[str, Any], pod: str) -> dict[str, str]:
        """The container's environment as the kubelet would make it: the ConfigMap (envFrom), then env with
        fieldRefs and $(VAR) references resolved."""
        [container] = sts["spec"]["template"]["spec"]["containers"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            config_map = self.api.get(f"{CONFIGMAPS}/{source['configMapRef']['name']}")
            assert config_map is not None, f"{pod}: ConfigMap {source['configMapRef']['name']} does not exist"
            env.update(config_map["data"])
        for var in container.get("env") or []:
            if "valueFrom" in var:
                assert var["valueFrom"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}
                env[var["name"]] = pod
            else:
                env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), var["value"])
        return env

    def _start(self, sts: dict[str, Any], pod: str, revision: str, node: NodeProcess | None = None) -> Pod:
        env = self._env(sts, pod)
        # What the operator decided, checked; then only the addresses are moved to loopback.
        assert env["RINGKV_NODE_ID"] == pod
        assert env["RINGKV_ADVERTISE_HOST"] == f"{pod}.{sts['spec']['serviceName']}.{NS}.svc"
        assert env["RINGKV_DATA_DIR"].startswith("/var/lib/ringkv")
        seeds = []
        for seed in env["RINGKV_SEEDS"].split(","):
            host, port = seed.rsplit(":", 1)
            assert host.endswith(f".{sts['spec']['serviceName']}.{NS}.svc") and port == "7070", seed
            seeds.append(f"127.0.0.1:{self.peer_ports.setdefault(host.split('.')[0], free_port())}")
        env.update({"RINGKV_SEEDS": ",".join(seeds), "RINGKV_ADVERTISE_HOST": "127.0.0.1",
                    "RINGKV_PEER_PORT": str(self.peer_ports[pod])})
        flags = []
        for key, value in sorted(env.items()):
            if key not in ("RINGKV_HOST", "RINGKV_PORT", "RINGKV_NODE_ID", "RINGKV_DATA_DIR"):  # NodeProcess's
                flags += ["--" + key.removeprefix("RINGKV_").lower().replace("_", "-"), value]
        if node is None:
            node = NodeProcess(self.root / pod / "data", node_id=pod, extra_args=flags, log_dir=self.root / "logs")
        else:
            node.extra_args = flags
        node.start(NODE_START_S)
        return Pod(pod, node, self.peer_ports[pod], revision, json.loads(json.dumps(sts["spec"]["template"])))

    def _create_claim(self, sts: dict[str, Any], pod: str) -> None:
        for template in sts["spec"]["volumeClaimTemplates"]:
            claim = f"{template['metadata']['name']}-{pod}"
            if self.api.get(f"{PVCS}/{claim}") is None:
                self.api.create(PVCS, {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                       "metadata": {"name": claim, "namespace": NS,
                                                    "labels": template["metadata"].get("labels", {})},
                                       "spec": template["spec"]})

    def _write_pod(self, sts: dict[str, Any], pod: Pod) -> None:
        template = pod.template
        ready = pod.node.running and self._ready(pod)
        spec = json.loads(json.dumps(template["spec"]))
        spec["containers"][0]["ports"] = [
            {"name": "http", "containerPort": int(pod.node.url.rsplit(":", 1)[1]) if pod.node.running else 8080},
            {"name": "peer", "containerPort": pod.peer_port}]
        obj = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": NS,
                         "labels": {**template["metadata"]["labels"], "controller-revision-hash": pod.revision,
                                    "statefulset.kubernetes.io/pod-name": pod.name},
                         "annotations": template["metadata"].get("annotations", {}),
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                              "name": sts["metadata"]["name"], "uid": "sts-uid", "controller": True}]},
            "spec": spec,
            "status": {"phase": "Running" if pod.node.running else "Pending", "podIP": "127.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
        }
        if self.api.get(f"{PODS}/{pod.name}") is None:
            self.api.create(PODS, obj)
        else:
            self.api.patch(f"{PODS}/{pod.name}", obj)

    @staticmethod
    def _ready(pod: Pod) -> bool:
        try:
            with urllib.request.urlopen(pod.node.url + "/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def _write_status(self, sts: dict[str, Any], revision: str) -> None:
        mine = [p for p in self.pods.values() if p.name.rsplit("-", 1)[0] == sts["metadata"]["name"]]
        ready = sum(1 for p in mine if p.node.running and self._ready(p))
        updated = sum(1 for p in mine if p.revision == revision)
        current = revision if updated == sts["spec"]["replicas"] else "previous"
        self.api.patch(f"{STS}/{sts['metadata']['name']}", {"status": {
            "replicas": len(mine), "readyReplicas": ready, "availableReplicas": ready, "updatedReplicas": updated,
            "currentRevision": current, "updateRevision": revision}})

    def hold(self, pod: str) -> None:
        """Kill a node and keep it down (a crashed pod) until `release`."""
        self.pods[pod].held = True
        self.pods[pod].node.kill()

    def release(self, pod: str) -> None:
        self.pods[pod].held = False

    def stop_all(self) -> None:
        for pod in self.pods.values():
            pod.node.kill()


# -- fixtures ----------------------------------------------------------------------------------------------------


@dataclass
class World:
    api: Emulator
    operator: Operator
    controller: StatefulSetController

    def diagnose(self) -> str:
        kvcs = {o["metadata"]["name"]: o.get("status") for o in self.api.items(KVC)}
        return f"KVCluster status: {json.dumps(kvcs, indent=1)[:4000]}\n{self.operator.tail()}"

    def kvcluster(self, name: str) -> dict[str, Any] | None:
        return self.api.get(f"{KVC}/{name}")

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        conditions = ((self.kvcluster(name) or {}).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == type_), {})

    def running(self, name: str, nodes: int, generation: int = 1) -> dict[str, Any] | None:
        """The KVCluster's status once it is Running with every node ready and every member up, else None."""
        found = (self.kvcluster(name) or {}).get("status") or {}
        members = found.get("members") or []
        ok = found.get("phase") == "Running" and found.get("readyReplicas") == nodes \
            and found.get("observedGeneration") == generation and len(members) == nodes \
            and all(m["up"] and m["status"] == "normal" for m in members)
        return found if ok else None

    def wait(self, what: str, probe: Callable[[], T | None], timeout_s: float = 60.0, sync: bool = True) -> T:
        """Wait, playing the StatefulSet controller on every poll."""
        def step() -> T | None:
            if sync:
                self.controller.sync()
            return probe()
        return wait_for(what, step, timeout_s, every_s=0.3, diagnose=self.diagnose)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    api = Emulator()
    operator = Operator(api, tmp_path)
    controller = StatefulSetController(api, tmp_path / "pods")
    try:
        operator.start()
        wait_for("the operator to watch KVClusters", lambda: api.watching("kvclusters"), 60,
                 diagnose=operator.tail)
        yield World(api, operator, controller)
    finally:
        operator.stop()
        controller.stop_all()
        api.close()


def kvcluster(name: str, generation: int = 1, **spec: Any) -> dict[str, Any]:
    """A KVCluster as the API server would store it: the emulator does not fill in uid, generation or
    resourceVersion (kopf's patches test the latter), so this does."""
    return {"apiVersion": "ringkv.io/v1alpha1", "kind": "KVCluster",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": generation,
                         "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec}


def owned_by(obj: dict[str, Any], name: str) -> bool:
    return obj["metadata"].get("ownerReferences") == [{
        "apiVersion": "ringkv.io/v1alpha1", "kind": "KVCluster", "name": name, "uid": f"uid-{name}",
        "controller": True, "blockOwnerDeletion": True}]


def http_json(url: str, body: Any = None) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 method="POST" if body is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


# -- the scenario ------------------------------------------------------------------------------------------------


def test_operator_runs_a_kvcluster_end_to_end(world: World, tmp_path: Path) -> None:
    api, controller = world.api, world.controller

    # 1. kubectl apply: the operator builds the objects, each owned by the KVCluster.
    api.create(KVC, kvcluster("demo", replicas=3, replicationFactor=3, readQuorum=2, writeQuorum=2,
                              image="ringkv:1", storage={"size": "1Gi"}, config={"durability": "batch"}))
    sts = world.wait("the StatefulSet", lambda: api.get(f"{STS}/demo"), sync=False)
    objects = {
        "StatefulSet demo": sts,
        "Service demo": world.wait("the client Service", lambda: api.get(f"{SERVICES}/demo"), sync=False),
        "Service demo-peers": world.wait("the peer Service", lambda: api.get(f"{SERVICES}/demo-peers"), sync=False),
        "ConfigMap demo-config": world.wait("the ConfigMap", lambda: api.get(f"{CONFIGMAPS}/demo-config"), sync=False),
        "PodDisruptionBudget demo": world.wait("the PDB", lambda: api.get(f"{PDBS}/demo"), sync=False),
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
    assert status["selector"] == ("app.kubernetes.io/component=node,app.kubernetes.io/instance=demo,"
                                  "app.kubernetes.io/name=ringkv")
    assert {m["nodeId"] for m in status["members"]} == {"demo-0", "demo-1", "demo-2"}
    assert all(m["pod"] == m["nodeId"] and m["tokens"] > 0 and m["host"] == "127.0.0.1" for m in status["members"])
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {"Available": ("True", "QuorumReachable"), "Progressing": ("False", "Complete"),
                          "Degraded": ("False", "AsExpected"), "ScalingRefused": ("False", "SizeMatchesSpec")}
    node = controller.pods["demo-1"].node
    ring = http_json(node.url + "/admin/v1/ring")
    assert (ring["replication_factor"], ring["read_quorum"], ring["write_quorum"]) == (3, 2, 2)
    assert http_json(node.url + "/admin/v1/members")["cluster_name"] == f"{NS}/demo"
    http_json(node.url + "/api/v1/put?w=3", {"key": "before-rollout", "value": {"n": 1}})
    liveness = world.operator.liveness()
    assert liveness is not None and liveness["reconciler"]["last_reconcile"] > 0

    # 3. A new image rolls into the StatefulSet; the controller replaces the pods one by one.
    api.patch(f"{KVC}/demo", {"metadata": {"generation": 2}, "spec": {"image": "ringkv:2"}})
    world.wait("the new image in the StatefulSet", lambda: (api.get(f"{STS}/demo") or {})["spec"]["template"]
               ["spec"]["containers"][0]["image"] == "ringkv:2", sync=False)
    world.wait("the rolled cluster to be Running", lambda: world.running("demo", 3, generation=2), 120)
    assert [pod for pod, _ in controller.rolls] == ["demo-2", "demo-1", "demo-0"]  # highest ordinal first
    got = http_json(controller.pods["demo-0"].node.url + "/api/v1/get?key=before-rollout&r=3")
    assert got["value"] == {"n": 1}

    # 4. A node crashes and stays down: Degraded, still Available (2 of 3 >= max(R, W)); back: Running.
    #    The operator is restarted first: it resumes from what it observes.
    assert world.operator.stop() == 0
    world.operator.start()
    controller.hold("demo-2")
    world.wait("Degraded", lambda: world.condition("demo", "Degraded").get("status") == "True", 60)
    assert world.condition("demo", "Available")["status"] == "True"
    assert (world.kvcluster("demo") or {})["status"]["phase"] == "Degraded"
    controller.release("demo-2")
    world.wait("Running again", lambda: world.running("demo", 3, generation=2), 90)

    # 5. A size change is refused with a condition; the StatefulSet keeps its 3 nodes.
    api.patch(f"{KVC}/demo", {"metadata": {"generation": 3}, "spec": {"replicas": 5}})
    refused = world.wait("the ScalingRefused condition",
                         lambda: (c := world.condition("demo", "ScalingRefused")).get("status") == "True" and c)
    assert refused["reason"] == "ScalingNotSupported" and refused["observedGeneration"] == 3
    assert "not supported yet" in refused["message"] and "back to 3" in refused["message"]
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


def test_deletion_policy_delete_removes_the_volumes(world: World) -> None:
    api = world.api
    api.create(KVC, kvcluster("scratch", replicas=1, replicationFactor=1, readQuorum=1, writeQuorum=1,
                              storage={"size": "1Gi", "deletionPolicy": "Delete"}))
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
                        .get("phase") == "Failed" and world.kvcluster("bad"), sync=False)["status"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "InvalidSpec" and "seeds" in degraded["message"]
    assert world.api.get(f"{STS}/bad") is None
