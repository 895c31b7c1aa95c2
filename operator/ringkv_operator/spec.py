"""A KVCluster's spec as a value: parsed, defaulted and checked. Pure.

The API server applies the CRD's defaults and validation before the operator sees an object; `parse` applies
the same defaults again (so an object that bypassed them, or a test's emulator, still yields a complete spec)
and rejects what the operator cannot build, raising `SpecError` with a message for the status.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

API_GROUP = "ringkv.io"
API_VERSION = "v1alpha1"
KIND = "KVCluster"
PLURAL = "kvclusters"

# `ringkv node` settings a KVCluster may set through spec.config (the CRD lists the same). The others the
# operator derives: data_dir, host, port, peer_port, node_id, advertise_host, seeds, cluster_name,
# replication_factor, read_quorum, write_quorum, tokens, rack, replace_node (per node, when one is replaced),
# and security: insecure, certs_dir, tokens_file, http_tls.
CONFIG_KEYS = frozenset({
    "durability", "memtable_mb", "max_request_bytes", "log_format", "log_level", "shutdown_timeout_s",
    "num_tokens", "capacity", "datacenter", "request_timeout_s", "gossip_interval_s", "phi_threshold",
    "hints_enabled", "hint_window_s", "hints_max_mb", "hint_delivery_mb_s", "ring_wait_s", "suspect_after_s",
    "aae_enabled", "aae_interval_s", "aae_ranges_per_s", "aae_mb_s", "aae_max_keys", "aae_tree_leaves",
    "tombstone_grace_s", "stream_mb_s", "metrics_auth", "security_reload_s", "http_max_connections",
    "http_header_timeout_s", "http_keepalive_s", "http_max_header_bytes",
})
SECURITY_MODES = ("operator", "cert-manager", "insecure")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# A StatefulSet's pods are labelled with "<statefulset>-<10 character revision hash>", at most 63 characters.
MAX_STATEFULSET_NAME = 52


class SpecError(ValueError):
    """The spec cannot be built; the message is written to the status."""


@dataclass(frozen=True)
class Rack:
    name: str
    zone: str | None = None


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    namespace: str
    uid: str
    generation: int | None = None
    replicas: int = 3
    replication_factor: int = 3
    read_quorum: int = 2
    write_quorum: int = 2
    image: str | None = None
    storage_size: str = "10Gi"
    storage_class: str | None = None
    delete_volumes: bool = False
    resources: Mapping[str, Any] = field(default_factory=dict)
    racks: tuple[Rack, ...] = ()
    config: tuple[tuple[str, str], ...] = ()
    # Not from the spec: the seed pods the cluster was created with (status.placement), set by the handlers so
    # that racks added or removed later do not change every pod's template. Empty: `plan.seeds` derives them.
    seed_pods: tuple[str, ...] = ()
    # spec.security: who issues the nodes' certificate (the operator, cert-manager), or none at all
    security: str = "operator"  # operator | cert-manager | insecure
    issuer: tuple[str, str, str] | None = None  # cert-manager issuerRef (name, kind, group)
    https: bool = False  # the HTTP API over TLS too

    @property
    def secure(self) -> bool:
        return self.security != "insecure"

    @property
    def quorum(self) -> int:
        """Nodes that must be up for requests at the default quorums to succeed at all."""
        return max(self.read_quorum, self.write_quorum)


def _int(spec: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(f"spec.{key} must be an integer from {low} to {high}")
    return value


def _config_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise SpecError(f"spec.config values must be strings, numbers or booleans, not {type(value).__name__}")


def parse(body: Mapping[str, Any]) -> ClusterSpec:
    """The ClusterSpec of a KVCluster object (a dict as the API serves it); raises SpecError."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    name, namespace = str(meta.get("name") or ""), str(meta.get("namespace") or "")
    if not name or not namespace:
        raise SpecError("metadata.name and metadata.namespace are required")
    replicas = _int(spec, "replicas", 3, 1, 100)
    rf = _int(spec, "replicationFactor", 3, 1, 15)
    # rf > replicas is not an error here: a running cluster keeps its size and the scaling policy refuses the
    # change with a condition (`scaling`), a new one is not built
    read_quorum = _int(spec, "readQuorum", min(2, rf), 1, rf)
    write_quorum = _int(spec, "writeQuorum", min(2, rf), 1, rf)

    storage = spec.get("storage") or {}
    policy = storage.get("deletionPolicy", "Retain")
    if policy not in ("Retain", "Delete"):
        raise SpecError("spec.storage.deletionPolicy must be Retain or Delete")

    racks: list[Rack] = []
    for item in spec.get("racks") or []:
        rack = Rack(str(item.get("name", "")), item.get("zone") or None)
        if not DNS_LABEL.match(rack.name):
            raise SpecError(f"rack name {rack.name!r} is not a DNS label")
        if rack.name in {r.name for r in racks}:
            raise SpecError(f"rack {rack.name!r} is listed twice")
        racks.append(rack)
    longest = name + (max((f"-{r.name}" for r in racks), key=len) if racks else "")
    if len(longest) > MAX_STATEFULSET_NAME:
        raise SpecError(f"StatefulSet name {longest!r} would be longer than {MAX_STATEFULSET_NAME} characters; "
                        "choose a shorter KVCluster or rack name")

    security = spec.get("security") or {}
    mode = security.get("mode", "operator")
    if mode not in SECURITY_MODES:
        raise SpecError(f"spec.security.mode must be one of {', '.join(SECURITY_MODES)}")
    ref = security.get("issuerRef") or {}
    issuer = (str(ref.get("name", "")), str(ref.get("kind") or "Issuer"),
              str(ref.get("group") or "cert-manager.io")) if ref else None
    if mode == "cert-manager" and (issuer is None or not issuer[0]):
        raise SpecError("spec.security.mode cert-manager needs spec.security.issuerRef.name")
    https = bool(security.get("https", False))
    if https and mode == "insecure":
        raise SpecError("spec.security.https needs certificates: mode operator or cert-manager")
    if https:  # the nodes would serve only HTTPS and the operator still dials them over HTTP
        raise SpecError("spec.security.https is not supported by this operator yet (it reaches the nodes over "
                        "HTTP); leave it out: internode traffic is TLS either way")

    config = spec.get("config") or {}
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise SpecError(f"spec.config does not accept {', '.join(unknown)} (the operator sets or does not know "
                        "them)")
    return ClusterSpec(
        name=name, namespace=namespace, uid=str(meta.get("uid") or ""), generation=meta.get("generation"),
        replicas=replicas, replication_factor=rf, read_quorum=read_quorum, write_quorum=write_quorum,
        image=spec.get("image") or None, storage_size=str(storage.get("size") or "10Gi"),
        storage_class=storage.get("storageClassName") or None, delete_volumes=policy == "Delete",
        resources=dict(spec.get("resources") or {}), racks=tuple(racks),
        config=tuple(sorted((key, _config_value(value)) for key, value in config.items())),
        security=mode, issuer=issuer, https=https,
    )
