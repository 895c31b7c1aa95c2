"""A faithful fake of Kubernetes for the operator's integration tests: kmock's API server, the operator as a
real `kopf run`, and the controllers kmock lacks (the StatefulSet controller, the kubelet, pvc-protection and
the garbage collector), running in the background as the real ones do. Every pod is a real `ringkv node` on
127.0.0.1 with a data directory of its own (its PersistentVolumeClaim's volume).

    with kubefake.world(tmp_path) as world:            # emulator + operator (operator=False: none)
        world.api.create(kubefake.KVC, kubefake.kvcluster("demo", replicas=3))
        world.wait("3 ready", lambda: world.running("demo", 3), 120)
        world.controller.hold("demo-2") / .release("demo-2") / .kill("demo-1")   # crash-loop / SIGKILL once
        world.controller.pod("demo-1").node.url, .pod_names(), .rolls, .volume_dir("data-demo-0"), .volumes()
        world.controller.events(pod=None, action=None) -> [Event(t, action, pod, detail)], .first(action, pod)

Who plays what, and where it lives (this module re-exports the names of all three, so tests import it alone):

- `Emulator` (`kubefake_api`): kmock's KubernetesEmulator in a thread of this process, on 127.0.0.1, filling in
  what an API server does on create and delete; with it the resource paths (`KVC`, `STS`, `PODS`, ...) and the
  helpers `wait_for`, `free_port`, `http_json`, `kvcluster`.
- `Operator` (here): `python -m kopf run -m ringkv_operator.handlers --all-namespaces --standalone ...`, as the
  chart's Deployment runs it, pointed at the emulator by a kubeconfig.
- `Controllers` (`kubefake_controllers`): threads of this process, each polling the API every POLL_S: a
  StatefulSet controller loop per StatefulSet, a kubelet per pod (restart back-off, graceful deletion),
  pvc-protection and the garbage collector; with them the `Event`s they log, the `Pod`s their kubelets run,
  `revision`, and what is not emulated.
- `World` and `world()` (here): the three together, stopped on exit.

Imports run one way: kubefake_api <- kubefake_controllers <- kubefake.

Every wait has a deadline; every process is stopped on close; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .kubefake_api import (
    CONFIGMAPS,
    EVENTS,
    KVC,
    NS,
    PDBS,
    PODS,
    PVCS,
    SERVICES,
    STS,
    TOP,
    Emulator,
    free_port,
    http_json,
    kvcluster,
    wait_for,
)
from .kubefake_controllers import (
    BACKOFF_MAX_S,
    BACKOFF_RESET_S,
    BACKOFF_S,
    CLOSE_S,
    KUBELET_FINALIZER,
    NODE_START_S,
    POLL_S,
    PVC_PROTECTION,
    Controllers,
    Event,
    Pod,
    _running_and_ready,
    revision,
)

__all__ = [
    "BACKOFF_MAX_S",
    "BACKOFF_RESET_S",
    "BACKOFF_S",
    "CLOSE_S",
    "CONFIGMAPS",
    "EVENTS",
    "KUBELET_FINALIZER",
    "KVC",
    "NODE_START_S",
    "NS",
    "PDBS",
    "PODS",
    "POLL_S",
    "PVCS",
    "PVC_PROTECTION",
    "RESYNC_S",
    "SERVICES",
    "STS",
    "TOP",
    "Controllers",
    "Emulator",
    "Event",
    "Operator",
    "Pod",
    "World",
    "_running_and_ready",
    "free_port",
    "http_json",
    "kvcluster",
    "revision",
    "wait_for",
    "world",
]

RESYNC_S = 1.0
T = TypeVar("T")


# -- the operator: `kopf run` ------------------------------------------------------------------------------------


class Operator:
    def __init__(self, emulator: Emulator, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.env = dict(env or {})  # over the defaults below, at every start (change it between a stop and a start)
        self.kubeconfig = workdir / "kubeconfig"
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": emulator.url}}],
            "users": [{"name": "test", "user": {"token": "not-checked"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test", "namespace": NS}}],
        }))
        self.liveness_port = free_port()
        self.metrics_port = free_port()
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
            "RINGKV_OPERATOR_METRICS_PORT": str(self.metrics_port),
            **self.env,
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

    def metrics(self) -> str:
        """The operator's Prometheus exposition ("" while it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            return ""

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


# -- the world: emulator, operator, controllers --------------------------------------------------------------------


@dataclass
class World:
    api: Emulator
    operator: Operator | None
    controller: Controllers

    def diagnose(self) -> str:
        kvcs = {o["metadata"]["name"]: o.get("status") for o in self.api.items(KVC)}
        sets = {o["metadata"]["name"]: o.get("status") for o in self.api.items(STS)}
        return (f"KVCluster status: {json.dumps(kvcs, indent=1)[:4000]}\n"
                f"StatefulSet status: {json.dumps(sets)[:2000]}\n"
                f"{self.operator.tail() if self.operator else ''}\n{self.controller.diagnose()}")

    def kvcluster(self, name: str) -> dict[str, Any] | None:
        return self.api.get(f"{KVC}/{name}")

    def token(self, name: str) -> str:
        """The admin token of KVCluster `name`, from the Secret the operator made; from now on the token the
        test's clients send (RINGKV_TOKEN: `http_json`, `topology_helpers`, `ringkv.client`; reset on exit)."""
        secret = wait_for(f"Secret {name}-admin-token", lambda: self.api.get(
            f"/api/v1/namespaces/{NS}/secrets/{name}-admin-token"), 60, diagnose=self.diagnose)
        token = base64.b64decode(secret["data"]["token"]).decode()
        os.environ["RINGKV_TOKEN"] = token
        return token

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

    def wait(self, what: str, probe: Callable[[], T | None], timeout_s: float = 60.0) -> T:
        """Poll `probe` (the controllers run by themselves) until truthy; fail with diagnostics after timeout_s."""
        return wait_for(what, probe, timeout_s, every_s=0.2, diagnose=self.diagnose)


@contextlib.contextmanager
def world(workdir: Path, operator: bool = True, honour_min_ready: bool = False,
          operator_env: dict[str, str] | None = None) -> Iterator[World]:
    """The emulator, the controllers and (unless operator=False) the operator, its KVCluster watch open, with
    `operator_env` over its default settings; everything stopped on exit."""
    api = Emulator()
    controllers: Controllers | None = None
    kopf = Operator(api, workdir, operator_env) if operator else None
    try:
        controllers = Controllers(api, workdir / "pods", honour_min_ready)
        if kopf is not None:
            kopf.start()
            wait_for("the operator to watch KVClusters", lambda: api.watching("kvclusters"), 60, diagnose=kopf.tail)
        yield World(api, kopf, controllers)
    finally:
        os.environ.pop("RINGKV_TOKEN", None)
        if kopf is not None:
            kopf.stop()
        if controllers is not None:
            controllers.close()
        api.close()
