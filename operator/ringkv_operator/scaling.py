"""Scaling, pure: which node to add or remove next, and what to do about it in this pass. No I/O: the
handlers observe (StatefulSets, pods, claims, every node's own admin API), call `step`, write the status it
returns, and only then carry out its actions, so a crash between the two resumes from the status.

The sizes the operator stands by are `committed` (status.statefulSets: StatefulSet name -> replicas). They
change one node at a time, and only here; the live StatefulSets are patched to them, never the other way
round (a StatefulSet scaled by hand is drift: scaled back, or, for a node that already joined, decommissioned
first). Nodes are added in `plan.node_order` of the wanted shape (so racks grow round-robin) and removed in
reverse node order of the committed one (the highest ordinal of the last rack first, as a StatefulSet can only
remove its highest ordinal).

One operation at a time, recorded in status.operation::

    ScaleUp    PreparingVolume   a claim left by an earlier decommission of this pod is deleted (its node.json
                                 says `left`: the node would stay out of the ring)
               AddingNode        committed + 1, the StatefulSet patched; waiting for the pod's node to answer
               Joining           the node streams its ranges (progress from its /admin/v1/node); done when it
                                 is normal on every node's ring and every ring agrees
    ScaleDown  Decommissioning   re-read the node: normal -> POST /admin/v1/decommission; leaving -> follow
                                 its operation; left -> next
               Verifying         every other node's ring is without it (left), and they agree
               RemovingNode      re-read: the node says `left` (or is gone and every ring says so); then its
                                 claim is marked decommissioned and the StatefulSet lowered
               RemovingVolume    the pod is gone; with deletionPolicy Delete its claim is deleted

A spec change made during an operation waits for it to end (the next node is chosen from the spec then).
Before a node is added or removed, every committed node must be ready, normal and agree on the ring.
Refused (condition ScalingRefused, nothing moves): fewer nodes than the replication factor, a shrink the
remaining volumes cannot hold, a size change and a pod template change in one go, an immutable field changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ringkv_operator import plan
from ringkv_operator import spec as specmod

DECOMMISSIONED_ANNOTATION = "ringkv.io/decommissioned"  # on a claim whose node has left the ring
TERMINATING = "ringkv.io/terminating"  # not an annotation: how `Inputs.claims` marks a claim being deleted
SCALE_UP, SCALE_DOWN = "ScaleUp", "ScaleDown"
# Shrinking is refused when the data of the nodes would fill more than this share of the smallest remaining
# volume (the data spreads evenly over the remaining nodes; compaction needs room on top).
CAPACITY_HEADROOM = 0.8


@dataclass(frozen=True)
class NodeView:
    """One node as it describes itself (/admin/v1/node, /admin/v1/members, its decommission operation, the
    hints it holds)."""

    pod: str
    reachable: bool = False
    mode: str = ""
    view: str = ""  # digest of its ring (and future ring)
    agreed: bool = False  # every live member gossips the same view
    members: Mapping[str, str] = field(default_factory=dict)  # node id -> status, as its gossip sees them
    up: frozenset[str] = frozenset()  # members it sees up
    streaming: Sequence[Mapping[str, Any]] = ()  # the ranges it streams in (a joiner)
    storage: Mapping[str, int] = field(default_factory=dict)  # sstable_bytes, disk_total_bytes, ...
    decommission: Mapping[str, Any] | None = None  # its latest decommission operation
    hints: Mapping[str, int] | None = None  # hints it holds, by target node (/admin/v1/hints); None: not asked


@dataclass(frozen=True)
class Inputs:
    spec: specmod.ClusterSpec
    committed: Mapping[str, int]  # status.statefulSets
    live: Mapping[str, int]  # the live StatefulSets' spec.replicas
    pods: Mapping[str, bool]  # existing pod (terminating ones too) -> ready
    claims: Mapping[str, Mapping[str, str]]  # claim name -> its annotations (+ TERMINATING while deleted)
    operation: Mapping[str, Any] | None  # status.operation
    nodes: Mapping[str, NodeView]  # by pod (only those asked)
    now: str
    template_changed: bool = False  # some live StatefulSet's template differs from the spec's
    target: Mapping[str, int] | None = None  # status.target: the shape a scaling in progress goes to
    immutable: str | None = None  # why the spec changed a field that cannot change, if it did
    rack_of: Mapping[str, str | None] = field(default_factory=dict)  # StatefulSet -> rack, for removed racks
    zones: Mapping[str, str | None] = field(default_factory=dict)  # rack -> zone it was placed in


@dataclass(frozen=True)
class Action:
    """I/O for the handler: `decommission` POD, `delete_claim` / `mark_claim` NAME, `delete_statefulset` NAME."""

    kind: str
    name: str


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Refusal:
    reason: str  # BelowReplicationFactor | InsufficientCapacity | TwoChangesAtOnce | ImmutableFieldChanged
    message: str


@dataclass(frozen=True)
class Step:
    committed: dict[str, int]  # sizes to stand by from now on (status.statefulSets)
    replicas: dict[str, int]  # StatefulSet sizes to apply now (live ones patched, missing ones created)
    operation: dict[str, Any] | None = None  # status.operation after this pass
    finished: dict[str, Any] | None = None  # status.lastOperation, when an operation ended in this pass
    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()
    refusal: Refusal | None = None
    waiting: str = ""  # why the operation (or the next one) does not move, for the condition's message
    target: dict[str, int] | None = None  # status.target

    @property
    def rollout_allowed(self) -> bool:
        """Whether pod template changes may roll now: not while the size changes or a change is refused."""
        return self.operation is None and self.target is None and self.refusal is None


def wanted_sizes(spec: specmod.ClusterSpec) -> dict[str, int]:
    return {r.name: r.replicas for r in plan.desired_shape(spec)}


def ordinal(pod: str) -> int:
    return int(pod.rsplit("-", 1)[1])


def statefulset_of(pod: str) -> str:
    return pod.rsplit("-", 1)[0]


def claim_of(pod: str) -> str:
    return f"data-{pod}"


def shape_of(spec: specmod.ClusterSpec, sizes: Mapping[str, int], rack_of: Mapping[str, str | None] | None = None,
             zones: Mapping[str, str | None] | None = None) -> tuple[plan.RackSet, ...]:
    """RackSets for the sizes, in the spec's rack order (StatefulSets of racks the spec dropped last, with the
    rack and zone they were placed with)."""
    by_name = {f"{spec.name}-{r.name}": r for r in spec.racks}
    order = [f"{spec.name}-{r.name}" for r in spec.racks] if spec.racks else [spec.name]
    names = [n for n in order if n in sizes] + sorted(n for n in sizes if n not in order)
    out = []
    for name in names:
        rack = by_name.get(name)
        if rack is not None:
            out.append(plan.RackSet(name, sizes[name], rack.name, rack.zone))
        else:
            rack_name = (rack_of or {}).get(name)
            out.append(plan.RackSet(name, sizes[name], rack_name, (zones or {}).get(rack_name or "")))
    return tuple(out)


def pods_of(sizes: Mapping[str, int]) -> set[str]:
    return {f"{name}-{k}" for name, size in sizes.items() for k in range(size)}


def initial_committed(spec: specmod.ClusterSpec, live: Mapping[str, int]) -> dict[str, int]:
    """What to stand by when the status records nothing: the live StatefulSets, else (a new cluster) nothing
    yet — `step` then builds it."""
    return {name: size for name, size in live.items()}


# -- the ring -----------------------------------------------------------------------------------------------------


def settled(nodes: Mapping[str, NodeView], pods: Mapping[str, bool], members: set[str]) -> str:
    """'' when every one of `members` (pods) is ready, normal, sees all of them normal and up, and all agree on
    one ring; else why not."""
    views = set()
    for pod in sorted(members):
        v = nodes.get(pod)
        if not pods.get(pod):
            return f"{pod} is not ready"
        if v is None or not v.reachable:
            return f"{pod} does not answer"
        if v.mode != "normal":
            return f"{pod} is {v.mode or 'starting'}"
        if not v.agreed:
            return f"{pod} does not see one ring on every node yet"
        missing = sorted(m for m in members if v.members.get(m) != "normal" or (m != pod and m not in v.up))
        if missing:
            return f"{pod} does not see {', '.join(missing)} up and normal"
        views.add(v.view)
    if len(views) > 1:
        return "the nodes' rings differ"
    return ""


def _left_everywhere(nodes: Mapping[str, NodeView], others: set[str], pod: str) -> str:
    """'' when every other node answers, agrees, and its ring has `pod` left (or not at all)."""
    views = set()
    for other in sorted(others):
        v = nodes.get(other)
        if v is None or not v.reachable:
            return f"{other} does not answer"
        if v.members.get(pod) not in (None, "left"):
            return f"{other} still sees {pod} {v.members.get(pod)}"
        if not v.agreed:
            return f"{other} does not see one ring on every node yet"
        views.add(v.view)
    if len(views) > 1:
        return "the nodes' rings differ"
    return ""


def _absent_everywhere(nodes: Mapping[str, NodeView], members: set[str], pod: str) -> bool:
    """Whether every one of `members` answers and none has `pod` in its ring (but as left): evidence that the
    pod's node never joined (or is gone), not the lack of an answer."""
    return bool(members) and all(
        (v := nodes.get(m)) is not None and v.reachable and v.members.get(pod) in (None, "left") for m in members)


