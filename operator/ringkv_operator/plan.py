"""Decisions, pure: the shape of a KVCluster's StatefulSets, and which objects need a patch now. No I/O; the
handlers pass the live objects in. (Which node to add or remove, and when, is `scaling`'s.)

Shape. The nodes are split over one StatefulSet per rack (node i in rack i mod len(racks), so rack r gets
len(range(r, replicas, len(racks))) nodes), or a single StatefulSet named like the cluster without racks.
`node_order` is the order nodes are added in; the seeds are those of a two-node cluster of the spec, so they
do not change with the size.

Rollout. A StatefulSet whose template drifted from the spec is patched only when that costs no extra
availability: at once if it is already unsettled (a pod is down or updating anyway), else only when every
other StatefulSet is settled (all its pods ready and on its current template, read from the pods' template
hash), one per pass. So racks roll one after another and a key never loses two replicas to a rollout.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ringkv_operator import spec as specmod

RACK_LABEL = "ringkv.io/rack"
# On a StatefulSet: the hash of the manifest the operator last applied. The API server defaults and normalizes
# (quantities such as "0.5" become "500m"), so a StatefulSet drifted when this differs, not when its fields do.
SPEC_HASH_ANNOTATION = "ringkv.io/spec-hash"
# On a pod template, so on its pods: the hash of the template; a pod with another one is yet to be replaced.
TEMPLATE_HASH_ANNOTATION = "ringkv.io/template-hash"
# Fields the API server refuses to change on a StatefulSet; a patch leaves them out.
STATEFULSET_IMMUTABLE = ("selector", "serviceName", "volumeClaimTemplates", "podManagementPolicy")


@dataclass(frozen=True)
class RackSet:
    """One StatefulSet: the nodes of one rack (rack None: the cluster has no racks)."""

    name: str
    replicas: int
    rack: str | None = None
    zone: str | None = None

    def pod(self, ordinal: int) -> str:
        return f"{self.name}-{ordinal}"


@dataclass(frozen=True)
class Decision:
    shape: tuple[RackSet, ...]  # the StatefulSets the cluster stands by, with their sizes (`scaling`)

    @property
    def replicas(self) -> int:
        return sum(r.replicas for r in self.shape)


def desired_shape(spec: specmod.ClusterSpec) -> tuple[RackSet, ...]:
    if not spec.racks:
        return (RackSet(spec.name, spec.replicas),)
    count = len(spec.racks)
    out = []
    for index, rack in enumerate(spec.racks):
        size = len(range(index, spec.replicas, count))
        if size:
            out.append(RackSet(f"{spec.name}-{rack.name}", size, rack.name, rack.zone))
    return tuple(out)


def node_order(shape: Sequence[RackSet]) -> list[str]:
    """Pod names in node order: node i is pod i // len(shape) of rack set i mod len(shape)."""
    out: list[str] = []
    ordinal = 0
    while len(out) < sum(r.replicas for r in shape):
        out += [r.pod(ordinal) for r in shape if ordinal < r.replicas]
        ordinal += 1
    return out


def seed_pods(shape: Sequence[RackSet], count: int = 2) -> list[str]:
    """The first nodes: with racks, the first pod of the first two racks, so one rack down leaves a seed."""
    return node_order(shape)[:count]


def seeds(spec: specmod.ClusterSpec) -> list[str]:
    """The seeds every node is given: the first two nodes of the spec at any size (with racks, the first pod of
    the first two racks), so the pods' template does not change when the size does. A pod that does not exist
    (yet) is not answered: a cluster's first node waits a few seconds for the second seed, then founds the
    ring alone."""
    if spec.seed_pods:
        return list(spec.seed_pods)
    return seed_pods(desired_shape(replace(spec, replicas=2)))


# -- drift ------------------------------------------------------------------------------------------------------


