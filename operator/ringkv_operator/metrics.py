"""The operator's own Prometheus metrics, served over HTTP at /metrics on RINGKV_OPERATOR_METRICS_PORT (8081;
0: not served), apart from kopf's liveness endpoint. Prefix `ringkv_operator_`, base units, `_total` counters,
bounded label values (`namespace` and `name` grow only with the KVClusters, and leave with them):

    ringkv_operator_reconciles_total{result}                  counter    passes that ended: ok, error (a bug, a
                                                                         spec that cannot be built, a status
                                                                         write refused), temporary (retried:
                                                                         kopf.TemporaryError)
    ringkv_operator_reconcile_duration_seconds                histogram  one observation per pass
    ringkv_operator_errors_total{reason}                      counter    one per pass that did not end ok, by
                                                                         cause: REASONS (`reason_of`)
    ringkv_operator_last_reconcile_timestamp_seconds          gauge      Unix time the last ok pass ended
    ringkv_operator_clusters                                  gauge      KVClusters being managed
    ringkv_operator_cluster_phase{namespace,name,phase}       gauge      1 for status.phase, 0 for the other PHASES
    ringkv_operator_operation{namespace,name,kind}            gauge      1 while status.operation is of that kind
                                                                         (ScaleUp, ScaleDown), else 0
    ringkv_operator_cluster_ready_nodes{namespace,name}       gauge      status.readyReplicas
    ringkv_operator_cluster_desired_nodes{namespace,name}     gauge      spec.replicas

The per-cluster series come from the status a pass writes (`observe`) and go when the KVCluster does (`forget`).
One registry per `Metrics` (a test makes its own); the handlers hold the operator's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ringkv_operator import kube, scaling

RESULTS = ("ok", "error", "temporary")
REASONS = ("unauthorized", "forbidden", "not_found", "conflict", "invalid", "unavailable", "unreachable",
           "node_api", "spec", "other")
PHASES = ("Creating", "Running", "Updating", "Scaling", "Degraded", "Failed")  # status.py's
OPERATION_KINDS = (scaling.SCALE_UP, scaling.SCALE_DOWN)
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BY_STATUS = {400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict",
              410: "conflict", 422: "invalid", 429: "unavailable"}


class NodeApiError(aiohttp.ClientError):
    """A node's admin API failed a call the pass needed (an aiohttp.ClientError still, so it is retried)."""


