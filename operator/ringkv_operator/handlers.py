"""The kopf handlers of KVClusters: `kopf run -m ringkv_operator.handlers --all-namespaces --standalone
--liveness=http://0.0.0.0:8080/healthz` (the chart's Deployment).

Every KVCluster has a daemon that runs the same pass again and again (every second while a node is being added
or removed, every RESYNC_SECONDS otherwise); creation, a spec change and an operator restart run it at once.
One pass at a time per cluster (a lock). A pass is idempotent and driven by what it observes:

    1. read the KVCluster afresh (its status holds the operation in flight); annotated ringkv.io/paused "true":
       write the Paused condition and touch nothing else; parse its spec (a spec that cannot be built: phase
       Failed, nothing touched);
    2. read the StatefulSets, pods and volume claims (only objects whose ownerReferences carry the KVCluster's
       uid are its own: another's of the same name is left alone and reported, ReconcileError ForeignObject);
       when the size moves (or drifted), ask every node how it sees itself and the ring (`nodeapi.observe`);
    3. let the scaling policy decide (`scaling.step`), write the status it returns (the operation, the sizes
       stood by), and only then do what it asks: POST a decommission, mark or delete a claim;
    4. create or patch the ConfigMap, the Services, the PodDisruptionBudget, then the StatefulSets: their sizes
       as the policy says, their templates in rollout order (`plan.rollout`) when no size change is under way,
       a new template with its partition at the StatefulSet's size; the node image pinned (`plan.node_image`);
    5. a rollout under way: lower one StatefulSet's partition by a pod once the pods above it are ready on the
       new template and the nodes say the ring is healthy (`plan.advance`, `plan.ring_gate`);
    6. write the rest of the status (`status.compute`) and the events of the pass.

A pass the Kubernetes API refuses (403, 422, ...) writes the API's message into the ReconcileError condition
and is retried; the next pass that succeeds sets it False again.

Every pass is counted and timed, and the status it writes exposed, by `metrics` (served on its own port).

Deletion removes what the cluster owns (Kubernetes' garbage collector would too) and, with
spec.storage.deletionPolicy Delete, the nodes' PersistentVolumeClaims.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import kopf

from ringkv_operator import credentials, kube, metrics, nodeapi, placement, plan, resources, scaling, status
from ringkv_operator import rollout as rollouts
from ringkv_operator import settings as operator_settings
from ringkv_operator import spec as specmod

SETTINGS = operator_settings.from_env(os.environ)
METRICS = metrics.Metrics()
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


@kopf.on.startup()
async def serve_metrics(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    if SETTINGS.metrics_port and "metrics" not in memo:
        memo["metrics"] = await metrics.serve(METRICS, SETTINGS.metrics_port)
        logger.info("metrics at :%d/metrics", SETTINGS.metrics_port)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    for key in ("metrics", "api", "http"):
        client = memo.pop(key, None)
        if client is not None:
            await client.close()


@kopf.on.probe(id="reconciler")
def reconciler_probe(**_: Any) -> dict[str, float]:
    """Shown by the liveness endpoint: when the operator started and last completed a reconcile pass."""
    return dict(_health)


# -- KVClusters --------------------------------------------------------------------------------------------------

FAST_SECONDS = 1.0  # between passes while the size moves
_locks: dict[str, asyncio.Lock] = {}


def _lock(body: kopf.Body) -> asyncio.Lock:
    return _locks.setdefault(str(body.metadata.get("uid") or body.metadata.get("name")), asyncio.Lock())


@kopf.on.create(*KVCLUSTERS)
@kopf.on.update(*KVCLUSTERS)
@kopf.on.resume(*KVCLUSTERS)
async def reconcile_on_change(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    async with _lock(body):
        await reconcile(body, memo, logger)


@kopf.daemon(*KVCLUSTERS, initial_delay=FAST_SECONDS, cancellation_timeout=30.0)
async def run_cluster(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, stopped: kopf.DaemonStopped,
                      **_: Any) -> None:
    """The cluster's loop: a pass, then a pause (short while the size moves)."""
    METRICS.manage(str(body.metadata.get("namespace")), str(body.metadata.get("name")))
    while not stopped:
        delay = SETTINGS.resync_seconds
        if not body.metadata.get("deletionTimestamp"):
            try:
                async with _lock(body):
                    delay = await reconcile(body, memo, logger, lambda: bool(stopped))
            except kopf.TemporaryError as e:
                logger.warning("%s", e)
                delay = min(SETTINGS.resync_seconds, RETRY_SECONDS)
            except Exception:
                logger.exception("reconcile pass failed")
                delay = RETRY_SECONDS
        await stopped.wait(delay)
    _locks.pop(str(body.metadata.get("uid") or body.metadata.get("name")), None)
    METRICS.forget(str(body.metadata.get("namespace")), str(body.metadata.get("name")))


