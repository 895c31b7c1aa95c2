from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ringkv_operator import handlers, kube, metrics
from tests.unit.operator import samples

Sample = tuple[str, frozenset[tuple[str, str]]]


def exposed(m: metrics.Metrics) -> dict[Sample, float]:
    """Every sample of the exposition text, as a scraper reads it."""
    text = generate_latest(m.registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(m: metrics.Metrics, metric: str, /, **labels: str) -> float | None:
    return exposed(m).get((metric, frozenset(labels.items())))


def cluster_series(m: metrics.Metrics, namespace: str = "db", name: str = "demo") -> set[Sample]:
    return {s for s in exposed(m) if ("namespace", namespace) in s[1] and ("name", name) in s[1]}


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_an_ok_pass_is_counted_timed_and_stamped() -> None:
    clock = Clock()
    m = metrics.Metrics(monotonic=clock, wall=lambda: 1_700_000_000.0)
    assert value(m, "ringkv_operator_reconciles_total", result="ok") == 0  # exposed before the first pass
    assert value(m, "ringkv_operator_last_reconcile_timestamp_seconds") == 0
    with m.reconcile_pass():
        clock.t += 0.3
    assert value(m, "ringkv_operator_reconciles_total", result="ok") == 1
    assert value(m, "ringkv_operator_reconciles_total", result="error") == 0
    assert value(m, "ringkv_operator_reconcile_duration_seconds_count") == 1
    assert value(m, "ringkv_operator_reconcile_duration_seconds_sum") == pytest.approx(0.3)
    assert value(m, "ringkv_operator_reconcile_duration_seconds_bucket", le="0.25") == 0
    assert value(m, "ringkv_operator_reconcile_duration_seconds_bucket", le="0.5") == 1
    assert value(m, "ringkv_operator_last_reconcile_timestamp_seconds") == 1_700_000_000.0
    assert sum(v for (n, _), v in exposed(m).items() if n == "ringkv_operator_errors_total") == 0


def test_failed_passes_by_result_and_reason() -> None:
    m = metrics.Metrics(wall=lambda: 5.0)
    api_error = kube.ApiError(403, "GET", "/apis/ringkv.io/v1alpha1/namespaces/db/kvclusters/demo", "forbidden")
    with pytest.raises(kopf.TemporaryError), m.reconcile_pass():
        raise kopf.TemporaryError("reconcile failed, will retry") from api_error
    with pytest.raises(KeyError), m.reconcile_pass():
        raise KeyError("a bug")
    with m.reconcile_pass() as recorded:
        recorded.fail("spec")
    assert value(m, "ringkv_operator_reconciles_total", result="temporary") == 1
    assert value(m, "ringkv_operator_reconciles_total", result="error") == 2
    assert value(m, "ringkv_operator_reconciles_total", result="ok") == 0
    assert value(m, "ringkv_operator_errors_total", reason="forbidden") == 1
    assert value(m, "ringkv_operator_errors_total", reason="other") == 1
    assert value(m, "ringkv_operator_errors_total", reason="spec") == 1
    assert value(m, "ringkv_operator_reconcile_duration_seconds_count") == 3
    assert value(m, "ringkv_operator_last_reconcile_timestamp_seconds") == 0  # no pass succeeded


def test_a_cancelled_pass_is_not_counted() -> None:
    m = metrics.Metrics()
    with pytest.raises(asyncio.CancelledError), m.reconcile_pass():
        raise asyncio.CancelledError
    assert value(m, "ringkv_operator_reconcile_duration_seconds_count") == 0


def _api_error(status: int) -> Exception:
    return kube.ApiError(status, "PATCH", "/api/v1/namespaces/db/services/demo", "no")


@pytest.mark.parametrize(("error", "reason"), [
    (_api_error(401), "unauthorized"), (_api_error(403), "forbidden"), (_api_error(404), "not_found"),
    (_api_error(409), "conflict"), (_api_error(422), "invalid"), (_api_error(400), "invalid"),
    (_api_error(429), "unavailable"), (_api_error(503), "unavailable"), (_api_error(418), "other"),
    (aiohttp.ClientConnectionError("refused"), "unreachable"), (TimeoutError(), "unreachable"),
    (metrics.NodeApiError("decommission of demo-0"), "node_api"), (ValueError("x"), "other"),
])
def test_reasons_are_bounded(error: Exception, reason: str) -> None:
    assert metrics.reason_of(error) == reason
    wrapped = kopf.TemporaryError("will retry")
    wrapped.__cause__ = error
    assert metrics.reason_of(wrapped) == reason
    assert reason in metrics.REASONS


def _status(phase: str, ready: int = 3, operation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"phase": phase, "readyReplicas": ready, "operation": operation}


def test_the_phase_gauge_follows_the_status() -> None:
    m = metrics.Metrics()
    m.observe("db", "demo", _status("Creating", ready=1), 3)
    assert value(m, "ringkv_operator_cluster_phase", namespace="db", name="demo", phase="Creating") == 1
    assert value(m, "ringkv_operator_cluster_phase", namespace="db", name="demo", phase="Running") == 0
    assert value(m, "ringkv_operator_cluster_ready_nodes", namespace="db", name="demo") == 1
    assert value(m, "ringkv_operator_cluster_desired_nodes", namespace="db", name="demo") == 3
    m.observe("db", "demo", _status("Running"), 3)
    phases = {dict(labels)["phase"]: v for (n, labels), v in exposed(m).items()
              if n == "ringkv_operator_cluster_phase"}
    assert phases == {p: (1 if p == "Running" else 0) for p in metrics.PHASES}
    assert value(m, "ringkv_operator_cluster_ready_nodes", namespace="db", name="demo") == 3
    # a phase this module does not know is exposed while it lasts, then removed
    m.observe("db", "demo", _status("Hibernating"), 3)
    assert value(m, "ringkv_operator_cluster_phase", namespace="db", name="demo", phase="Hibernating") == 1
    assert value(m, "ringkv_operator_cluster_phase", namespace="db", name="demo", phase="Running") == 0
    m.observe("db", "demo", _status("Running"), 3)
    assert value(m, "ringkv_operator_cluster_phase", namespace="db", name="demo", phase="Hibernating") is None
    # a spec that cannot be read: Failed, and no desired size to show
    m.observe("db", "demo", _status("Failed"), None)
    assert value(m, "ringkv_operator_cluster_phase", namespace="db", name="demo", phase="Failed") == 1
    assert value(m, "ringkv_operator_cluster_desired_nodes", namespace="db", name="demo") is None


def test_the_operation_gauge_is_one_while_it_is_in_flight() -> None:
    m = metrics.Metrics()
    op = {"kind": "ScaleUp", "node": "demo-3", "phase": "Joining"}
    m.observe("db", "demo", _status("Scaling", operation=op), 4)
    assert value(m, "ringkv_operator_operation", namespace="db", name="demo", kind="ScaleUp") == 1
    assert value(m, "ringkv_operator_operation", namespace="db", name="demo", kind="ScaleDown") == 0
    m.observe("db", "demo", _status("Running", ready=4), 4)
    assert value(m, "ringkv_operator_operation", namespace="db", name="demo", kind="ScaleUp") == 0


def test_a_deleted_cluster_leaves_no_series() -> None:
    m = metrics.Metrics()
    m.observe("db", "demo", _status("Scaling", operation={"kind": "ScaleDown"}), 2)
    m.observe("db", "other", _status("Running"), 3)
    m.manage("db", "demo")  # its daemon starting again changes nothing
    assert value(m, "ringkv_operator_clusters") == 2
    assert cluster_series(m)
    m.forget("db", "demo")
    assert cluster_series(m) == set()
    assert value(m, "ringkv_operator_clusters") == 1
    assert value(m, "ringkv_operator_cluster_phase", namespace="db", name="other", phase="Running") == 1
    m.forget("db", "demo")  # deleted and its daemon exiting: forgotten twice
    assert value(m, "ringkv_operator_clusters") == 1


def test_the_endpoint_serves_the_registry() -> None:
    async def scenario() -> tuple[int, str, str]:
        m = metrics.Metrics()
        m.observe("db", "demo", _status("Running"), 3)
        server = await metrics.serve(m, 0, "127.0.0.1")
        try:
            async with aiohttp.ClientSession() as session, \
                    session.get(f"http://127.0.0.1:{server.port}/metrics") as response:
                return response.status, response.headers["Content-Type"], await response.text()
        finally:
            await server.close()

    code, content_type, text = asyncio.run(scenario())
    assert code == 200 and content_type.startswith("text/plain; version=")
    assert 'ringkv_operator_cluster_phase{name="demo",namespace="db",phase="Running"} 1.0' in text
    assert "# TYPE ringkv_operator_reconciles_total counter" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_operator_serves_metrics_from_startup_to_cleanup(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    monkeypatch.setattr(handlers, "SETTINGS", dataclasses.replace(handlers.SETTINGS, metrics_port=port))

    async def scenario() -> tuple[int, bool]:
        memo = kopf.Memo()
        await handlers.serve_metrics(memo=memo, logger=logging.getLogger("test"))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                code = response.status
            await handlers.close(memo=memo)
            try:
                async with session.get(f"http://127.0.0.1:{port}/metrics"):
                    pass
            except aiohttp.ClientConnectionError:
                return code, True
            return code, False

    assert asyncio.run(scenario()) == (200, True)


def test_port_zero_serves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "SETTINGS", dataclasses.replace(handlers.SETTINGS, metrics_port=0))
    memo = kopf.Memo()
    asyncio.run(handlers.serve_metrics(memo=memo, logger=logging.getLogger("test")))
    assert "metrics" not in memo


class FakeApi(kube.Api):
    """Answers the KVCluster's GET (or refuses it) and records status patches."""

    def __init__(self, obj: dict[str, Any] | None, refuse: int | None = None) -> None:
        self.obj, self.refuse, self.patches = obj, refuse, list[dict[str, Any]]()

    async def get(self, kind: kube.Kind, namespace: str, name: str) -> dict[str, Any] | None:
        if self.refuse is not None:
            raise kube.ApiError(self.refuse, "GET", kind.path(namespace, name), "refused")
        return self.obj

    async def list(self, kind: kube.Kind, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        return []

    async def patch_status(self, kind: kube.Kind, namespace: str, name: str,
                           status: Mapping[str, Any]) -> dict[str, Any]:
        self.patches.append(dict(status))
        return {}


def _run_pass(monkeypatch: pytest.MonkeyPatch, api: FakeApi) -> metrics.Metrics:
    m = metrics.Metrics()
    monkeypatch.setattr(handlers, "METRICS", m)
    memo = kopf.Memo()
    memo["api"] = api
    body = kopf.Body(samples.kvcluster())
    asyncio.run(handlers.reconcile(body, memo, logging.getLogger("test")))
    return m


def test_a_refused_read_counts_as_a_temporary_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(kopf.TemporaryError):
        _run_pass(monkeypatch, FakeApi(None, refuse=403))
    m = handlers.METRICS
    assert value(m, "ringkv_operator_reconciles_total", result="temporary") == 1
    assert value(m, "ringkv_operator_errors_total", reason="forbidden") == 1


def test_a_spec_that_cannot_be_built_counts_as_an_error_and_shows_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi(samples.kvcluster(replicas=0))
    m = _run_pass(monkeypatch, api)
    assert [p["phase"] for p in api.patches] == ["Failed"]
    assert value(m, "ringkv_operator_reconciles_total", result="error") == 1
    assert value(m, "ringkv_operator_errors_total", reason="spec") == 1
    assert value(m, "ringkv_operator_cluster_phase", namespace="db", name="demo", phase="Failed") == 1
    assert value(m, "ringkv_operator_clusters") == 1


def test_the_delete_handler_removes_the_clusters_series(monkeypatch: pytest.MonkeyPatch) -> None:
    m = metrics.Metrics()
    monkeypatch.setattr(handlers, "METRICS", m)
    m.observe("db", "demo", _status("Running"), 3)
    memo = kopf.Memo()
    memo["api"] = FakeApi(None)
    asyncio.run(handlers.delete(body=kopf.Body(samples.kvcluster()), memo=memo, logger=logging.getLogger("test")))
    assert cluster_series(m) == set()
    assert value(m, "ringkv_operator_clusters") == 0
