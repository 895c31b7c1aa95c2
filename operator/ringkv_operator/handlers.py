"""The kopf handlers of KVClusters: `kopf run -m ringkv_operator.handlers --all-namespaces --standalone
--liveness=http://0.0.0.0:8080/healthz` (the chart's Deployment).

Every handler is the same short procedure, idempotent and driven by what it observes, so creation, a spec
change, an operator restart (resume) and the periodic resync (timer) all converge on the same state:

    1. parse the spec (a spec that cannot be built: phase Failed, nothing touched);
    2. read the cluster's live StatefulSets and decide the shape (a size change is refused, `plan.decide`);
    3. create or patch the ConfigMap, the Services, the PodDisruptionBudget, then the StatefulSets in rollout
       order (`plan.rollout`);
    4. read the pods and ask one ready node for the ring's members; write the status (`status.compute`).

Deletion removes what the cluster owns (Kubernetes' garbage collector would too) and, with
spec.storage.deletionPolicy Delete, the nodes' PersistentVolumeClaims.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import kopf

from ringkv_operator import kube, nodeapi, plan, resources, status
from ringkv_operator import settings as operator_settings
from ringkv_operator import spec as specmod

SETTINGS = operator_settings.from_env(os.environ)
KVCLUSTERS = (specmod.API_GROUP, specmod.API_VERSION, specmod.PLURAL)
FINALIZER = "ringkv.io/finalizer"
RETRY_SECONDS = 10.0
_health: dict[str, float] = {"started": time.time(), "last_reconcile": 0.0}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _api(memo: kopf.Memo) -> kube.Api:
    api = memo.get("api")
    if not isinstance(api, kube.Api):
        raise kopf.TemporaryError("the Kubernetes API client is not connected yet", delay=RETRY_SECONDS)
    return api


def _http(memo: kopf.Memo) -> aiohttp.ClientSession:
    session = memo.get("http")
    if not isinstance(session, aiohttp.ClientSession):
        raise kopf.TemporaryError("the HTTP client is not started yet", delay=RETRY_SECONDS)
    return session


# -- operator lifecycle ------------------------------------------------------------------------------------------


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    # kopf keeps its bookkeeping in our own annotations: the CRD's status schema has no room for kopf's.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="ringkv.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="ringkv.io")
    settings.posting.level = logging.WARNING  # Kubernetes events for warnings and errors only
    # A deleted KVCluster keeps its finalizer until its timer has exited: check for that every second, not 60.
    settings.background.cancellation_polling = 1.0
    memo["api"] = await kube.connect()
    memo["http"] = aiohttp.ClientSession()
    logger.info("ringkv operator: %s", SETTINGS)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    for key in ("api", "http"):
        client = memo.pop(key, None)
        if client is not None:
            await client.close()


@kopf.on.probe(id="reconciler")
def reconciler_probe(**_: Any) -> dict[str, float]:
    """Shown by the liveness endpoint: when the operator started and last completed a reconcile pass."""
    return dict(_health)


# -- KVClusters --------------------------------------------------------------------------------------------------


@kopf.on.create(*KVCLUSTERS)
@kopf.on.update(*KVCLUSTERS)
@kopf.on.resume(*KVCLUSTERS)
async def reconcile_on_change(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger,
                              **_: Any) -> None:
    await reconcile(body, patch, memo, logger)


@kopf.timer(*KVCLUSTERS, interval=SETTINGS.resync_seconds, initial_delay=SETTINGS.resync_seconds)
async def resync(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    # Deletion stops the timer while its delete handler runs: a pass in flight must not build anything again.
    stopped = kwargs.get("stopped")  # kopf.DaemonStopped, true once kopf asks the timer to stop

    def stopping() -> bool:
        return bool(stopped) or bool(body.metadata.get("deletionTimestamp"))

    if not stopping():
        await reconcile(body, patch, memo, logger, stopping)


@kopf.on.delete(*KVCLUSTERS)
async def delete(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    name, namespace = str(body.metadata.get("name")), str(body.metadata.get("namespace"))
    uid = str(body.metadata.get("uid") or "")
    api = _api(memo)
    try:
        for kind in (kube.STATEFULSET, kube.PDB, kube.SERVICE, kube.CONFIG_MAP):
            for obj in plan.owned(await api.list(kind, namespace, resources.owned_labels(name)), uid):
                await api.delete(kind, namespace, obj["metadata"]["name"])
                logger.info("deleted %s %s", kind.plural, obj["metadata"]["name"])
        policy = ((body.get("spec") or {}).get("storage") or {}).get("deletionPolicy", "Retain")
        if policy == "Delete":
            claims = await api.list(kube.PVC, namespace, resources.claim_labels(name))
            for claim in plan.volume_claims(name, claims):
                await api.delete(kube.PVC, namespace, claim["metadata"]["name"])
                logger.info("deleted PersistentVolumeClaim %s (deletionPolicy Delete)", claim["metadata"]["name"])
        else:
            logger.info("PersistentVolumeClaims of %s kept (deletionPolicy %s)", name, policy)
    except (kube.ApiError, aiohttp.ClientError, TimeoutError) as e:
        raise kopf.TemporaryError(f"cleanup failed, will retry: {e}", delay=RETRY_SECONDS) from e


class _Stopping(Exception):
    """The KVCluster is being deleted: the pass ends without writing anything more."""


async def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger,
                    stopping: Callable[[], bool] = lambda: False) -> None:
    previous: Mapping[str, Any] = dict(body.get("status") or {})
    raw = {"metadata": dict(body.metadata), "spec": dict(body.spec)}
    try:
        cluster = specmod.parse(raw)
    except specmod.SpecError as e:
        failed = status.failed(str(e), previous, body.metadata.get("generation"), _now())
        if status.changed(failed, previous):  # logged (and so posted as an event) once, not every resync
            logger.error("KVCluster cannot be built: %s", e)
        _write_status(patch, failed, previous)
        return
    try:
        new = await _reconcile(cluster, previous, memo, stopping)
    except _Stopping:
        logger.debug("reconcile pass abandoned: the KVCluster is being deleted")
        return
    except (kube.ApiError, aiohttp.ClientError, TimeoutError) as e:
        raise kopf.TemporaryError(f"reconcile failed, will retry: {e}", delay=RETRY_SECONDS) from e
    refusal = status.newly_true(new, previous, "ScalingRefused")
    if refusal is not None:  # once, when it starts; the condition stays while it lasts
        logger.info("size change refused: %s", refusal)
        kopf.warn(body, reason="ScalingRefused", message=refusal)
    _write_status(patch, new, previous)
    _health["last_reconcile"] = time.time()


async def _reconcile(cluster: specmod.ClusterSpec, previous: Mapping[str, Any], memo: kopf.Memo,
                     stopping: Callable[[], bool]) -> dict[str, Any]:
    async def ensure(desired: Mapping[str, Any], live: Mapping[str, Any] | None = None,
                     fetched: bool = False) -> None:
        if stopping():
            raise _Stopping
        await api.ensure(desired, live, fetched)

    api, namespace = _api(memo), cluster.namespace
    pod_labels = resources.selector_labels(cluster)
    live_sets = [s for s in await api.list(kube.STATEFULSET, namespace, pod_labels)
                 if _owned_by(s, cluster)]
    decision = plan.decide(cluster, live_sets)

    wanted_sets = resources.statefulsets(cluster, decision.shape, SETTINGS)
    for obj in resources.all_objects(cluster, decision.shape, SETTINGS):
        if obj["kind"] != "StatefulSet":
            await ensure(obj)
    live_by_name = {s["metadata"]["name"]: s for s in live_sets}
    pairs = [(s, live_by_name.get(s["metadata"]["name"])) for s in wanted_sets]
    pods = sorted(await api.list(kube.POD, namespace, pod_labels), key=lambda p: str(p["metadata"]["name"]))
    go = plan.rollout(pairs, pods)
    for desired, live in pairs:
        if desired["metadata"]["name"] in go:
            await ensure(desired, live, fetched=True)
    pending = [d["metadata"]["name"] for d, live in pairs
               if d["metadata"]["name"] not in go and plan.patch_for(d, live) is not None]

    ready = [p for p in pods if plan.pod_ready(p)]
    urls = nodeapi.node_urls(SETTINGS.node_url_template, ready, resources.peer_service_name(cluster.name))
    members, error = await nodeapi.members(_http(memo), urls, SETTINGS.http_timeout_seconds)
    # what the StatefulSets look like now: the status compares their templates with the pods'
    applied = [desired if live is None or desired["metadata"]["name"] in go else live for desired, live in pairs]
    observed = status.Observed(statefulsets=applied, pods=pods, members=members, members_error=error,
                               pending_rollout=pending)
    return status.compute(cluster, decision, observed, previous, _now())


def _owned_by(obj: Mapping[str, Any], cluster: specmod.ClusterSpec) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("kind") == specmod.KIND and r.get("name") == cluster.name for r in refs)


def _write_status(patch: kopf.Patch, new: Mapping[str, Any], previous: Mapping[str, Any]) -> None:
    if status.changed(new, previous):
        for key, value in new.items():
            patch.status[key] = value