# -- progress -----------------------------------------------------------------------------------------------------


def join_progress(view: NodeView | None) -> dict[str, Any]:
    ranges = list(view.streaming) if view is not None else []
    return {"rangesTotal": len(ranges), "rangesDone": sum(1 for r in ranges if r.get("state") == "done"),
            "keys": sum(int(r.get("keys") or 0) for r in ranges),
            "bytes": sum(int(r.get("bytes") or 0) for r in ranges)}


def decommission_progress(view: NodeView | None) -> dict[str, Any]:
    op = (view.decommission if view is not None else None) or {}
    p = op.get("progress") or {}
    return {"phase": str(p.get("phase", "")), "rangesTotal": int(p.get("ranges_total") or 0),
            "rangesDone": int(p.get("ranges_done") or 0), "keys": int(p.get("keys") or 0),
            "bytes": int(p.get("bytes") or 0), "verifyRepaired": int(p.get("verify_repaired") or 0)}


def summary(op: Mapping[str, Any]) -> str:
    verb = "adding" if op["kind"] == SCALE_UP else "removing"
    progress = op.get("progress") or {}
    ranges = f", {progress['rangesDone']}/{progress['rangesTotal']} ranges" if progress.get("rangesTotal") else ""
    return f"{verb} {op['node']} ({op['phase']}{ranges}): {op['from']} -> {op['to']} nodes"