def contains(live: Any, desired: Any) -> bool:
    """Whether `live` already has everything `desired` says (the API server adds defaults, never removes):
    dicts by key, lists element-wise with equal length, scalars equal."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(k in live and contains(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(live) == len(desired) and all(map(contains, live, desired))
    return bool(live == desired)


def patch_for(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The merge patch that brings `live` to `desired`, or None when nothing differs. A ConfigMap's data is
    replaced whole (keys the spec dropped are removed); a StatefulSet's immutable fields are left out, and it
    differs when its spec hash does (see SPEC_HASH_ANNOTATION)."""
    if live is None:
        return None
    wanted_hash = _annotation(desired, SPEC_HASH_ANNOTATION)
    if wanted_hash is not None:
        if _annotation(live, SPEC_HASH_ANNOTATION) == wanted_hash:
            return None
    elif contains(live, desired):
        return None
    patch = copy.deepcopy(dict(desired))
    if desired.get("kind") == "StatefulSet":
        for name in STATEFULSET_IMMUTABLE:
            patch["spec"].pop(name, None)
    if desired.get("kind") == "ConfigMap":
        for key in (live.get("data") or {}):
            patch.setdefault("data", {}).setdefault(key, None)
    return patch


def _annotation(obj: Mapping[str, Any], key: str) -> str | None:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(key)
    return None if value is None else str(value)


def pod_ready(pod: Mapping[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pods_of(sts: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The StatefulSet's pods (NAME-ORDINAL), whatever their state."""
    name = re.compile(re.escape(str(sts["metadata"]["name"])) + r"-\d+")
    return [p for p in pods if name.fullmatch(str(p["metadata"]["name"]))]


def template_hash(sts: Mapping[str, Any]) -> str | None:
    """The template hash a StatefulSet gives its pods."""
    return _annotation((sts.get("spec") or {}).get("template") or {}, TEMPLATE_HASH_ANNOTATION)


def pod_template_hash(pod: Mapping[str, Any]) -> str | None:
    return _annotation(pod, TEMPLATE_HASH_ANNOTATION)


def settled(sts: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> bool:
    """Every pod of the StatefulSet exists, is ready and runs its current template. Read from the pods
    themselves (their template hash), not from the StatefulSet's status, which lags behind a patch."""
    mine = pods_of(sts, pods)
    want, current = int((sts.get("spec") or {}).get("replicas", 1)), template_hash(sts)
    return len(mine) == want and all(pod_ready(p) and pod_template_hash(p) == current for p in mine)


def rolling(sts: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> bool:
    """Some pod of the StatefulSet still runs an older template."""
    current = template_hash(sts)
    return any(pod_template_hash(p) != current for p in pods_of(sts, pods))


def rollout(pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any] | None]],
            pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of the StatefulSets (desired, live) to create or patch now; see the module's note on rollouts."""
    go: list[str] = []
    drifted: list[str] = []
    unsettled = {d["metadata"]["name"] for d, live in pairs if live is not None and not settled(live, pods)}
    for desired, live in pairs:
        name = desired["metadata"]["name"]
        if live is None:
            go.append(name)
        elif patch_for(desired, live) is not None:
            (go if name in unsettled else drifted).append(name)
    missing = {d["metadata"]["name"] for d, live in pairs if live is None}
    if drifted and not unsettled and not missing:
        go.append(drifted[0])
    return go


# -- deletion ---------------------------------------------------------------------------------------------------


def owned(objects: Sequence[Mapping[str, Any]], uid: str) -> list[Mapping[str, Any]]:
    """The objects whose ownerReferences name the KVCluster of that uid (labels alone could be anyone's)."""
    return [o for o in objects
            if any(str(r.get("uid", "")) == uid for r in (o.get("metadata") or {}).get("ownerReferences") or [])]


def volume_claims(name: str, claims: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The cluster's nodes' claims: made from the claim template "data" of its StatefulSets, data-NAME-...-K."""
    pattern = re.compile(re.escape(f"data-{name}-") + r"([a-z0-9-]+-)?\d+")
    return [c for c in claims if pattern.fullmatch(str(c["metadata"]["name"]))]
