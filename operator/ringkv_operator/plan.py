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

Pod by pod. A new template is applied with the RollingUpdate partition at the StatefulSet's size, so the
StatefulSet controller replaces no pod by itself; the operator lowers the partition one pod at a time (the
controller then replaces the pod at the partition, highest ordinal first, as ever), and only when the pods
above it run the new template and are ready, and the ring is healthy (`ring_gate`: every node ready and
normal, seeing every other up and normal, one agreed ring, no ranges streaming in, few enough hints waiting).
Before the first pod of a StatefulSet (a rack) the ring must also have stayed healthy, with every pod ready,
for a settle time. Where the rollout is, is recorded in status.rollout (`advance`); at one pod for longer than
a deadline, it is reported stuck (`stuck`).

The node image. A KVCluster without spec.image keeps the image it was built with (status.nodeImage), whatever
the operator's default becomes, until the user asks for the new default (`node_image`).
"""

from __future__ import annotations

import copy
import datetime
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ringkv_operator import spec as specmod

if TYPE_CHECKING:  # for annotations only: scaling imports this module
    from ringkv_operator.scaling import NodeView

RACK_LABEL = "ringkv.io/rack"
# On a StatefulSet: the hash of the manifest the operator last applied. The API server defaults and normalizes
# (quantities such as "0.5" become "500m"), so a StatefulSet drifted when this differs, not when its fields do.
SPEC_HASH_ANNOTATION = "ringkv.io/spec-hash"
# On a pod template, so on its pods: the hash of the template; a pod with another one is yet to be replaced.
TEMPLATE_HASH_ANNOTATION = "ringkv.io/template-hash"
# On a KVCluster: "true" makes a cluster without spec.image take the operator's current default image.
UPGRADE_IMAGE_ANNOTATION = "ringkv.io/upgrade-image"
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


# -- rollout, pod by pod ---------------------------------------------------------------------------------------

ROLLING, WAITING, SETTLING = "Rolling", "WaitingForRing", "Settling"  # status.rollout.phase
EPOCH = "1970-01-01T00:00:00+00:00"


def size(sts: Mapping[str, Any]) -> int:
    return int((sts.get("spec") or {}).get("replicas", 1))


def partition(sts: Mapping[str, Any]) -> int:
    """The StatefulSet's RollingUpdate partition: pods from this ordinal up get its current template."""
    strategy = (sts.get("spec") or {}).get("updateStrategy") or {}
    return int((strategy.get("rollingUpdate") or {}).get("partition") or 0)