# -- the step -------------------------------------------------------------------------------------------------------


def step(i: Inputs) -> Step:
    # StatefulSets scaled to 0 and deleted are forgotten
    committed = {name: size for name, size in i.committed.items() if size > 0 or name in i.live}
    wanted = wanted_sizes(i.spec)
    if i.operation:
        spec_op = i.operation.get("reason") != "Drift"
        return _continue(i, committed, dict(i.operation), target=_target(i) or (wanted if spec_op else None))
    replicas = dict(committed)

    # Drift first: a StatefulSet above its committed size runs pods the operator never asked for.
    for name in sorted(i.live):
        extra = i.live[name] - committed.get(name, 0)
        if extra > 0 and committed.get(name, 0) < i.live[name]:
            pod = f"{name}-{i.live[name] - 1}"
            op = _start(i, SCALE_DOWN, pod, "Drift", sum(committed.values()) + extra,
                        sum(committed.values()) + extra - 1, i.live[name], "Decommissioning")
            return _continue(i, committed, op, (Event("Warning", "Drift", f"StatefulSet {name} was scaled to "
                                                  f"{i.live[name]} outside the KVCluster (which has "
                                                  f"{committed.get(name, 0)}): removing {pod}"),))
    if i.immutable:
        return Step(committed, replicas, refusal=Refusal("ImmutableFieldChanged", i.immutable),
                    target=_target(i))
    if committed == wanted:
        return Step(committed, replicas)
    if i.spec.replicas < i.spec.replication_factor:
        return Step(committed, replicas, refusal=Refusal("BelowReplicationFactor", (
            f"spec.replicas cannot go below spec.replicationFactor ({i.spec.replication_factor}): each key is "
            f"stored on that many distinct nodes; keep spec.replicas at {i.spec.replication_factor} or more")),
            target=_target(i))
    if not committed and not i.spec.racks:
        # A new cluster of one StatefulSet: OrderedReady starts its nodes one after another, each joining
        # only once the one before is ready.
        return Step(wanted, dict(wanted), events=(Event("Normal", "Creating",
                                                        f"creating {i.spec.replicas} nodes"),))
    if i.template_changed and i.target != wanted:
        return Step(committed, replicas, refusal=Refusal("TwoChangesAtOnce", (
            f"spec changes the size ({sum(committed.values())} -> {i.spec.replicas} nodes) and the pods' "
            "template together; ringkv applies one change at a time: revert one of them, and apply it again "
            "once the other has finished")), target=_target(i))

    current, goal = pods_of(committed), pods_of(wanted)
    adds = [p for p in plan.node_order(shape_of(i.spec, wanted)) if p not in current]
    removes = [p for p in reversed(plan.node_order(shape_of(i.spec, committed, i.rack_of))) if p not in goal]
    if not adds and not removes:  # only empty StatefulSets differ: deleted below
        return Step(committed, replicas, actions=tuple(Action("delete_statefulset", n) for n in sorted(committed)
                                                       if committed[n] == 0 and n not in wanted))
    total = sum(committed.values())
    if adds:
        pod = adds[0]
        name = statefulset_of(pod)
        if committed:
            why = settled(i.nodes, i.pods, current)
            if why:
                return Step(committed, replicas, waiting=f"before adding {pod}: {why}", target=dict(wanted))
        op = _start(i, SCALE_UP, pod, "Spec", total, total + 1, committed.get(name, 0), "PreparingVolume")
        return _continue(i, committed, op, (Event("Normal", "ScalingUp", f"adding {pod}: {total} -> "
                                                  f"{total + 1} nodes (spec.replicas {i.spec.replicas})"),),
                         target=dict(wanted))
    pod = removes[0]
    if total - 1 < i.spec.replication_factor:  # racks dropped below RF
        return Step(committed, replicas, refusal=Refusal("BelowReplicationFactor", (
            f"removing {pod} would leave {total - 1} nodes, fewer than spec.replicationFactor "
            f"({i.spec.replication_factor})")), target=_target(i))
    why = settled(i.nodes, i.pods, current)
    if why:
        return Step(committed, replicas, waiting=f"before removing {pod}: {why}", target=dict(wanted))
    full = _capacity(i.nodes, current, pod)
    if full:
        return Step(committed, replicas, refusal=Refusal("InsufficientCapacity", full), target=_target(i))
    op = _start(i, SCALE_DOWN, pod, "Spec", total, total - 1, committed[statefulset_of(pod)], "Decommissioning")
    return _continue(i, committed, op, (Event("Normal", "ScalingDown", f"removing {pod}: {total} -> {total - 1} "
                                              f"nodes (spec.replicas {i.spec.replicas})"),), target=dict(wanted))