def reason_of(error: BaseException) -> str:
    """The bounded cause of a failed pass: the first Kubernetes API or network error along its causes."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, kube.ApiError):
            return _BY_STATUS.get(seen.status, "unavailable" if seen.status >= 500 else "other")
        if isinstance(seen, NodeApiError):
            return "node_api"
        if isinstance(seen, aiohttp.ClientError | TimeoutError):
            return "unreachable"
        seen = seen.__cause__
    return "other"


@dataclass
class Pass:
    """One pass being recorded; `fail` marks it failed although it returns (a spec that cannot be built)."""

    reason: str | None = None

    def fail(self, reason: str) -> None:
        self.reason = reason


class Metrics:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._monotonic, self._wall = monotonic, wall
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconciles = Counter("ringkv_operator_reconciles", "Reconcile passes that ended, by result",
                                  ["result"], registry=r)
        self.duration = Histogram("ringkv_operator_reconcile_duration_seconds", "Duration of a reconcile pass",
                                  buckets=DURATION_BUCKETS, registry=r)
        self.errors = Counter("ringkv_operator_errors", "Reconcile passes that failed, by cause", ["reason"],
                              registry=r)
        self.last_reconcile = Gauge("ringkv_operator_last_reconcile_timestamp_seconds",
                                    "Unix time the last successful reconcile pass ended", registry=r)
        self.clusters = Gauge("ringkv_operator_clusters", "KVClusters being managed", registry=r)
        self.phase = Gauge("ringkv_operator_cluster_phase", "1 for the KVCluster's status.phase",
                           ["namespace", "name", "phase"], registry=r)
        self.operation = Gauge("ringkv_operator_operation", "1 while a node is being added or removed, by kind",
                               ["namespace", "name", "kind"], registry=r)
        self.ready_nodes = Gauge("ringkv_operator_cluster_ready_nodes", "Nodes ready (status.readyReplicas)",
                                 ["namespace", "name"], registry=r)
        self.desired_nodes = Gauge("ringkv_operator_cluster_desired_nodes", "Nodes asked for (spec.replicas)",
                                   ["namespace", "name"], registry=r)
        for result in RESULTS:
            self.reconciles.labels(result)
        for reason in REASONS:
            self.errors.labels(reason)
        self._managed: set[tuple[str, str]] = set()
        self._phases: dict[tuple[str, str], str] = {}  # the phase last exposed, which may be none of PHASES

    @contextlib.contextmanager
    def reconcile_pass(self) -> Iterator[Pass]:
        """Times and counts the pass run inside; a cancelled one (the operator stopping) is not counted."""
        started, outcome = self._monotonic(), Pass()
        try:
            yield outcome
        except Exception as e:
            self._ended("temporary" if isinstance(e, kopf.TemporaryError) else "error", reason_of(e), started)
            raise
        self._ended("ok" if outcome.reason is None else "error", outcome.reason, started)

    def _ended(self, result: str, reason: str | None, started: float) -> None:
        self.duration.observe(max(0.0, self._monotonic() - started))
        self.reconciles.labels(result).inc()
        if reason is not None:
            self.errors.labels(reason if reason in REASONS else "other").inc()
        if result == "ok":
            self.last_reconcile.set(self._wall())

    def manage(self, namespace: str, name: str) -> None:
        self._managed.add((namespace, name))
        self.clusters.set(len(self._managed))

    def observe(self, namespace: str, name: str, status: Mapping[str, Any], desired: int | None) -> None:
        """The cluster's series from the status its pass wrote (`desired` None: the spec could not be read)."""
        self.manage(namespace, name)
        phase = str(status.get("phase") or "")
        before = self._phases.get((namespace, name))
        if before is not None and before != phase and before not in PHASES:
            self.phase.remove(namespace, name, before)
        if phase:
            for p in {*PHASES, phase}:
                self.phase.labels(namespace, name, p).set(1 if p == phase else 0)
            self._phases[(namespace, name)] = phase
        op = status.get("operation")
        kind = str(op.get("kind")) if isinstance(op, Mapping) else None
        for k in OPERATION_KINDS:
            self.operation.labels(namespace, name, k).set(1 if k == kind else 0)
        ready = status.get("readyReplicas")
        if isinstance(ready, int):
            self.ready_nodes.labels(namespace, name).set(ready)
        if desired is None:
            self.desired_nodes.remove(namespace, name)
        else:
            self.desired_nodes.labels(namespace, name).set(desired)

    def forget(self, namespace: str, name: str) -> None:
        """Every series of a KVCluster that is gone."""
        self._managed.discard((namespace, name))
        self.clusters.set(len(self._managed))
        phase = self._phases.pop((namespace, name), None)
        for p in {*PHASES, *([phase] if phase else [])}:
            self.phase.remove(namespace, name, p)
        for k in OPERATION_KINDS:
            self.operation.remove(namespace, name, k)
        self.ready_nodes.remove(namespace, name)
        self.desired_nodes.remove(namespace, name)


# -- the endpoint -------------------------------------------------------------------------------------------------

METRICS_KEY = web.AppKey("metrics", Metrics)


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def app(metrics: Metrics) -> web.Application:
    out = web.Application()
    out[METRICS_KEY] = metrics
    out.router.add_get("/metrics", _metrics)
    return out


@dataclass(frozen=True)
class Server:
    runner: web.AppRunner

    @property
    def port(self) -> int:
        """The port bound (the one asked for, or the system's pick for 0)."""
        return int(self.runner.addresses[0][1])

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve(metrics: Metrics, port: int, host: str | None = None) -> Server:
    """/metrics on the running loop, every interface unless `host`; `close` stops it."""
    runner = web.AppRunner(app(metrics), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return Server(runner)
