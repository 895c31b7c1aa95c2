"""The operator's own settings, from its environment (the chart's Deployment sets them). Pure: the environment
is passed in.

    RINGKV_OPERATOR_NODE_IMAGE              node image of KVClusters without spec.image (the chart: its own image)
    RINGKV_OPERATOR_NODE_IMAGE_PULL_POLICY  pull policy of the nodes (Always, IfNotPresent, Never)
    RINGKV_OPERATOR_NODE_URL_TEMPLATE       how the operator reaches a node's HTTP API, with the fields {pod},
                                            {pod_ip}, {service} (the headless Service), {namespace} and {port}
                                            (the pod's container port named "http"); default the pod's DNS name
    RINGKV_OPERATOR_RESYNC_SECONDS          how often each KVCluster is reconciled and its status refreshed
    RINGKV_OPERATOR_HTTP_TIMEOUT_SECONDS    timeout of one request to a node's admin API
    RINGKV_OPERATOR_METRICS_PORT            port of the operator's Prometheus /metrics (`metrics`); 0: not served
    RINGKV_OPERATOR_ROLLOUT_MAX_PENDING_HINTS  a rollout rolls the next pod only while the nodes hold at most this
                                            many hints in all (default 0: every hint handed off first)
    RINGKV_OPERATOR_ROLLOUT_SETTLE_SECONDS  seconds the ring must have been healthy, with every pod ready, before
                                            the first pod of a StatefulSet (a rack) rolls (default 30)
    RINGKV_OPERATOR_ROLLOUT_DEADLINE_SECONDS  a rollout at one pod for longer (rolling it, or waiting for the ring
                                            before it) is reported stuck: Degraded, reason RolloutStuck (600)
    POD_NAMESPACE                           the operator's namespace (informational: it watches all namespaces)
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_NODE_IMAGE = "ringkv:0.1.0"
DEFAULT_NODE_URL_TEMPLATE = "http://{pod}.{service}.{namespace}.svc:{port}"
URL_FIELDS = frozenset({"pod", "pod_ip", "service", "namespace", "port"})
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
ENV_NAMES = frozenset({"RINGKV_OPERATOR_NODE_IMAGE", "RINGKV_OPERATOR_NODE_IMAGE_PULL_POLICY",
                       "RINGKV_OPERATOR_NODE_URL_TEMPLATE", "RINGKV_OPERATOR_RESYNC_SECONDS",
                       "RINGKV_OPERATOR_HTTP_TIMEOUT_SECONDS", "RINGKV_OPERATOR_METRICS_PORT", "POD_NAMESPACE",
                       "RINGKV_OPERATOR_ROLLOUT_MAX_PENDING_HINTS", "RINGKV_OPERATOR_ROLLOUT_SETTLE_SECONDS",
                       "RINGKV_OPERATOR_ROLLOUT_DEADLINE_SECONDS"})


@dataclass(frozen=True)
class Settings:
    node_image: str = DEFAULT_NODE_IMAGE
    node_image_pull_policy: str = "IfNotPresent"
    node_url_template: str = DEFAULT_NODE_URL_TEMPLATE
    resync_seconds: float = 15.0
    http_timeout_seconds: float = 2.0
    metrics_port: int = 8081
    namespace: str = ""
    rollout_max_pending_hints: int = 0
    rollout_settle_seconds: float = 30.0
    rollout_deadline_seconds: float = 600.0


def _number(environ: Mapping[str, str], name: str, default: float, allow_zero: bool) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must not be negative" if allow_zero else f"{name} must be positive")
    return value


def _positive(environ: Mapping[str, str], name: str, default: float) -> float:
    return _number(environ, name, default, allow_zero=False)


def _non_negative(environ: Mapping[str, str], name: str, default: float) -> float:
    return _number(environ, name, default, allow_zero=True)


def _count(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise ValueError(f"{name}={raw!r} is not a count (0 or more)")
    return int(raw)


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) > 65535:
        raise ValueError(f"{name}={raw!r} is not a port (0 to 65535)")
    return int(raw)


def from_env(environ: Mapping[str, str]) -> Settings:
    """The settings; raises ValueError naming the first bad variable."""
    pull_policy = environ.get("RINGKV_OPERATOR_NODE_IMAGE_PULL_POLICY", "").strip() or "IfNotPresent"
    if pull_policy not in PULL_POLICIES:
        raise ValueError(f"RINGKV_OPERATOR_NODE_IMAGE_PULL_POLICY must be one of {', '.join(PULL_POLICIES)}")
    template = environ.get("RINGKV_OPERATOR_NODE_URL_TEMPLATE", "").strip() or DEFAULT_NODE_URL_TEMPLATE
    used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    if not used <= URL_FIELDS:
        raise ValueError(f"RINGKV_OPERATOR_NODE_URL_TEMPLATE may only use {sorted(URL_FIELDS)}, "
                         f"not {sorted(used - URL_FIELDS)}")
    return Settings(
        node_image=environ.get("RINGKV_OPERATOR_NODE_IMAGE", "").strip() or DEFAULT_NODE_IMAGE,
        node_image_pull_policy=pull_policy,
        node_url_template=template,
        resync_seconds=_positive(environ, "RINGKV_OPERATOR_RESYNC_SECONDS", Settings.resync_seconds),
        http_timeout_seconds=_positive(environ, "RINGKV_OPERATOR_HTTP_TIMEOUT_SECONDS",
                                       Settings.http_timeout_seconds),
        metrics_port=_port(environ, "RINGKV_OPERATOR_METRICS_PORT", Settings.metrics_port),
        namespace=environ.get("POD_NAMESPACE", "").strip(),
        rollout_max_pending_hints=_count(environ, "RINGKV_OPERATOR_ROLLOUT_MAX_PENDING_HINTS",
                                         Settings.rollout_max_pending_hints),
        rollout_settle_seconds=_non_negative(environ, "RINGKV_OPERATOR_ROLLOUT_SETTLE_SECONDS",
                                             Settings.rollout_settle_seconds),
        rollout_deadline_seconds=_positive(environ, "RINGKV_OPERATOR_ROLLOUT_DEADLINE_SECONDS",
                                           Settings.rollout_deadline_seconds),
    )


def node_url(template: str, *, pod: str, pod_ip: str, service: str, namespace: str, port: int) -> str:
    return template.format(pod=pod, pod_ip=pod_ip, service=service, namespace=namespace, port=port)