def _target(i: Inputs) -> dict[str, int] | None:
    return dict(i.target) if i.target else None


def _capacity(nodes: Mapping[str, NodeView], current: set[str], leaving: str) -> str:
    stays = current - {leaving}
    known = [nodes[p].storage for p in current if p in nodes and nodes[p].storage]
    if len(known) < len(current) or not stays:
        return ""  # not every node says: the decommission itself fails visibly if a volume fills
    data = sum(int(s.get("sstable_bytes", 0)) for s in known)
    smallest = min(int(nodes[p].storage.get("disk_total_bytes", 0)) for p in stays)
    share = data / len(stays)
    if smallest and share > CAPACITY_HEADROOM * smallest:
        return (f"removing {leaving} would leave {len(stays)} nodes holding {share / 2**30:.1f} GiB each on "
                f"average, more than {CAPACITY_HEADROOM:.0%} of the smallest remaining volume "
                f"({smallest / 2**30:.1f} GiB); grow the volumes or keep spec.replicas")
    return ""


def _start(i: Inputs, kind: str, pod: str, reason: str, from_: int, to: int, sts_from: int,
           phase: str) -> dict[str, Any]:
    return {"kind": kind, "node": pod, "statefulSet": statefulset_of(pod), "phase": phase, "reason": reason,
            "from": from_, "to": to, "statefulSetFrom": sts_from,
            "statefulSetTo": sts_from + (1 if kind == SCALE_UP else -1), "started": i.now, "updated": i.now,
            "progress": {}, "nodeOperation": "", "message": ""}