@kopf.on.delete(*KVCLUSTERS)
async def delete(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    name, namespace = str(body.metadata.get("name")), str(body.metadata.get("namespace"))
    uid = str(body.metadata.get("uid") or "")
    METRICS.forget(namespace, name)
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


class _Foreign(Exception):
    """An object the cluster cannot do without has its name and is not its own: the pass stops there."""


async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger,
                    stopping: Callable[[], bool] = lambda: False) -> float:
    """One pass, counted and timed; the seconds until the next one."""
    with METRICS.reconcile_pass() as recorded:
        return await _pass(body, memo, logger, stopping, recorded)


async def _pass(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, stopping: Callable[[], bool],
                recorded: metrics.Pass) -> float:
    api = _api(memo)
    name, namespace = str(body.metadata.get("name")), str(body.metadata.get("namespace"))
    try:
        fresh = await api.get(kube.KVCLUSTER, namespace, name)
    except (kube.ApiError, aiohttp.ClientError, TimeoutError) as e:
        raise kopf.TemporaryError(f"reading the KVCluster failed, will retry: {e}", delay=RETRY_SECONDS) from e
    if fresh is None or (fresh.get("metadata") or {}).get("deletionTimestamp") or stopping():
        return SETTINGS.resync_seconds
    previous: Mapping[str, Any] = dict(fresh.get("status") or {})
    generation = (fresh.get("metadata") or {}).get("generation")
    if status.is_paused(fresh):
        await _hold(body, api, namespace, name, previous, generation, logger)
        return SETTINGS.resync_seconds
    try:
        cluster = specmod.parse(fresh)
    except specmod.SpecError as e:
        failed = status.failed(str(e), previous, generation, _now())
        if status.changed(failed, previous):  # logged (and so posted as an event) once, not every pass
            logger.error("KVCluster cannot be built: %s", e)
            await api.patch_status(kube.KVCLUSTER, namespace, name, failed)
        recorded.fail("spec")
        METRICS.observe(namespace, name, {**previous, **failed}, None)
        return SETTINGS.resync_seconds
    annotations = dict((fresh.get("metadata") or {}).get("annotations") or {})
    try:
        new, delay = await _reconcile(cluster, annotations, body, previous, memo, logger, stopping)
    except _Stopping:
        logger.debug("reconcile pass abandoned: the KVCluster is being deleted")
        return SETTINGS.resync_seconds
    except _Foreign as e:
        await _report(api, cluster, previous, "ForeignObject", status.foreign_message([str(e)]), body, logger)
        return SETTINGS.resync_seconds
    except kube.ApiError as e:
        await _report(api, cluster, previous, status.api_error_reason(e.status, str(e)), str(e), body, logger)
        raise kopf.TemporaryError(f"reconcile failed, will retry: {e}", delay=RETRY_SECONDS) from e
    except (aiohttp.ClientError, TimeoutError) as e:
        raise kopf.TemporaryError(f"reconcile failed, will retry: {e}", delay=RETRY_SECONDS) from e
    _post_events(body, new, previous, logger)
    if status.changed(new, previous):
        await api.patch_status(kube.KVCLUSTER, namespace, name, new)
    METRICS.observe(namespace, name, {**previous, **new}, cluster.replicas)
    _health["last_reconcile"] = time.time()
    return delay


