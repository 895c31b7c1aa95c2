"""A KVCluster's spec as a value: parsed, defaulted and checked. Pure.

The API server applies the CRD's defaults and validation before the operator sees an object; `parse` applies
the same defaults again (so an object that bypassed them, or a test's emulator, still yields a complete spec)
and rejects what the operator cannot build, raising `SpecError` with a message for the status.

One thing is read from the status: the node labels of racks the spec no longer lists
(status.placement.rackNodeLabels, `placement.record`), so that the StatefulSet of a rack being removed keeps
the pod template it runs with while its nodes are decommissioned.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ringkv_operator import podtemplate

API_GROUP = "ringkv.io"
API_VERSION = "v1alpha1"
KIND = "KVCluster"
PLURAL = "kvclusters"

# `ringkv node` settings a KVCluster may set through spec.config (the CRD lists the same). The others the
# operator derives: data_dir, host, port, peer_port, node_id, advertise_host, seeds, cluster_name,
# replication_factor, read_quorum, write_quorum, tokens, rack, replace_node (per node, when one is replaced),
# and security: insecure, certs_dir, tokens_file, http_tls.
CONFIG_KEYS = frozenset({
    "durability", "memtable_mb", "block_cache_mb", "max_request_bytes", "log_format", "log_level", "shutdown_timeout_s",
    "drain_delay_s",
    "num_tokens", "capacity", "datacenter", "request_timeout_s", "gossip_interval_s", "phi_threshold",
    "hints_enabled", "hint_window_s", "hints_max_mb", "hint_delivery_mb_s", "ring_wait_s", "suspect_after_s",
    "read_repair_chance", "speculative_read_ms",
    "aae_enabled", "aae_interval_s", "aae_ranges_per_s", "aae_mb_s", "aae_max_keys", "aae_tree_leaves",
    "tombstone_grace_s", "stream_mb_s", "metrics_auth", "security_reload_s", "http_max_connections",
    "http_header_timeout_s", "http_keepalive_s", "http_max_header_bytes",
})
SECURITY_MODES = ("operator", "cert-manager", "insecure")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# A StatefulSet's pods are labelled with "<statefulset>-<10 character revision hash>", at most 63 characters.
MAX_STATEFULSET_NAME = 52
ZONE_LABEL = "topology.kubernetes.io/zone"
ANTI_AFFINITY = ("Required", "Preferred")
TOLERATION_FIELDS = frozenset({"key", "operator", "value", "effect", "tolerationSeconds"})
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
Labels = tuple[tuple[str, str], ...]


class SpecError(ValueError):
    """The spec cannot be built; the message is written to the status."""


@dataclass(frozen=True)
class Rack:
    name: str
    zone: str | None = None
    node_labels: Labels = ()  # the Kubernetes node labels its pods require (besides the zone's)


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
    # where the node pods run (`resources`): required or preferred anti-affinity per Kubernetes node, and the
    # pod fields of the same names
    anti_affinity: str = "Required"  # Required | Preferred
    node_selector: Labels = ()
    tolerations: tuple[Mapping[str, Any], ...] = ()
    priority_class: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    pod_template: Mapping[str, Any] = field(default_factory=dict)  # spec.podTemplate (`podtemplate`), checked
    # Not from the spec: the node labels of racks the spec dropped, from status.placement (see the docstring).
    retired_rack_labels: tuple[tuple[str, Labels], ...] = ()

    def rack_node_labels(self, rack: str | None) -> Labels:
        """The node labels a rack's pods require: the spec's, or the recorded ones of a rack it dropped."""
        for item in self.racks:
            if item.name == rack:
                return item.node_labels
        return dict(self.retired_rack_labels).get(rack or "", ())

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


def _label_key(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    prefix, _, name = key.rpartition("/")
    return (not prefix or (len(prefix) <= 253 and DNS_SUBDOMAIN.match(prefix) is not None)) \
        and len(name) <= 63 and LABEL_NAME.match(name) is not None


def labels(value: Any, where: str) -> Labels:
    """A map of Kubernetes label keys to values, sorted; raises SpecError naming `where`."""
    if not isinstance(value, Mapping):
        raise SpecError(f"{where} must map label keys to values")
    for key, item in value.items():
        if not _label_key(key):
            raise SpecError(f"{where}: {key!r} is not a label key")
        if not isinstance(item, str) or len(item) > 63 or not LABEL_VALUE.match(item):
            raise SpecError(f"{where}: the value of {key!r} is not a label value")
    return tuple(sorted(value.items()))


def _rack(item: Any) -> Rack:
    if not isinstance(item, Mapping):
        raise SpecError("spec.racks must be a list of objects")
    name = str(item.get("name", ""))
    if not DNS_LABEL.match(name):
        raise SpecError(f"rack name {name!r} is not a DNS label")
    node_labels = labels(item.get("nodeLabels") or {}, f"spec.racks[{name}].nodeLabels")
    if ZONE_LABEL in dict(node_labels):
        raise SpecError(f"spec.racks[{name}].nodeLabels: give the zone as spec.racks[].zone (it is recorded and "
                        "fixed, as the rack's volumes live in it), not as a node label")
    return Rack(name, item.get("zone") or None, node_labels)


def _racks(spec: Mapping[str, Any], name: str) -> tuple[Rack, ...]:
    racks: list[Rack] = []
    for item in spec.get("racks") or []:
        rack = _rack(item)
        if rack.name in {r.name for r in racks}:
            raise SpecError(f"rack {rack.name!r} is listed twice")
        racks.append(rack)
    longest = name + (max((f"-{r.name}" for r in racks), key=len) if racks else "")
    if len(longest) > MAX_STATEFULSET_NAME:
        raise SpecError(f"StatefulSet name {longest!r} would be longer than {MAX_STATEFULSET_NAME} characters; "
                        "choose a shorter KVCluster or rack name")
    return tuple(racks)


def _retired_rack_labels(body: Mapping[str, Any], racks: tuple[Rack, ...]) -> tuple[tuple[str, Labels], ...]:
    """status.placement.rackNodeLabels of the racks the spec no longer lists (the operator's own record: what
    does not parse is left out)."""
    placed = ((body.get("status") or {}).get("placement") or {}).get("rackNodeLabels") or []
    out = {}
    for item in placed if isinstance(placed, list) else []:
        try:
            rack = str(item["rack"])
            out[rack] = labels(item.get("nodeLabels") or {}, "status.placement.rackNodeLabels")
        except (KeyError, TypeError, AttributeError, SpecError):
            continue
    return tuple(sorted((rack, found) for rack, found in out.items() if rack not in {r.name for r in racks}))


def _security(spec: Mapping[str, Any]) -> dict[str, Any]:
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
    return {"security": mode, "issuer": issuer, "https": https}


def _toleration(item: Any) -> dict[str, Any]:
    if not isinstance(item, Mapping) or set(item) - TOLERATION_FIELDS:
        raise SpecError(f"spec.tolerations items take only {', '.join(sorted(TOLERATION_FIELDS))}")
    operator, effect = item.get("operator", "Equal"), item.get("effect", "")
    if operator not in ("Equal", "Exists"):
        raise SpecError("spec.tolerations[].operator must be Equal or Exists")
    if operator == "Exists" and item.get("value"):
        raise SpecError("spec.tolerations[]: operator Exists takes no value")
    if not item.get("key") and operator != "Exists":
        raise SpecError("spec.tolerations[]: a toleration without a key needs operator Exists")
    if effect not in ("", *TAINT_EFFECTS):
        raise SpecError(f"spec.tolerations[].effect must be one of {', '.join(TAINT_EFFECTS)} (or absent: any)")
    seconds = item.get("tolerationSeconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int) or effect != "NoExecute"):
        raise SpecError("spec.tolerations[].tolerationSeconds is a whole number of seconds, with effect NoExecute")
    return dict(item)


def _subdomain(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > 253 or not DNS_SUBDOMAIN.match(value):
        raise SpecError(f"{where} must be a DNS subdomain name, not {value!r}")
    return value


def _scheduling(spec: Mapping[str, Any], racks: tuple[Rack, ...]) -> dict[str, Any]:
    """Where the node pods run and what they are given: anti-affinity, nodeSelector, tolerations,
    priorityClassName, imagePullSecrets, podTemplate."""
    anti_affinity = spec.get("antiAffinity", "Required")
    if anti_affinity not in ANTI_AFFINITY:
        raise SpecError(f"spec.antiAffinity must be one of {', '.join(ANTI_AFFINITY)}")
    node_selector = labels(spec.get("nodeSelector") or {}, "spec.nodeSelector")
    for rack in racks:
        for key, value in rack.node_labels:
            if dict(node_selector).get(key, value) != value:
                raise SpecError(f"spec.racks[{rack.name}].nodeLabels and spec.nodeSelector ask for different "
                                f"values of {key!r}: no node has both")
    priority = spec.get("priorityClassName")
    secrets = spec.get("imagePullSecrets") or []
    if not isinstance(secrets, list) or not all(isinstance(s, Mapping) and set(s) == {"name"} for s in secrets):
        raise SpecError("spec.imagePullSecrets must be a list of {name: SECRET}")
    overlay = spec.get("podTemplate") or {}
    if not isinstance(overlay, Mapping):
        raise SpecError("spec.podTemplate must be an object")
    refused = podtemplate.refusals(overlay)
    if refused:
        raise SpecError("spec.podTemplate: " + "; ".join(refused))
    return {"anti_affinity": anti_affinity, "node_selector": node_selector,
            "tolerations": tuple(_toleration(t) for t in spec.get("tolerations") or []),
            "priority_class": _subdomain(priority, "spec.priorityClassName") if priority else None,
            "image_pull_secrets": tuple(_subdomain(s["name"], "spec.imagePullSecrets[].name") for s in secrets),
            "pod_template": dict(overlay)}


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
    racks = _racks(spec, name)

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
        resources=dict(spec.get("resources") or {}), racks=racks,
        config=tuple(sorted((key, _config_value(value)) for key, value in config.items())),
        retired_rack_labels=_retired_rack_labels(body, racks), **_security(spec), **_scheduling(spec, racks),
    )