def _continue(i: Inputs, committed: dict[str, int], op: dict[str, Any], events: tuple[Event, ...] = (),
              target: dict[str, int] | None = None) -> Step:
    target = target if target is not None else _target(i)
    if op["kind"] == SCALE_UP:
        return _scale_up(i, committed, op, events, target)
    return _scale_down(i, committed, op, events, target)


def _moved(i: Inputs, op: dict[str, Any], phase: str, message: str = "", **changes: Any) -> dict[str, Any]:
    out = {**op, "phase": phase, "message": message, **changes}
    if phase != op.get("phase") or changes:
        out["updated"] = i.now
    out["summary"] = summary(out)
    return out


def _done(i: Inputs, committed: dict[str, int], op: dict[str, Any], events: tuple[Event, ...], message: str,
          target: dict[str, int] | None) -> Step:
    finished = {**op, "phase": "Done", "finished": i.now, "result": "Succeeded", "message": message}
    finished["summary"] = f"{'added' if op['kind'] == SCALE_UP else 'removed'} {op['node']}: {op['from']} -> " \
                          f"{op['to']} nodes"
    wanted = wanted_sizes(i.spec)
    reached = committed == wanted
    events = (*events, Event("Normal", "NodeJoined" if op["kind"] == SCALE_UP else "NodeRemoved", message))
    if reached and target is not None:
        events = (*events, Event("Normal", "Scaled", f"the cluster runs the {sum(wanted.values())} nodes spec "
                                                     "asks for"))
    return Step(committed, dict(committed), None, finished, events=events, target=None if reached else target)


