"""A KVCluster's status, computed from what was observed. Pure: the observations and the time are passed in.

    phase        Creating   until every node has been ready once
                 Running    every node ready, every ring member up
                 Updating   a StatefulSet is rolling a new template over its pods
                 Scaling    a node is being added or removed (status.operation)
                 Degraded   nodes not ready or members down, with no rollout to explain it
                 Failed     the spec cannot be built (the message says why)
    conditions   Available       True while at least max(readQuorum, writeQuorum) nodes are ready
                 Progressing     True while creating or rolling out
                 Degraded        True when nodes are missing or down outside a rollout
                 Scaling         True while the size moves towards spec (an operation in flight, or the next
                                 one waiting for the ring to settle)
                 Rebalancing     True while data moves: a joining node streams in, a leaving one streams out
                 ScalingRefused  True while the size change spec asks for is refused (the reason says why:
                                 BelowReplicationFactor, InsufficientCapacity, TwoChangesAtOnce,
                                 ImmutableFieldChanged); the running size is kept
                 Paused          True while the KVCluster is annotated ringkv.io/paused: "true" (nothing is
                                 reconciled; the rest of the status is left as it was)
                 ReconcileError  True when the last pass could not do all it had to: the Kubernetes API refused
                                 a request (reason Forbidden, QuotaExceeded, Invalid, Conflict, ApiError; the
                                 message is the API's), or an object of the cluster's name is not the
                                 cluster's (ForeignObject: left alone); False again after a pass that succeeds
    size, statefulSets   the nodes the operator stands by, in all and per StatefulSet (`scaling`)
    operation            the node being added or removed: kind, node, phase, progress, started, ...
    lastOperation        the last one that ended, with finished and result
    target               the per-StatefulSet sizes a size change in progress goes to
    rollout              where a rollout is (`plan.advance`): statefulSet, pod, phase (Rolling, WaitingForRing,
                         Settling), since, message, partition, ringHealthy, healthySince; absent when none runs.
                         Degraded is True with reason RolloutStuck when it has been at one pod past the deadline
    nodeImage            the node image the cluster's pods were given (`plan.node_image`)

Conditions follow metav1.Condition; a condition's lastTransitionTime changes only when its status does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ringkv_operator import plan, resources, scaling
from ringkv_operator import spec as specmod

CONDITION_TYPES = ("Available", "Progressing", "Degraded", "Scaling", "Rebalancing", "ScalingRefused", "Paused",
                   "ReconcileError")
PAUSED_ANNOTATION = "ringkv.io/paused"


@dataclass(frozen=True)
class Observed:
    """What the operator saw of one cluster in one pass."""

    statefulsets: Sequence[Mapping[str, Any]] = ()
    pods: Sequence[Mapping[str, Any]] = ()
    members: Sequence[Mapping[str, Any]] | None = None  # a node's /admin/v1/members "members"; None: no answer
    members_error: str = ""
    pending_rollout: Sequence[str] = field(default_factory=tuple)  # StatefulSets whose new template waits
    step: scaling.Step | None = None  # the scaling policy's verdict in this pass
    rollout: Mapping[str, Any] | None = None  # status.rollout after this pass (`plan.advance`)
    stuck: str = ""  # why the rollout is stuck (`plan.stuck`), "" when it is not
    foreign: Sequence[str] = ()  # objects of the cluster's names that are not the cluster's ("Kind name")
    ring_agreed: bool | None = None  # every live member gossips one ring (`nodeapi.ring_agreed`); None: unknown


def members_summary(members: Sequence[Mapping[str, Any]], pods: set[str]) -> list[dict[str, Any]]:
    """status.members from /admin/v1/members: node ids are pod names."""
    out = []
    for m in sorted(members, key=lambda m: str(m.get("node_id", ""))):
        if m.get("status") == "left":
            continue  # decommissioned or removed: no longer a member, whatever gossip still remembers
        node_id = str(m.get("node_id", ""))
        if abandoned_join(m, pods):
            continue  # a join that stopped before it took tokens, its pod gone: never part of the ring
        item: dict[str, Any] = {"nodeId": node_id, "host": str(m.get("host", "")), "status": str(m.get("status", "")),
                                "up": bool(m.get("up")), "rack": str(m.get("rack", "")),
                                "tokens": int(m.get("tokens") or 0)}
        if node_id in pods:
            item["pod"] = node_id
        out.append(item)
    return out


def abandoned_join(member: Mapping[str, Any], pods: set[str]) -> bool:
    """A member (as /admin/v1/members gives it) gossip still remembers joining, without tokens, down, whose pod
    is gone: a join that stopped before it took any part of the ring (a node added by hand and cut again at
    once). It owns nothing and holds no data: not a member to show, nor a reason to call the cluster degraded."""
    return (member.get("status") == "joining" and not member.get("tokens") and not member.get("up")
            and str(member.get("node_id", "")) not in pods)


def condition(previous: Sequence[Mapping[str, Any]], type_: str, status: bool, reason: str, message: str,
              generation: int | None, now: str) -> dict[str, Any]:
    value = "True" if status else "False"
    before = next((c for c in previous if c.get("type") == type_), None)
    since = before["lastTransitionTime"] if before and before.get("status") == value \
        and before.get("lastTransitionTime") else now
    out = {"type": type_, "status": value, "lastTransitionTime": since, "reason": reason, "message": message}
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def compute(spec: specmod.ClusterSpec, decision: plan.Decision, observed: Observed,
            previous: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The whole status (every key, so a merge patch replaces it)."""
    pods = [p for p in observed.pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    names = {str(p["metadata"]["name"]) for p in pods}
    step = observed.step
    op = step.operation if step is not None else None
    moving = {str(op["node"])} if op else set()  # the node being added or removed is expected to be away
    wanted, ready = decision.replicas, sum(1 for p in pods if plan.pod_ready(p))
    expected = set(plan.node_order(decision.shape)) - moving
    not_ready = sorted(expected - {str(p["metadata"]["name"]) for p in pods if plan.pod_ready(p)})
    members = members_summary(observed.members or (), names)
    down = sorted(m["nodeId"] for m in members
                  if (not m["up"] or m["status"] != "normal") and m["nodeId"] not in moving)
    absent = sorted(expected - {m["nodeId"] for m in members}) if observed.members is not None else []
    rollout = sorted({str(s["metadata"]["name"]) for s in observed.statefulsets if plan.rolling(s, pods)}
                     | set(observed.pending_rollout))
    previous_phase = previous.get("phase") or "Creating"
    # A racked cluster is created one node at a time: creating until the first target is reached.
    creating = previous_phase in ("Creating", "Failed") and (ready < wanted or bool(step and step.target))
    degraded = not creating and not rollout and (bool(not_ready) or bool(down) or bool(absent))
    degraded = degraded or bool(observed.stuck)

    if creating:
        phase = "Creating"
    elif op or (step is not None and step.target and step.refusal is None):
        phase = "Scaling"
    elif rollout:
        phase = "Updating"
    elif degraded:
        phase = "Degraded"
    else:
        phase = "Running"

    before = previous.get("conditions") or []
    gen = spec.generation
    available = ready >= max(1, spec.quorum)
    conditions = [
        condition(before, "Available", available, "QuorumReachable" if available else "TooFewNodesReady",
                  f"{ready} of {wanted} nodes ready; requests at R={spec.read_quorum}, W={spec.write_quorum} "
                  f"need {spec.quorum}", gen, now),
        condition(before, "Progressing", creating or bool(rollout) or bool(op),
                  "Creating" if creating else "Scaling" if op else _rollout_reason(observed.rollout) if rollout
                  else "Complete",
                  f"creating: {ready} of {wanted} nodes ready" if creating
                  else str(op.get("summary", "")) if op
                  else f"rolling out a new template: {', '.join(rollout)}" + (
                      f"; {observed.rollout['message']}" if observed.rollout else "") if rollout
                  else "every StatefulSet runs the current template", gen, now),
        condition(before, "Degraded", degraded,
                  "RolloutStuck" if observed.stuck else _degraded_reason(not_ready, down, absent) if degraded
                  else "AsExpected",
                  observed.stuck if observed.stuck
                  else _degraded_message(ready, wanted, not_ready, down, absent, observed.members_error) if degraded
                  else "all nodes ready" + ("" if observed.members is not None else
                                            f"; ring members unknown: {observed.members_error or 'no node answered'}"),
                  gen, now),
        *scaling_conditions(spec, decision, step, before, now),
        condition(before, "Paused", False, "Reconciling",
                  f'the operator reconciles the cluster ({PAUSED_ANNOTATION}: "true" pauses it)', gen, now),
        _foreign_condition(observed.foreign, before, gen, now),
    ]
    out: dict[str, Any] = {"replicas": len(pods), "readyReplicas": ready, "selector": resources.selector(spec),
                           "phase": phase, "conditions": conditions, "members": members,
                           "ringAgreed": observed.ring_agreed,
                           "rollout": dict(observed.rollout) if observed.rollout else None}
    if step is not None:
        out.update(size=sum(step.committed.values()), statefulSets=dict(step.committed), operation=op,
                   target=step.target)
        if step.finished is not None:
            out["lastOperation"] = step.finished
    if gen is not None:
        out["observedGeneration"] = gen
    return out


def scaling_conditions(spec: specmod.ClusterSpec, decision: plan.Decision, step: scaling.Step | None,
                       before: Sequence[Mapping[str, Any]], now: str) -> list[dict[str, Any]]:
    gen = spec.generation
    op = step.operation if step is not None else None
    refusal = step.refusal if step is not None else None
    size = sum(step.committed.values()) if step is not None else decision.replicas
    moving = bool(op) or bool(step is not None and step.target and not refusal)
    if op:
        scaling_reason = "ScalingUp" if op["kind"] == scaling.SCALE_UP else "ScalingDown"
        scaling_message = str(op.get("summary", "")) + (f"; {op['message']}" if op.get("message") else "")
    elif moving and step is not None:
        scaling_reason, scaling_message = "WaitingForRing", step.waiting or "the next node is about to be chosen"
    elif refusal:
        scaling_reason, scaling_message = "Refused", refusal.message
    else:
        scaling_reason, scaling_message = "SizeMatchesSpec", f"the cluster runs the {size} nodes spec asks for"
    streaming = op is not None and op.get("phase") in ("Joining", "Decommissioning", "Verifying")
    rebalance_reason = ("StreamingRanges" if op and op.get("phase") != "Verifying" else "Verifying") \
        if streaming else "Balanced"
    progress = (op or {}).get("progress") or {}
    rebalance_message = (f"{op['node'] if op else ''}: {progress.get('rangesDone', 0)}/"
                         f"{progress.get('rangesTotal', 0)} ranges, {progress.get('keys', 0)} keys") \
        if streaming else "no data is moving"
    if refusal:
        refused_reason, refused_message = refusal.reason, refusal.message
    elif step is None or not moving:
        refused_reason, refused_message = "SizeMatchesSpec", f"the cluster runs the {size} nodes spec asks for"
    else:
        refused_reason, refused_message = "Accepted", f"scaling from {size} to {spec.replicas} nodes"
    return [
        condition(before, "Scaling", moving, scaling_reason, scaling_message, gen, now),
        condition(before, "Rebalancing", streaming, rebalance_reason, rebalance_message, gen, now),
        condition(before, "ScalingRefused", refusal is not None, refused_reason, refused_message, gen, now),
    ]


def _rollout_reason(record: Mapping[str, Any] | None) -> str:
    phase = (record or {}).get("phase")
    return str(phase) if phase in (plan.WAITING, plan.SETTLING) else "RollingUpdate"


def _foreign_condition(foreign: Sequence[str], before: Sequence[Mapping[str, Any]], gen: int | None,
                       now: str) -> dict[str, Any]:
    if foreign:
        return condition(before, "ReconcileError", True, "ForeignObject", foreign_message(foreign), gen, now)
    return condition(before, "ReconcileError", False, "Reconciled", "the last pass did all it had to", gen, now)


def foreign_message(foreign: Sequence[str]) -> str:
    one = len(foreign) == 1
    return (f"{', '.join(foreign)} already exist{'s' if one else ''} and {'is' if one else 'are'} not owned by this "
            "KVCluster (no ownerReference with its uid): the operator leaves "
            f"{'it' if one else 'them'} alone and builds nothing on {'it' if one else 'them'}; delete or rename "
            f"{'it' if one else 'them'}")


def stuck_message(status: Mapping[str, Any]) -> str:
    """The message of Degraded while it is True for a stuck rollout, else ""."""
    degraded = find(status.get("conditions") or [], "Degraded")
    stuck = degraded.get("status") == "True" and degraded.get("reason") == "RolloutStuck"
    return str(degraded.get("message", "")) if stuck else ""


# -- what the operator writes instead of a whole status --------------------------------------------------------


def _replace(conditions: Sequence[Mapping[str, Any]], new: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The conditions with `new` in place of the one of its type (or added)."""
    out = [dict(c) for c in conditions if c.get("type") != new["type"]]
    return [*out, dict(new)]


def paused(previous: Mapping[str, Any], generation: int | None, now: str) -> dict[str, Any]:
    """The status of a paused KVCluster: what it was, with Paused=True."""
    before = previous.get("conditions") or []
    return {"conditions": _replace(before, condition(
        before, "Paused", True, "PausedByAnnotation",
        f'{PAUSED_ANNOTATION} is "true": the operator creates, patches and deletes nothing of this cluster until '
        "the annotation is removed", generation, now))}


def is_paused(body: Mapping[str, Any]) -> bool:
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(PAUSED_ANNOTATION, "")).strip().lower() == "true"


def api_error_reason(code: int, message: str) -> str:
    """The ReconcileError reason for an answer of the Kubernetes API."""
    if code == 403:
        return "QuotaExceeded" if "exceeded quota" in message else "Forbidden"
    return {409: "Conflict", 422: "Invalid", 404: "NotFound"}.get(code, "ApiError")


def reconcile_error(previous: Mapping[str, Any], reason: str, message: str, generation: int | None,
                    now: str) -> dict[str, Any]:
    """The status after a pass the Kubernetes API stopped: what it was, with ReconcileError=True."""
    before = previous.get("conditions") or []
    return {"conditions": _replace(before, condition(before, "ReconcileError", True, reason, message[:32768],
                                                     generation, now))}


def _degraded_reason(not_ready: Sequence[str], down: Sequence[str], absent: Sequence[str]) -> str:
    if not_ready:
        return "NodesNotReady"
    return "MembersDown" if down else "MembersMissing"


def _degraded_message(ready: int, wanted: int, not_ready: Sequence[str], down: Sequence[str],
                      absent: Sequence[str], error: str) -> str:
    parts = [f"{ready} of {wanted} nodes ready" + (f" (not ready: {', '.join(not_ready)})" if not_ready else "")]
    if down:
        parts.append(f"down or not normal in the ring: {', '.join(down)}")
    if absent:
        parts.append(f"not in the ring: {', '.join(absent)}")
    if error:
        parts.append(f"ring members unknown: {error}")
    return "; ".join(parts)


def failed(spec_error: str, previous: Mapping[str, Any], generation: int | None, now: str) -> dict[str, Any]:
    """The status of a KVCluster whose spec cannot be built."""
    before = previous.get("conditions") or []
    out: dict[str, Any] = {
        "phase": "Failed",
        "conditions": [condition(before, "Available", False, "InvalidSpec", spec_error, generation, now),
                       condition(before, "Progressing", False, "InvalidSpec", spec_error, generation, now),
                       condition(before, "Degraded", True, "InvalidSpec", spec_error, generation, now)],
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def find(conditions: Sequence[Mapping[str, Any]], type_: str) -> Mapping[str, Any]:
    return next((c for c in conditions if c.get("type") == type_), {})


def newly_true(new: Mapping[str, Any], old: Mapping[str, Any], type_: str) -> str | None:
    """The condition's message if it turns True with `new` (for a one-off event), else None."""
    now, before = find(new.get("conditions") or [], type_), find(old.get("conditions") or [], type_)
    if now.get("status") == "True" and before.get("status") != "True":
        return str(now.get("message", ""))
    return None


def changed(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """Whether writing `new` changes anything (keys the operator does not write are ignored)."""
    return any(old.get(key) != value for key, value in new.items())
