"""A rollout's next step, the I/O around `plan.advance`: when the next pod may roll, ask every node about
the ring and the hints it holds (`nodeapi.observe`), let `plan.ring_gate` and `plan.advance` decide, and lower
the StatefulSet's partition when they say so. The record it returns is status.rollout; the events are the
handlers' to post.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from ringkv_operator import kube, nodeapi, plan, resources, scaling, settings
from ringkv_operator import spec as specmod


async def step(api: kube.Api, http: aiohttp.ClientSession, cluster: specmod.ClusterSpec,
               applied: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]], committed: Mapping[str, int],
               previous: Any, headers: Mapping[str, str], now: str,
               config: settings.Settings) -> tuple[dict[str, Any] | None, list[scaling.Event]]:
    """`applied`: the cluster's StatefulSets as this pass left them; `previous`: status.rollout. Returns the
    rollout's record (None: no rollout under way) and the events of the step."""
    rolls = [r for s in applied if (r := plan.roll(s, pods)) is not None]
    r = next((r for r in rolls if r.rolling), rolls[0] if rolls else None)  # one pod at a time, cluster-wide
    gate = None
    if r is not None and r.pod and not r.rolling:
        gate = await _ring_gate(http, cluster, pods, committed, headers, config)
    before = previous if isinstance(previous, dict) else None
    running = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    advance = plan.advance(r, gate, before, plan.ready_since(running), now, config.rollout_settle_seconds)
    events: list[scaling.Event] = []
    if r is not None and advance.partition is not None:
        await api.patch(kube.STATEFULSET, cluster.namespace, r.statefulset,
                        {"spec": {"updateStrategy": {"rollingUpdate": {"partition": advance.partition}}}})
    record = advance.record
    if r is not None and advance.started and record is not None:
        events.append(scaling.Event("Normal", "RollingPod", f"{record['message']} (StatefulSet {r.statefulset}, "
                                                            f"partition {advance.partition})"))
    elif record is not None and record["phase"] == plan.WAITING and (before or {}).get("phase") != plan.WAITING:
        events.append(scaling.Event("Normal", "RolloutWaiting", record["message"]))
    return record, events


async def _ring_gate(http: aiohttp.ClientSession, cluster: specmod.ClusterSpec, pods: Sequence[Mapping[str, Any]],
                     committed: Mapping[str, int], headers: Mapping[str, str], config: settings.Settings) -> str:
    """`plan.ring_gate`'s verdict, from every running node's own account of the ring and of its hints."""
    running = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    urls = nodeapi.urls_by_pod(config.node_url_template, running, resources.peer_service_name(cluster.name))
    nodes = await nodeapi.observe(http, urls, config.http_timeout_seconds, headers=headers, hints=True)
    ready = {str(p["metadata"]["name"]): plan.pod_ready(p) for p in pods}
    return plan.ring_gate(nodes, scaling.settled(nodes, ready, scaling.pods_of(committed)),
                          config.rollout_max_pending_hints)