def _scale_up(i: Inputs, committed: dict[str, int], op: dict[str, Any], events: tuple[Event, ...],
              target: dict[str, int] | None) -> Step:
    pod, name = op["node"], op["statefulSet"]
    replicas = dict(committed)
    if op["phase"] == "PreparingVolume":
        claim = i.claims.get(claim_of(pod))
        if claim is not None and TERMINATING in claim:
            op = _moved(i, op, "PreparingVolume", f"waiting for {claim_of(pod)} to be deleted")
            return Step(committed, replicas, op, events=events, waiting=op["message"], target=target)
        if claim is not None and DECOMMISSIONED_ANNOTATION in claim:
            op = _moved(i, op, "PreparingVolume", f"deleting {claim_of(pod)}, left by an earlier decommission")
            return Step(committed, replicas, op, actions=(Action("delete_claim", claim_of(pod)),), events=events,
                        target=target)
        committed[name] = op["statefulSetTo"]
        op = _moved(i, op, "AddingNode", f"StatefulSet {name} to {committed[name]} replicas")
        return Step(committed, dict(committed), op, events=(*events, Event("Normal", "AddingNode", op["message"])),
                    target=target)
    committed[name] = max(committed.get(name, 0), op["statefulSetTo"])
    replicas = dict(committed)
    view = i.nodes.get(pod)
    unwanted = pod not in pods_of(wanted_sizes(i.spec))
    if unwanted and (view is None or not view.reachable) and \
            _absent_everywhere(i.nodes, pods_of(committed) - {pod}, pod):
        # The spec no longer wants it and its node never announced itself (a pod that cannot start, say):
        # the operation is cancelled rather than waited on forever.
        committed[name] = op["statefulSetFrom"]
        finished = {**op, "phase": "Cancelled", "finished": i.now, "result": "Cancelled",
                    "message": f"{pod} never joined and the spec no longer asks for it",
                    "summary": f"cancelled adding {pod}"}
        return Step(committed, dict(committed), None, finished,
                    events=(*events, Event("Warning", "ScalingCancelled", finished["message"])), target=target)
    if view is None or not view.reachable:
        op = _moved(i, op, "AddingNode", f"waiting for {pod} to start")
        return Step(committed, replicas, op, events=events, waiting=op["message"], target=target)
    progress = join_progress(view) if view.streaming else op.get("progress") or {}
    if view.mode != "normal":
        op = _moved(i, op, "Joining", f"{pod} is {view.mode or 'starting'}", progress=progress)
        return Step(committed, replicas, op, events=events, target=target)
    why = settled(i.nodes, i.pods, pods_of(committed))
    if why:
        op = _moved(i, op, "Joining", f"{pod} is normal; waiting for the ring to agree: {why}", progress=progress)
        return Step(committed, replicas, op, events=events, waiting=why, target=target)
    op = {**op, "progress": progress}
    return _done(i, committed, op, events, f"{pod} joined: every node's ring has it normal, and they agree",
                 target)


