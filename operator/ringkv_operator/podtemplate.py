"""spec.podTemplate: an overlay on the node pods' template for what the CRD does not model. Pure.

The operator builds the node pods' template (`resources.statefulset`); `apply` then lays the overlay over it,
before the template's hash is taken (so a change of the overlay rolls the pods like any template change).
What merges, and what is refused (`refusals`, which `spec.parse` turns into a SpecError: phase Failed, nothing
touched):

    metadata.labels        added to the pods' labels; the keys the operator sets (app.kubernetes.io/name,
                           instance, component, part-of, managed-by, and any ringkv.io/ key) and the
                           StatefulSet controller's (controller-revision-hash, statefulset.kubernetes.io/,
                           apps.kubernetes.io/) are refused
    metadata.annotations   added; ringkv.io/ keys (the operator's hashes) are refused
    spec.containers        by name. `ringkv`, the node, takes only env (added after the operator's; RINGKV_*
                           names are refused: node settings are spec.config's) and volumeMounts (added; the
                           names and paths of the operator's mounts, and paths under them, are refused); any
                           other key on it (image, command, args, ports, probes, resources, securityContext,
                           envFrom: whose keys could override the node's settings, ...) is refused. Any other
                           name is a sidecar, appended as given.
    spec.initContainers    appended as given (not named `ringkv`)
    spec.volumes           appended as given (not named like the operator's: data, tmp, certs, tokens)
    spec.<field>           for the fields in SET_FIELDS, which the operator leaves unset: set as given
    anything else          refused: either the CRD models it (affinity: spec.racks and spec.antiAffinity;
                           tolerations, nodeSelector, priorityClassName, imagePullSecrets: their spec fields;
                           terminationGracePeriodSeconds: spec.config.shutdown_timeout_s; resources:
                           spec.resources) or the operator needs it as it is (securityContext,
                           automountServiceAccountToken, enableServiceLinks, hostNetwork, ...)

Names within a list must be unique. The overlay's Kubernetes values themselves (a sidecar's fields, a volume's
source) are not checked here: the API server checks them when the StatefulSet is written.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

# The parts of the node pod the operator needs, named here so that the overlay cannot take them.
CONTAINER = "ringkv"
MOUNTS = {"data": "/var/lib/ringkv", "tmp": "/tmp", "certs": "/etc/ringkv/certs", "tokens": "/etc/ringkv/tokens"}
VOLUMES = frozenset(MOUNTS)

LABELS = frozenset({"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
                    "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by", "controller-revision-hash"})
LABEL_PREFIXES = ("ringkv.io/", "statefulset.kubernetes.io/", "apps.kubernetes.io/")
ANNOTATION_PREFIXES = ("ringkv.io/",)
NODE_CONTAINER_FIELDS = frozenset({"name", "env", "volumeMounts"})
LISTS = ("containers", "initContainers", "volumes")
SET_FIELDS = frozenset({"dnsPolicy", "dnsConfig", "hostAliases", "runtimeClassName", "schedulerName",
                        "preemptionPolicy", "readinessGates", "serviceAccountName", "shareProcessNamespace",
                        "setHostnameAsFQDN"})


def _reserved_label(key: str) -> bool:
    return key in LABELS or key.startswith(LABEL_PREFIXES)


def _metadata_refusals(metadata: Mapping[str, Any]) -> Iterator[str]:
    for key in sorted(set(metadata) - {"labels", "annotations"}):
        yield f"metadata.{key} cannot be set (only labels and annotations)"
    for key in sorted(k for k in metadata.get("labels") or {} if _reserved_label(str(k))):
        yield f"metadata.labels {key!r} is the operator's or the StatefulSet controller's"
    for key in sorted(k for k in metadata.get("annotations") or {} if str(k).startswith(ANNOTATION_PREFIXES)):
        yield f"metadata.annotations {key!r} is the operator's"


def _names(items: Sequence[Any]) -> list[str]:
    return [str(item.get("name", "")) if isinstance(item, Mapping) else "" for item in items]


def _list_refusals(field: str, items: Any) -> Iterator[str]:
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        yield f"spec.{field} must be a list of objects"
        return
    names = _names(items)
    if "" in names:
        yield f"spec.{field}: every item needs a name"
    for name in sorted({n for n in names if names.count(n) > 1}):
        yield f"spec.{field}: {name!r} is listed twice"
    if field == "volumes":
        for name in sorted(VOLUMES & set(names)):
            yield f"spec.volumes: {name!r} is the operator's volume"
    if field == "initContainers" and CONTAINER in names:
        yield f"spec.initContainers: {CONTAINER!r} is the node container's name"


def _under(path: str, mount: str) -> bool:
    return path.rstrip("/") == mount or path.startswith(mount.rstrip("/") + "/")


def _node_container_refusals(container: Mapping[str, Any]) -> Iterator[str]:
    where = f"spec.containers[{CONTAINER}]"
    for key in sorted(set(container) - NODE_CONTAINER_FIELDS):
        yield f"{where}.{key} is the operator's (the node container takes only env and volumeMounts)"
    for item in container.get("env") or []:
        name = str(item.get("name", "")) if isinstance(item, Mapping) else ""
        if name.startswith("RINGKV_"):
            yield f"{where}.env {name!r}: node settings are spec.config's, the others the operator's"
    for mount in container.get("volumeMounts") or []:
        if not isinstance(mount, Mapping):
            yield f"{where}.volumeMounts must be objects"
            continue
        if mount.get("name") in VOLUMES:
            yield f"{where}.volumeMounts {mount.get('name')!r} is the operator's volume"
        for name, path in MOUNTS.items():
            if _under(str(mount.get("mountPath", "")), path):
                yield f"{where}.volumeMounts {mount.get('mountPath')!r} would cover the operator's {name} mount"


def refusals(overlay: Mapping[str, Any]) -> list[str]:
    """Why the overlay cannot be applied (each message names the field, relative to spec.podTemplate)."""
    out = [f"{key} cannot be set (only metadata and spec)" for key in sorted(set(overlay) - {"metadata", "spec"})]
    out += _metadata_refusals(overlay.get("metadata") or {})
    spec = overlay.get("spec") or {}
    for key in sorted(set(spec) - SET_FIELDS - set(LISTS)):
        out.append(f"spec.{key} cannot be set here: the CRD models it or the operator needs it as it builds it")
    for field in LISTS:
        if field in spec:
            out += _list_refusals(field, spec[field])
    if not any(m.startswith("spec.containers must") for m in out):
        for container in spec.get("containers") or []:
            if container.get("name") == CONTAINER:
                out += _node_container_refusals(container)
    return out


def _overlay_node_container(container: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key in ("env", "volumeMounts"):
        if extra.get(key):
            container[key] = [*container.get(key, []), *copy.deepcopy(extra[key])]


def apply(template: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """The pod template with the overlay laid over it (the overlay must have no `refusals`)."""
    out = copy.deepcopy(dict(template))
    meta, spec = overlay.get("metadata") or {}, overlay.get("spec") or {}
    for key in ("labels", "annotations"):
        if meta.get(key):
            out.setdefault("metadata", {})[key] = {**out["metadata"].get(key, {}), **meta[key]}
    pod = out["spec"]
    for key in sorted(SET_FIELDS & set(spec)):
        pod[key] = copy.deepcopy(spec[key])
    for item in spec.get("containers") or []:
        if item.get("name") == CONTAINER:
            _overlay_node_container(next(c for c in pod["containers"] if c["name"] == CONTAINER), item)
        else:
            pod["containers"].append(copy.deepcopy(dict(item)))
    for key in ("initContainers", "volumes"):
        if spec.get(key):
            pod[key] = [*pod.get(key, []), *copy.deepcopy(list(spec[key]))]
    return out