def _post_events(body: kopf.Body, new: Mapping[str, Any], previous: Mapping[str, Any],
                 logger: kopf.Logger) -> None:
    """The events of conditions that change in this pass: once, when they start (they stay while they last)."""
    refusal = status.newly_true(new, previous, "ScalingRefused")
    if refusal is not None:
        logger.info("size change refused: %s", refusal)
        kopf.event(body, type="Warning", reason="ScalingRefused", message=refusal)
    stuck = status.stuck_message(new)
    if stuck and not status.stuck_message(previous):
        logger.warning("rollout stuck: %s", stuck)
        kopf.event(body, type="Warning", reason="RolloutStuck", message=stuck)
    error = status.newly_true(new, previous, "ReconcileError")
    if error is not None:
        reason = str(status.find(new.get("conditions") or [], "ReconcileError").get("reason", "ReconcileError"))
        logger.warning("%s: %s", reason, error)
        kopf.event(body, type="Warning", reason=reason, message=error)
    if status.find(previous.get("conditions") or [], "Paused").get("status") == "True":
        logger.info("resumed: %s is no longer \"true\"", status.PAUSED_ANNOTATION)
        kopf.event(body, type="Normal", reason="Resumed",
                   message=f"{status.PAUSED_ANNOTATION} removed: reconciling the cluster again")


async def _hold(body: kopf.Body, api: kube.Api, namespace: str, name: str, previous: Mapping[str, Any],
                generation: int | None, logger: kopf.Logger) -> None:
    """A paused KVCluster: nothing of it is touched; the Paused condition (and an event) says so."""
    held = status.paused(previous, generation, _now())
    message = status.newly_true(held, previous, "Paused")
    if message is not None:
        logger.info("paused: %s", message)
        kopf.event(body, type="Normal", reason="Paused", message=message)
    if status.changed(held, previous):
        try:
            await api.patch_status(kube.KVCLUSTER, namespace, name, held)
        except (kube.ApiError, aiohttp.ClientError, TimeoutError) as e:
            raise kopf.TemporaryError(f"writing the Paused condition failed, will retry: {e}",
                                      delay=RETRY_SECONDS) from e


async def _report(api: kube.Api, cluster: specmod.ClusterSpec, previous: Mapping[str, Any], reason: str,
                  message: str, body: kopf.Body, logger: kopf.Logger) -> None:
    """A pass that could not finish: the ReconcileError condition says why (the API's own message)."""
    failed = status.reconcile_error(previous, reason, message, cluster.generation, _now())
    if status.newly_true(failed, previous, "ReconcileError") is not None and reason == "ForeignObject":
        logger.warning("%s: %s", reason, message)  # an API error is logged by the caller's retry
        kopf.event(body, type="Warning", reason=reason, message=message)
    if not status.changed(failed, previous):
        return
    try:
        await api.patch_status(kube.KVCLUSTER, cluster.namespace, cluster.name, failed)
    except (kube.ApiError, aiohttp.ClientError, TimeoutError) as e:
        logger.warning("writing the ReconcileError condition failed too: %s", e)


