"""kubefake's API server, and what every part of kubefake shares: the resource paths (namespace NS), `wait_for`,
`free_port`, `http_json` and `kvcluster` (a KVCluster as the API server would store it). It imports no other part
of kubefake (`kubefake_controllers` and `kubefake` import it).

`Emulator`: kmock's KubernetesEmulator in a thread of this process, on 127.0.0.1. It stores objects and
streams watches; like an API server it gives a created object a uid and a creationTimestamp when it has none
(and a name, for generateName), and deleting an object with finalizers only marks it (deletionTimestamp) until
they are removed. Nothing more: no defaulting, no generation bumps, no label selectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import kmock

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


def http_json(url: str, body: Any = None, token: str | None = None) -> Any:
    """GET (or POST `body` to) a node; `token`: the cluster's admin token (`World.token`)."""
    token = token or os.environ.get("RINGKV_TOKEN")  # `World.token` sets it
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 method="POST" if body is not None else "GET", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


def kvcluster(name: str, generation: int = 1, **spec: Any) -> dict[str, Any]:
    """A KVCluster as the API server would store it: the emulator does not fill in generation or
    resourceVersion (kopf's patches test the latter), so this does."""
    return {"apiVersion": "ringkv.io/v1alpha1", "kind": "KVCluster",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": generation,
                         "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec}


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).isoformat()


# -- the API server: kmock ---------------------------------------------------------------------------------------


class _ApiServer(kmock.KubernetesEmulator):
    """kmock, plus what an API server fills in on create (a uid, a creationTimestamp, the name of generateName),
    and without kmock's
    history of requests: it makes every request cost time in proportion to all the requests before it, and
    the controllers poll. `watched` keeps what the tests ask of it: the plurals a watch has been opened on."""

    watched: set[str]

    async def _handle(self, request: Any) -> Any:
        if request.resource is not None and request.action == kmock.action.CREATE \
                and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            if meta.get("generateName") and not meta.get("name"):  # as the API server: a random suffix
                meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        if request.resource is not None and request.action == kmock.action.WATCH:
            self.watched = {*getattr(self, "watched", set()), request.resource.plural}
        # kmock looks for the requests being served (watches: until they end) in its history: keep those only.
        flight: list[Any] = self.__dict__.setdefault("in_flight", [])
        flight.append(request)
        self._requests[:] = [r for r in self._requests if any(r is f for f in flight)]
        try:
            return await super()._handle(request)
        finally:
            del flight[next(i for i, f in enumerate(flight) if f is request)]


class Emulator:
    """kmock's KubernetesEmulator on 127.0.0.1, in a thread with its own event loop; the test talks to it over
    HTTP like kubectl does. Thread-safe (every call is one HTTP request)."""

    RESOURCES: dict[str, dict[str, Any]] = {
        "ringkv.io/v1alpha1/kvclusters": {"kind": "KVCluster", "namespaced": True, "singular": "kvcluster",
                                          "shortnames": {"kvc"}, "subresources": {"status", "scale"}},
        "apps/v1/statefulsets": {"kind": "StatefulSet", "namespaced": True, "subresources": {"status", "scale"}},
        "policy/v1/poddisruptionbudgets": {"kind": "PodDisruptionBudget", "namespaced": True},
        "v1/pods": {"kind": "Pod", "namespaced": True, "subresources": {"status"}},
        "v1/services": {"kind": "Service", "namespaced": True},
        "v1/configmaps": {"kind": "ConfigMap", "namespaced": True},
        "v1/persistentvolumeclaims": {"kind": "PersistentVolumeClaim", "namespaced": True},
        "v1/events": {"kind": "Event", "namespaced": True},
        "v1/secrets": {"kind": "Secret", "namespaced": True},
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
        async with _ApiServer() as handler, kmock.Server(handler, host="127.0.0.1") as server:
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
        return plural in getattr(self.handler, "watched", set())

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
