"""The one module that talks to the Kubernetes API (kopf itself patches the KVCluster's status and finalizers).

A small asynchronous client over aiohttp on plain dicts: get, list, create, merge-patch, delete. Credentials
come from the official client's loaders, in-cluster (service account; its token is re-read when it rotates)
or from a kubeconfig, as kopf's own login does. Only JSON merge patches are sent (RFC 7386: dicts merge,
lists are replaced, null removes), never PUT, so every write is idempotent and the emulator used by the tests
(kmock) understands it.

`ensure` is the reconcile step for one owned object: create it if missing, merge-patch it if it drifted from
the desired manifest (`plan.patch_for`), else leave it alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlencode

import aiohttp

from ringkv_operator import plan

log = logging.getLogger("ringkv_operator.kube")

MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class Kind:
    api_version: str  # "v1" (core) or "group/version"
    plural: str

    def path(self, namespace: str, name: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        out = f"{base}/namespaces/{quote(namespace, safe='')}/{self.plural}"
        return out if name is None else f"{out}/{quote(name, safe='')}"


CONFIG_MAP = Kind("v1", "configmaps")
SERVICE = Kind("v1", "services")
POD = Kind("v1", "pods")
PVC = Kind("v1", "persistentvolumeclaims")
STATEFULSET = Kind("apps/v1", "statefulsets")
PDB = Kind("policy/v1", "poddisruptionbudgets")
KVCLUSTER = Kind("ringkv.io/v1alpha1", "kvclusters")
SECRET = Kind("v1", "secrets")
CERTIFICATE = Kind("cert-manager.io/v1", "certificates")
KINDS = {"ConfigMap": CONFIG_MAP, "Service": SERVICE, "Pod": POD, "PersistentVolumeClaim": PVC,
         "StatefulSet": STATEFULSET, "PodDisruptionBudget": PDB, "Secret": SECRET, "Certificate": CERTIFICATE}


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, message: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status


def kind_of(obj: Mapping[str, Any]) -> Kind:
    return KINDS[str(obj["kind"])]


def has_labels(obj: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    got = (obj.get("metadata") or {}).get("labels") or {}
    return all(got.get(k) == v for k, v in wanted.items())


class Api:
    def __init__(self, server: str, session: aiohttp.ClientSession, authorization: Callable[[], str | None],
                 ssl_context: ssl.SSLContext | bool,
                 relogin: Callable[[], Awaitable[None]] | None = None) -> None:
        self.server = server.rstrip("/")
        self.session = session
        self._authorization = authorization
        self._ssl = ssl_context
        self._relogin = relogin  # on a 401: load the credentials again (an expired exec/OIDC token), retry once

    async def close(self) -> None:
        await self.session.close()

    async def _request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                       query: Mapping[str, str] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        url = self.server + path + (f"?{urlencode(query)}" if query else "")
        for attempt in (1, 2):
            headers = {"Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = content_type
            token = await asyncio.to_thread(self._authorization)  # may re-read a rotated token file
            if token:
                headers["Authorization"] = token
            async with self.session.request(method, url, data=data, headers=headers, ssl=self._ssl) as response:
                status, text = response.status, await response.text()
            if status == 401 and attempt == 1 and self._relogin is not None:
                await self._relogin()
                continue
            if status >= 400:
                try:
                    message = json.loads(text).get("message") or text
                except ValueError:
                    message = text
                raise ApiError(status, method, path, str(message)[:500])
            return json.loads(text) if text else None
        raise AssertionError("unreachable")

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self._request("GET", kind.path(namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return found

    async def list(self, kind: Kind, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Objects with all of `labels` (the selector is sent, and checked again here)."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        found = await self._request("GET", kind.path(namespace), query={"labelSelector": selector})
        return [item for item in (found or {}).get("items") or [] if has_labels(item, labels)]

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        created: dict[str, Any] = await self._request("POST", kind_of(obj).path(meta["namespace"]), dict(obj))
        return created

    async def patch(self, kind: Kind, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = await self._request("PATCH", kind.path(namespace, name), dict(patch), MERGE_PATCH)
        return patched

    async def patch_status(self, kind: Kind, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        """A merge patch of the status subresource (keys set to None are removed)."""
        patched: dict[str, Any] = await self._request("PATCH", kind.path(namespace, name) + "/status",
                                                      {"status": dict(status)}, MERGE_PATCH)
        return patched

    async def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        """True if it existed."""
        try:
            await self._request("DELETE", kind.path(namespace, name), query={"propagationPolicy": "Background"})
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    async def ensure(self, desired: Mapping[str, Any], live: Mapping[str, Any] | None = None,
                     fetched: bool = False) -> Literal["created", "patched", "unchanged"]:
        """Create or patch one object to match `desired` (`live` when the caller already fetched it)."""
        kind, meta = kind_of(desired), desired["metadata"]
        if not fetched:
            live = await self.get(kind, meta["namespace"], meta["name"])
        if live is None:
            try:
                await self.create(desired)
            except ApiError as e:
                if e.status != 409:  # created meanwhile: patch it below
                    raise
                live = await self.get(kind, meta["namespace"], meta["name"])
            else:
                log.info("created %s %s/%s", desired["kind"], meta["namespace"], meta["name"])
                return "created"
        patch = plan.patch_for(desired, live)
        if patch is None:
            return "unchanged"
        await self.patch(kind, meta["namespace"], meta["name"], patch)
        log.info("patched %s %s/%s", desired["kind"], meta["namespace"], meta["name"])
        return "patched"


def _load_configuration() -> Any:
    """The official client's configuration: in-cluster first, then the kubeconfig (KUBECONFIG or ~/.kube)."""
    from kubernetes import client, config  # imported here: only the credentials loaders are used

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return configuration


async def connect(timeout_s: float = 30.0) -> Api:
    configuration = await asyncio.to_thread(_load_configuration)
    loaded = {"configuration": configuration}

    def authorization() -> str | None:
        configuration = loaded["configuration"]
        token = configuration.get_api_key_with_prefix("BearerToken") \
            or configuration.get_api_key_with_prefix("authorization")
        if token:
            return str(token)
        basic = configuration.get_basic_auth_token() if configuration.username else None
        return str(basic) if basic else None

    ssl_context: ssl.SSLContext | bool = False
    if str(configuration.host).startswith("https"):
        if configuration.verify_ssl:
            ssl_context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        else:
            ssl_context = ssl.create_default_context()
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
        if configuration.cert_file:
            ssl_context.load_cert_chain(configuration.cert_file, configuration.key_file)
    async def relogin() -> None:
        log.info("the API answered 401: loading the credentials again")
        loaded["configuration"] = await asyncio.to_thread(_load_configuration)

    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))
    return Api(str(configuration.host), session, authorization, ssl_context, relogin)