def _claims(name: str, claims: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    out = {}
    for claim in plan.volume_claims(name, claims):
        meta = claim.get("metadata") or {}
        notes = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
        if meta.get("deletionTimestamp"):
            notes[scaling.TERMINATING] = str(meta["deletionTimestamp"])
        out[str(meta["name"])] = notes
    return out


def _rack_of(live_sets: list[dict[str, Any]]) -> dict[str, str | None]:
    return {str(s["metadata"]["name"]): (s["metadata"].get("labels") or {}).get(plan.RACK_LABEL) for s in live_sets}


def _live_image(live_sets: list[dict[str, Any]]) -> str | None:
    return next((i for s in live_sets if (i := plan.container_image(s, resources.CONTAINER))), None)


def _recorded_image(previous: Mapping[str, Any]) -> str | None:
    return str(previous["nodeImage"]) if previous.get("nodeImage") else None


def _image(cluster: specmod.ClusterSpec, annotations: Mapping[str, str], previous: Mapping[str, Any],
           live_sets: list[dict[str, Any]]) -> str:
    upgrade = str(annotations.get(plan.UPGRADE_IMAGE_ANNOTATION, "")).strip().lower() == "true"
    return plan.node_image(cluster.image, _recorded_image(previous), _live_image(live_sets), SETTINGS.node_image,
                           upgrade)


async def _reconcile(cluster: specmod.ClusterSpec, annotations: Mapping[str, str], body: kopf.Body,
                     previous: Mapping[str, Any], memo: kopf.Memo, logger: kopf.Logger,
                     stopping: Callable[[], bool]) -> tuple[dict[str, Any], float]:
    foreign: list[str] = []

    async def ensure(desired: Mapping[str, Any], live: Mapping[str, Any] | None = None,
                     fetched: bool = False) -> bool:
        """Create or patch one of the cluster's objects; False (noted in `foreign`) when the object of that
        name is not the cluster's: it is left alone."""
        if stopping():
            raise _Stopping
        obj_name = str(desired["metadata"]["name"])
        if not fetched or live is None:  # not among the cluster's: is it someone else's?
            live = await api.get(kube.kind_of(desired), namespace, obj_name)
        if live is not None and not _owned_by(live, cluster):
            foreign.append(f"{desired['kind']} {obj_name}")
            return False
        await api.ensure(desired, live, fetched=True)
        return True

    api, http, namespace = _api(memo), _http(memo), cluster.namespace
    headers = await _ensure_security(cluster, api, body, logger, ensure)
    pod_labels = resources.selector_labels(cluster)
    live_sets = [s for s in await api.list(kube.STATEFULSET, namespace, pod_labels) if _owned_by(s, cluster)]
    live = {str(s["metadata"]["name"]): int((s.get("spec") or {}).get("replicas", 1)) for s in live_sets}
    pods = sorted(await api.list(kube.POD, namespace, pod_labels), key=lambda p: str(p["metadata"]["name"]))
    running = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    claims = _claims(cluster.name, await api.list(kube.PVC, namespace, resources.claim_labels(cluster.name)))
    recorded = previous.get("statefulSets")
    committed = dict(recorded) if isinstance(recorded, dict) else scaling.initial_committed(cluster, live)
    placed = previous.get("placement") if isinstance(previous.get("placement"), dict) else None
    placed_now = placement.record(cluster, placed, {r for r in _rack_of(live_sets).values() if r})
    image = _image(cluster, annotations, previous, live_sets)
    cluster = dataclasses.replace(cluster, seed_pods=tuple(placed_now["seeds"]), image=image)
    zones = dict(placed_now["racks"])
    rack_of = _rack_of(live_sets)
    operation = previous.get("operation") if isinstance(previous.get("operation"), dict) else None
    target = previous.get("target") if isinstance(previous.get("target"), dict) else None

    # What the StatefulSets would be at the committed sizes: does the spec change their pods' template? (The pod
    # template's hash only: a StatefulSet's other fields, such as its claim retention, are not the pods'.)
    current = resources.statefulsets(cluster, scaling.shape_of(cluster, committed, rack_of, zones), SETTINGS)
    by_name = {str(s["metadata"]["name"]): s for s in live_sets}
    template_changed = any(plan.template_hash(d) != plan.template_hash(by_name[d["metadata"]["name"]])
                           for d in current if d["metadata"]["name"] in by_name)

    wanted = scaling.wanted_sizes(cluster)
    nodes: dict[str, scaling.NodeView] = {}
    if operation or committed != wanted or any(live.get(n, 0) > committed.get(n, 0) for n in live):
        leaving = frozenset({str(operation["node"])} if operation and operation.get("kind") == scaling.SCALE_DOWN
                            else ())
        nodes = await nodeapi.observe(http, _urls(cluster, running), SETTINGS.http_timeout_seconds, leaving,
                                      headers)
    step = scaling.step(scaling.Inputs(
        cluster, committed, live, {str(p["metadata"]["name"]): plan.pod_ready(p) for p in pods}, claims,
        operation, nodes, _now(), template_changed, target, placement.violation(placed, cluster), rack_of, zones))

    # The operation and the sizes stood by are written before anything they lead to is done.
    scale_status: dict[str, Any] = {"statefulSets": step.committed, "size": sum(step.committed.values()),
                                    "operation": step.operation, "target": step.target, "placement": placed_now}
    if step.finished is not None:
        scale_status["lastOperation"] = step.finished
    if any(previous.get(k) != v for k, v in scale_status.items()):
        if stopping():
            raise _Stopping
        await api.patch_status(kube.KVCLUSTER, namespace, cluster.name, _merge(scale_status, previous))
    for event in step.events:
        logger.info("%s: %s", event.reason, event.message)
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    await _act(step, cluster, running, set(by_name), memo, logger, headers)

    shape = scaling.shape_of(cluster, step.replicas, rack_of, zones)
    wanted_sets = resources.statefulsets(cluster, shape, SETTINGS)
    for obj in resources.all_objects(cluster, shape, SETTINGS):
        if obj["kind"] == "StatefulSet":
            continue
        # New pods read the ConfigMap: while the size moves or a change is refused, it stays what they run with.
        if obj["kind"] == "ConfigMap" and not step.rollout_allowed:
            found = await api.get(kube.CONFIG_MAP, namespace, obj["metadata"]["name"])
            if found is not None:
                if not _owned_by(found, cluster):
                    foreign.append(f"ConfigMap {obj['metadata']['name']}")
                continue
        await ensure(obj)
    # The nodes would read someone else's ConfigMap, or answer to someone else's Services: no StatefulSet is
    # created or changed while one of those is not the cluster's.
    blocked = bool(foreign)
    pairs = [(s, by_name.get(s["metadata"]["name"])) for s in wanted_sets]
    go = [] if blocked else plan.rollout(pairs, pods) if step.rollout_allowed \
        else [d["metadata"]["name"] for d, lv in pairs if lv is None]
    applied: list[Mapping[str, Any]] = []  # the StatefulSets as they are after this pass
    for desired, current_sts in pairs:
        sts_name = desired["metadata"]["name"]
        if sts_name in go:
            held = plan.with_partition(desired, plan.partition_for(desired, current_sts))
            if await ensure(held, current_sts, fetched=True):
                applied.append(held)
            continue
        if current_sts is None:
            continue
        applied.append(current_sts)
        if not blocked and live.get(sts_name) != step.replicas.get(sts_name):
            if stopping():
                raise _Stopping
            await api.patch(kube.STATEFULSET, namespace, sts_name, {"spec": {"replicas": step.replicas[sts_name]}})
            logger.info("StatefulSet %s: %d -> %d replicas", sts_name, live.get(sts_name), step.replicas[sts_name])
    pending = [d["metadata"]["name"] for d, lv in pairs
               if d["metadata"]["name"] not in go and plan.patch_for(d, lv) is not None]
    rollout = None
    if step.rollout_allowed and not blocked:  # the next pod of a rollout, once the ring lets it
        rollout, rolled = await rollouts.step(api, http, cluster, applied, pods, step.committed,
                                              previous.get("rollout"), headers, _now(), SETTINGS)
        for event in rolled:
            logger.info("%s: %s", event.reason, event.message)
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)

    ready = [p for p in running if plan.pod_ready(p)]
    members, error = await nodeapi.members(http, list(_urls(cluster, ready).values()),
                                           SETTINGS.http_timeout_seconds, headers)
    agreed = await nodeapi.ring_agreed(http, list(_urls(cluster, ready).values()), SETTINGS.http_timeout_seconds,
                                       headers) if members is not None else None
    now = _now()
    observed = status.Observed(statefulsets=applied, pods=pods, members=members, members_error=error,
                               pending_rollout=pending, step=step, rollout=rollout,
                               stuck=plan.stuck(rollout, now, SETTINGS.rollout_deadline_seconds), foreign=foreign,
                               ring_agreed=agreed)
    decision = plan.Decision(scaling.shape_of(cluster, step.committed, rack_of))
    new = status.compute(cluster, decision, observed, {**previous, **scale_status}, now)
    new["placement"] = scale_status["placement"]
    new["nodeImage"] = plan.image_in_use(image, [plan.container_image(s, resources.CONTAINER) for s in applied],
                                         _recorded_image(previous), _live_image(live_sets))
    moving = step.operation is not None or step.target is not None or rollout is not None
    return _merge(new, {**previous, **scale_status}), FAST_SECONDS if moving else SETTINGS.resync_seconds


