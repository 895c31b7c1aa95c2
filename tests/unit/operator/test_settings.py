from __future__ import annotations

import pytest

from ringkv_operator import settings


def test_defaults() -> None:
    got = settings.from_env({})
    assert got == settings.Settings()
    assert got.node_url_template == "http://{pod}.{service}.{namespace}.svc:{port}"
    assert got.metrics_port == 8081


def test_the_metrics_port_can_move_or_be_turned_off() -> None:
    assert settings.from_env({"RINGKV_OPERATOR_METRICS_PORT": "9100"}).metrics_port == 9100
    assert settings.from_env({"RINGKV_OPERATOR_METRICS_PORT": "0"}).metrics_port == 0


def test_the_rollout_settings() -> None:
    got = settings.from_env({})
    assert (got.rollout_max_pending_hints, got.rollout_settle_seconds, got.rollout_deadline_seconds) == (0, 30, 600)
    got = settings.from_env({"RINGKV_OPERATOR_ROLLOUT_MAX_PENDING_HINTS": "50",
                             "RINGKV_OPERATOR_ROLLOUT_SETTLE_SECONDS": "0",
                             "RINGKV_OPERATOR_ROLLOUT_DEADLINE_SECONDS": "8"})
    assert (got.rollout_max_pending_hints, got.rollout_settle_seconds, got.rollout_deadline_seconds) == (50, 0, 8)


def test_from_the_charts_environment() -> None:
    got = settings.from_env({"RINGKV_OPERATOR_NODE_IMAGE": "reg/ringkv:0.2", "POD_NAMESPACE": "ringkv-system",
                             "RINGKV_OPERATOR_NODE_IMAGE_PULL_POLICY": "Always",
                             "RINGKV_OPERATOR_NODE_URL_TEMPLATE": "http://{pod_ip}:{port}",
                             "RINGKV_OPERATOR_RESYNC_SECONDS": "2.5"})
    assert got.node_image == "reg/ringkv:0.2" and got.node_image_pull_policy == "Always"
    assert got.namespace == "ringkv-system" and got.resync_seconds == 2.5
    assert settings.node_url(got.node_url_template, pod="p", pod_ip="10.0.0.7", service="s", namespace="n",
                             port=8080) == "http://10.0.0.7:8080"


@pytest.mark.parametrize(("env", "complaint"), [
    ({"RINGKV_OPERATOR_NODE_IMAGE_PULL_POLICY": "Sometimes"}, "PULL_POLICY"),
    ({"RINGKV_OPERATOR_NODE_URL_TEMPLATE": "http://{host}:1"}, "host"),
    ({"RINGKV_OPERATOR_RESYNC_SECONDS": "0"}, "positive"),
    ({"RINGKV_OPERATOR_HTTP_TIMEOUT_SECONDS": "soon"}, "not a number"),
    ({"RINGKV_OPERATOR_METRICS_PORT": "65536"}, "METRICS_PORT"),
    ({"RINGKV_OPERATOR_METRICS_PORT": "-1"}, "not a port"),
    ({"RINGKV_OPERATOR_ROLLOUT_MAX_PENDING_HINTS": "-1"}, "not a count"),
    ({"RINGKV_OPERATOR_ROLLOUT_SETTLE_SECONDS": "-1"}, "negative"),
    ({"RINGKV_OPERATOR_ROLLOUT_DEADLINE_SECONDS": "0"}, "positive"),
])
def test_bad_settings_are_named(env: dict[str, str], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        settings.from_env(env)


def test_the_charts_operator_deployment_sets_only_known_settings() -> None:
    """manifests/03-operator.yaml is the chart rendered: its command loads these handlers, its environment
    is what from_env reads."""
    from pathlib import Path

    import yaml

    docs = yaml.safe_load_all((Path(__file__).resolve().parents[3] / "manifests" / "03-operator.yaml").read_text())
    [deployment] = [d for d in docs if d and d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"][:4] == ["kopf", "run", "-m", "ringkv_operator.handlers"]
    names = {e["name"] for e in container["env"]}
    assert {"RINGKV_OPERATOR_NODE_IMAGE", "RINGKV_OPERATOR_NODE_IMAGE_PULL_POLICY", "POD_NAMESPACE"} <= names
    assert names <= settings.ENV_NAMES
    environ = {e["name"]: e.get("value", "ringkv-system") for e in container["env"]}
    assert settings.from_env(environ).node_image == "ringkv:0.1.0"