def _scale_down(i: Inputs, committed: dict[str, int], op: dict[str, Any], events: tuple[Event, ...],
                target: dict[str, int] | None) -> Step:
    pod, name = op["node"], op["statefulSet"]
    drift = op.get("reason") == "Drift"
    # Until the pod is removed, its StatefulSet keeps it.
    keep = dict(committed)
    keep[name] = max(committed.get(name, 0), op["statefulSetFrom"])
    others = pods_of(committed) - {pod} if not drift else pods_of(committed)
    view = i.nodes.get(pod) or NodeView(pod)
    here = view.reachable
    phase = op["phase"]

    if phase == "Decommissioning":
        if here and view.mode == "left":
            phase = "Verifying"
        elif drift and not here and pod not in i.pods and _absent_everywhere(i.nodes, others, pod):
            phase = "RemovingNode"  # a pod of the drift that was never created: nothing to hand over
        elif not here and drift:
            # Its node may be about to announce itself: cutting it now could leave a joiner no one finishes.
            op = _moved(i, op, "Decommissioning", f"waiting for {pod} to answer")
            return Step(committed, keep, op, events=events, waiting=op["message"], target=target)
        elif not here:
            left = _left_everywhere(i.nodes, others, pod)
            if left:
                op = _moved(i, op, "Decommissioning", f"waiting for {pod} to answer")
                return Step(committed, keep, op, events=events, waiting=op["message"], target=target)
            phase = "Verifying"
        elif view.mode == "leaving":
            op = _moved(i, op, "Decommissioning", f"{pod} is streaming its ranges away",
                        progress=decommission_progress(view),
                        nodeOperation=str((view.decommission or {}).get("id") or op.get("nodeOperation", "")))
            return Step(committed, keep, op, events=events, target=target)
        elif view.mode == "normal":
            why = settled(i.nodes, i.pods, others | {pod})
            if why:
                op = _moved(i, op, "Decommissioning", f"before decommissioning {pod}: {why}")
                return Step(committed, keep, op, events=events, waiting=why, target=target)
            first = not op.get("nodeOperation")
            op = _moved(i, op, "Decommissioning", f"asking {pod} to decommission",
                        nodeOperation=op.get("nodeOperation") or "requested")
            return Step(committed, keep, op, actions=(Action("decommission", pod),),
                        events=(*events, *((Event("Normal", "Decommissioning", op["message"]),) if first else ())),
                        target=target)
        else:  # joining (a drifted pod), starting, drained, stopping: wait for it to settle
            op = _moved(i, op, "Decommissioning", f"{pod} is {view.mode or 'starting'}; waiting")
            return Step(committed, keep, op, events=events, waiting=op["message"], target=target)

    if phase == "Verifying":
        if here and view.mode not in ("left", "stopping"):
            op = _moved(i, op, "Decommissioning", f"{pod} is {view.mode} again: decommissioning it again")
            return Step(committed, keep, op, events=events, target=target)
        why = _left_everywhere(i.nodes, others, pod)
        if why:
            op = _moved(i, op, "Verifying", f"{pod} has left; waiting for every ring to agree: {why}",
                        progress={**(op.get("progress") or {}), "phase": "left"})
            return Step(committed, keep, op, events=events, waiting=why, target=target)
        phase = "RemovingNode"
        events = (*events, Event("Normal", "NodeLeft", f"{pod} has left every node's ring"))

    if phase == "RemovingNode":
        # Re-read right before the destructive step: the node itself says left, or it is gone and every
        # other ring says so (or, for a drifted pod, it was never created).
        if here and view.mode not in ("left", "stopping"):
            op = _moved(i, op, "Decommissioning", f"{pod} is {view.mode}, not left: decommissioning it again")
            return Step(committed, keep, op, events=events, target=target)
        if not drift:
            committed[name] = op["statefulSetTo"]
        keep = dict(committed)
        keep[name] = op["statefulSetTo"]
        op = _moved(i, op, "RemovingVolume", f"StatefulSet {name} to {keep[name]} replicas")
        mark = (Action("mark_claim", claim_of(pod)),) if claim_of(pod) in i.claims else ()
        return Step(committed, keep, op, actions=mark,
                    events=(*events, Event("Normal", "RemovingNode", op["message"])), target=target)

    # RemovingVolume
    keep = dict(committed)
    keep[name] = op["statefulSetTo"]
    actions: list[Action] = []
    claim = i.claims.get(claim_of(pod))
    if claim is not None and TERMINATING in claim:
        claim = None
    if claim is not None and DECOMMISSIONED_ANNOTATION not in claim:
        actions.append(Action("mark_claim", claim_of(pod)))
    if pod in i.pods:
        op = _moved(i, op, "RemovingVolume", f"waiting for pod {pod} to go")
        return Step(committed, keep, op, actions=tuple(actions), events=events, target=target)
    cleanup = []
    if claim is not None and i.spec.delete_volumes:
        cleanup.append(Action("delete_claim", claim_of(pod)))
    if keep.get(name) == 0 and name not in wanted_sizes(i.spec) and name in i.live:
        cleanup.append(Action("delete_statefulset", name))
    if cleanup:  # the operation ends on a pass that sees them done, so a lost request is sent again
        op = _moved(i, op, "RemovingVolume", "deleting " + ", ".join(a.name for a in cleanup))
        return Step(committed, keep, op, actions=(*actions, *cleanup), events=events, target=target)
    if keep.get(name) == 0 and name not in wanted_sizes(i.spec):
        committed.pop(name, None)
        keep.pop(name, None)
    done = _done(i, committed, op, events, f"{pod} removed" + (
        " and its volume deleted (deletionPolicy Delete)" if i.spec.delete_volumes else
        f"; its volume {claim_of(pod)} is kept, marked decommissioned (deletionPolicy Retain)" if claim is not None
        else ""), target)
    return Step(done.committed, keep if drift else done.replicas, None, done.finished, tuple(actions), done.events,
                target=done.target)