def _urls(cluster: specmod.ClusterSpec, pods: list[dict[str, Any]]) -> dict[str, str]:
    return nodeapi.urls_by_pod(SETTINGS.node_url_template, pods, resources.peer_service_name(cluster.name))


def _merge(new: Mapping[str, Any], previous: Mapping[str, Any]) -> dict[str, Any]:
    """`new` as a merge patch over `previous`: keys of the maps it replaces that are gone are set to None (a
    merge patch leaves out keys alone), so a deleted StatefulSet leaves status.statefulSets."""
    out = dict(new)
    for key in ("statefulSets", "target"):
        before, after = previous.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            out[key] = {**{k: None for k in before if k not in after}, **after}
    before, after = previous.get("placement"), new.get("placement")
    if isinstance(before, dict) and isinstance(after, dict) and isinstance(before.get("racks"), dict):
        racks = after.get("racks") or {}
        out["placement"] = {**after, "racks": {**{k: None for k in before["racks"] if k not in racks}, **racks}}
    return out


async def _ensure_security(cluster: specmod.ClusterSpec, api: kube.Api, body: kopf.Body, logger: kopf.Logger,
                           ensure: Callable[[Mapping[str, Any]], Awaitable[bool]]) -> dict[str, str]:
    """The cluster's Secrets (CA, node certificate, tokens) made, renewed or left alone; the admin headers."""
    if not cluster.secure:
        return {}
    names = [resources.tokens_secret_name(cluster.name), resources.admin_token_secret_name(cluster.name),
             resources.ca_secret_name(cluster.name), resources.node_tls_secret_name(cluster.name)]
    live: dict[str, dict[str, bytes] | None] = {}
    for name in names:
        found = await api.get(kube.SECRET, cluster.namespace, name)
        cert_managers = cluster.security == "cert-manager" and name == resources.node_tls_secret_name(cluster.name)
        if found is not None and not cert_managers and not _owned_by(found, cluster):
            raise _Foreign(f"Secret {name}")
        live[name] = None if found is None else {k: base64.b64decode(v) for k, v in (found.get("data") or {}).items()}
    decided = credentials.desired(cluster, live, datetime.datetime.now(datetime.UTC))
    for obj in decided.objects:
        if not await ensure(obj):
            raise _Foreign(f"{obj['kind']} {obj['metadata']['name']}")
    for change in decided.changes:
        logger.info("%s: %s", cluster.name, change)
        kopf.event(body, type="Normal", reason="Certificates", message=change)
    return decided.headers()