def partition_for(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> int:
    """The partition to apply `desired` with: its size when it brings a new pod template (no pod rolls until
    `advance` lowers it), the live one when the template stays, 0 for a new StatefulSet."""
    if live is None:
        return 0
    if template_hash(desired) != template_hash(live):
        return size(desired)
    return min(partition(live), size(desired))


def with_partition(desired: Mapping[str, Any], value: int) -> dict[str, Any]:
    """A copy of `desired` with its RollingUpdate partition set (another update strategy is left alone)."""
    out = copy.deepcopy(dict(desired))
    strategy = dict(out["spec"].get("updateStrategy") or {"type": "RollingUpdate"})
    if strategy.get("type", "RollingUpdate") == "RollingUpdate":
        out["spec"]["updateStrategy"] = {**strategy, "type": "RollingUpdate",
                                         "rollingUpdate": {**(strategy.get("rollingUpdate") or {}),
                                                           "partition": value}}
    return out


@dataclass(frozen=True)
class Roll:
    """Where a StatefulSet's rollout is: `pod` is being replaced (`rolling`), or is the next to roll once the
    partition goes down to `partition` (`pod` "": every pod left already runs the template)."""

    statefulset: str
    pod: str
    rolling: bool
    partition: int
    first: bool = False  # the StatefulSet's first pod to roll: the ring must have settled before it


def roll(sts: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> Roll | None:
    """The StatefulSet's rollout, or None when its partition is down to 0 (the controller does the rest)."""
    name, n = str(sts["metadata"]["name"]), size(sts)
    p = min(partition(sts), n)
    if p <= 0:
        return None
    current = template_hash(sts)
    by_pod = {str(x["metadata"]["name"]): x for x in pods_of(sts, pods)}

    def done(k: int) -> bool:
        pod = by_pod.get(f"{name}-{k}")
        return pod is not None and pod_ready(pod) and pod_template_hash(pod) == current

    behind = [k for k in reversed(range(p, n)) if not done(k)]
    if behind:
        return Roll(name, f"{name}-{behind[0]}", True, p)
    k = p - 1
    while k >= 0 and done(k):  # recreated on the template already: nothing to wait for
        k -= 1
    return Roll(name, f"{name}-{k}" if k >= 0 else "", False, max(k, 0), first=p == n)


def ring_gate(nodes: Mapping[str, NodeView], settled: str, max_hints: int) -> str:
    """'' when the next pod may roll: the ring is settled (`settled`, from `scaling.settled`: every node ready
    and normal, seeing every other up and normal, one agreed ring), no node streams ranges in, and the nodes
    hold at most `max_hints` hints in all (each asked); else why not."""
    if settled:
        return settled
    streaming = sorted(p for p, v in nodes.items()
                       if any(r.get("state") in ("pending", "streaming", "verifying") for r in v.streaming))
    if streaming:
        return f"ranges are streaming into {', '.join(streaming)}"
    unknown = sorted(p for p, v in nodes.items() if v.hints is None)
    if unknown:
        return f"{', '.join(unknown)} did not say how many hints it holds"
    held = {p: sum(v.hints.values()) for p, v in nodes.items() if v.hints}
    if sum(held.values()) > max_hints:
        return (f"{sum(held.values())} hints wait for delivery ("
                + ", ".join(f"{p}: {n}" for p, n in sorted(held.items()))
                + f"), more than the {max_hints} a rollout allows (RINGKV_OPERATOR_ROLLOUT_MAX_PENDING_HINTS)")
    return ""


def seconds_between(earlier: str, later: str) -> float:
    """Seconds from one RFC 3339 time to another (0 when either is missing or unreadable)."""
    try:
        a, b = (datetime.datetime.fromisoformat(t) for t in (earlier, later))
    except (TypeError, ValueError):
        return 0.0
    utc = datetime.UTC
    return (b.replace(tzinfo=b.tzinfo or utc) - a.replace(tzinfo=a.tzinfo or utc)).total_seconds()


def _later(*times: str) -> str:
    """The latest of the RFC 3339 times ("" counts as the earliest)."""
    return max(times, key=lambda t: seconds_between(EPOCH, t) if t else float("-inf"))


def ready_since(pods: Sequence[Mapping[str, Any]]) -> str:
    """When the last of the pods became ready ("" if none is): how long every pod has been ready."""
    times = [str(c.get("lastTransitionTime") or "") for p in pods if pod_ready(p)
             for c in (p.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"]
    return _later("", *times)


@dataclass(frozen=True)
class Advance:
    record: dict[str, Any] | None  # status.rollout after this pass
    partition: int | None = None  # lower the StatefulSet's (`record`'s) partition to this now
    started: bool = False  # a pod starts rolling in this pass (an event)


def advance(r: Roll | None, gate: str | None, previous: Mapping[str, Any] | None, pods_ready_since: str,
            now: str, settle_s: float) -> Advance:
    """The rollout's next step: `r` the StatefulSet rolling (None: no rollout), `gate` the `ring_gate`
    verdict (None: not asked, as when `r` is rolling), `previous` status.rollout."""
    if r is None:
        return Advance(None)
    if not r.pod:
        return Advance(None, r.partition)
    prev = dict(previous or {})
    if r.rolling:
        return Advance(_record(r, ROLLING, f"replacing {r.pod} with the new template; waiting for it to be ready",
                               prev, now, healthy=False))
    if gate:
        return Advance(_record(r, WAITING, f"before rolling {r.pod}: {gate}", prev, now, healthy=False))
    healthy_since = now if prev.get("ringHealthy") is False else str(prev.get("healthySince") or "")
    since = _later(healthy_since, pods_ready_since)
    stood = seconds_between(since, now) if since else settle_s
    if r.first and stood < settle_s:
        return Advance(_record(r, SETTLING, f"before rolling {r.pod}, the first of StatefulSet {r.statefulset}: "
                                            f"the ring has been healthy for {stood:.0f} of {settle_s:.0f} s", prev,
                               now, healthy=True, healthy_since=healthy_since))
    rolling = Roll(r.statefulset, r.pod, True, r.partition)
    return Advance(_record(rolling, ROLLING, f"rolling {r.pod} to the new template", prev, now, healthy=False),
                   r.partition, started=True)


def _record(r: Roll, phase: str, message: str, prev: Mapping[str, Any], now: str, healthy: bool,
            healthy_since: str = "") -> dict[str, Any]:
    same = prev.get("statefulSet") == r.statefulset and prev.get("pod") == r.pod \
        and (prev.get("phase") == ROLLING) == (phase == ROLLING)
    out: dict[str, Any] = {"statefulSet": r.statefulset, "pod": r.pod, "phase": phase,
                           "since": str(prev["since"]) if same and prev.get("since") else now,
                           "message": message, "partition": r.partition, "ringHealthy": healthy}
    if healthy and healthy_since:
        out["healthySince"] = healthy_since
    return out


def stuck(record: Mapping[str, Any] | None, now: str, deadline_s: float) -> str:
    """Why the rollout is stuck ("" while it is not): at one pod for longer than the deadline."""
    if not record or not record.get("since"):
        return ""
    age = seconds_between(str(record["since"]), now)
    if age < deadline_s:
        return ""
    pod = record.get("pod")
    what = f"{pod} has not become ready on the new template" if record.get("phase") == ROLLING \
        else f"{pod} has waited to roll"
    return (f"{what} for {age:.0f} s (RINGKV_OPERATOR_ROLLOUT_DEADLINE_SECONDS {deadline_s:.0f}), StatefulSet "
            f"{record.get('statefulSet')}: {record.get('message', '')}")


# -- the node image ----------------------------------------------------------------------------------------------


def node_image(spec_image: str | None, recorded: str | None, live: str | None, default: str,
               upgrade: bool) -> str:
    """The nodes' image: spec.image; else the one the cluster runs (status.nodeImage, or, when an operator
    that kept no record built it, its StatefulSet's), so a new operator default restarts no cluster; the
    operator's default for a new cluster, or when the KVCluster asks for it (UPGRADE_IMAGE_ANNOTATION)."""
    if spec_image:
        return spec_image
    if upgrade:
        return default
    return recorded or live or default


def image_in_use(wanted: str, applied: Sequence[str | None], recorded: str | None, live: str | None) -> str:
    """status.nodeImage: the image wanted once a StatefulSet has been given it; until then (a change refused or
    waiting its turn) the one recorded, or the one the StatefulSets run."""
    if wanted in applied:
        return wanted
    return recorded or live or wanted


def container_image(sts: Mapping[str, Any], container: str) -> str | None:
    for c in (((sts.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []:
        if c.get("name") == container and c.get("image"):
            return str(c["image"])
    return None


# -- ownership and deletion --------------------------------------------------------------------------------------


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether one of the object's ownerReferences is the KVCluster of that uid: the uid, not the name (an
    object of another, or of an earlier KVCluster of the same name, is not this one's)."""
    return bool(uid) and any(str(r.get("uid", "")) == uid and r.get("kind") == specmod.KIND
                             for r in (obj.get("metadata") or {}).get("ownerReferences") or [])


def owned(objects: Sequence[Mapping[str, Any]], uid: str) -> list[Mapping[str, Any]]:
    """The objects whose ownerReferences name the KVCluster of that uid (labels alone could be anyone's)."""
    return [o for o in objects if owned_by(o, uid)]


def volume_claims(name: str, claims: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The cluster's nodes' claims: made from the claim template "data" of its StatefulSets, data-NAME-...-K."""
    pattern = re.compile(re.escape(f"data-{name}-") + r"([a-z0-9-]+-)?\d+")
    return [c for c in claims if pattern.fullmatch(str(c["metadata"]["name"]))]