async def _act(step: scaling.Step, cluster: specmod.ClusterSpec, running: list[dict[str, Any]],
               owned_sets: set[str], memo: kopf.Memo, logger: kopf.Logger, headers: Mapping[str, str]) -> None:
    api, http, namespace = _api(memo), _http(memo), cluster.namespace
    for action in step.actions:
        if action.kind == "decommission":
            pod = next((p for p in running if p["metadata"]["name"] == action.name), None)
            if pod is None:
                continue
            [url] = nodeapi.node_urls(SETTINGS.node_url_template, [pod], resources.peer_service_name(cluster.name))
            try:
                code, answer = await nodeapi.decommission(http, url, SETTINGS.http_timeout_seconds, headers)
            except (aiohttp.ClientError, TimeoutError) as e:
                raise metrics.NodeApiError(f"decommission of {action.name}: {e!r}") from e
            if code in (200, 202):
                logger.info("decommission of %s: %s", action.name, (answer or {}).get("id"))
            else:
                logger.warning("decommission of %s refused (%s): %s", action.name, code, answer)
        elif action.kind == "mark_claim":
            await api.patch(kube.PVC, namespace, action.name,
                            {"metadata": {"annotations": {scaling.DECOMMISSIONED_ANNOTATION: _now()}}})
            logger.info("PersistentVolumeClaim %s marked decommissioned", action.name)
        elif action.kind == "delete_claim":
            await api.delete(kube.PVC, namespace, action.name)
            logger.info("deleted PersistentVolumeClaim %s", action.name)
        elif action.kind == "delete_statefulset":
            if action.name not in owned_sets:  # re-checked: only a StatefulSet the cluster owns is deleted
                logger.warning("StatefulSet %s is not this KVCluster's: not deleted", action.name)
                continue
            await api.delete(kube.STATEFULSET, namespace, action.name)
            logger.info("deleted StatefulSet %s (its rack left the spec)", action.name)


def _owned_by(obj: Mapping[str, Any], cluster: specmod.ClusterSpec) -> bool:
    return plan.owned_by(obj, cluster.uid)
