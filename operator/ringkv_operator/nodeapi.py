"""The operator as a client of the nodes' HTTP API (the only way it learns about the ring: it never imports the
node's code): `GET /admin/v1/members` of one ready node for the status; every node's own `/admin/v1/node`,
`/admin/v1/members` and operations for the scaling policy, and with them `/admin/v1/hints` before a rollout rolls
the next pod (`observe`); `POST /admin/v1/decommission`.
Every call carries the cluster's admin token (`headers`, from its NAME-admin-token Secret) unless insecure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from ringkv_operator import resources, settings
from ringkv_operator.scaling import NodeView


def pod_port(pod: Mapping[str, Any], port_name: str = "http", default: int = resources.HTTP_PORT) -> int:
    """The pod's container port of that name (the nodes': 8080)."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == port_name and port.get("containerPort"):
                return int(port["containerPort"])
    return default


def node_urls(template: str, pods: Sequence[Mapping[str, Any]], service: str) -> list[str]:
    """The admin URLs of the pods, in order."""
    out = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        out.append(settings.node_url(template, pod=str(meta.get("name", "")), pod_ip=str(status.get("podIP", "")),
                                     service=service, namespace=str(meta.get("namespace", "")),
                                     port=pod_port(pod)))
    return out


def urls_by_pod(template: str, pods: Sequence[Mapping[str, Any]], service: str) -> dict[str, str]:
    """The admin URLs of the pods, by pod name."""
    return {str((p.get("metadata") or {}).get("name", "")): u
            for p, u in zip(pods, node_urls(template, pods, service), strict=True)}


async def members(session: aiohttp.ClientSession, urls: Sequence[str], timeout_s: float,
                  headers: Mapping[str, str] | None = None) -> tuple[list[dict[str, Any]] | None, str]:
    """The ring's members as the first answering node sees them, or (None, why not)."""
    errors = []
    for url in urls:
        try:
            async with session.get(url.rstrip("/") + "/admin/v1/members", headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                if response.status != 200:
                    errors.append(f"{url}: HTTP {response.status}")
                    continue
                doc = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            errors.append(f"{url}: {type(e).__name__}")
            continue
        found = doc.get("members") if isinstance(doc, dict) else None
        if isinstance(found, list):
            return [m for m in found if isinstance(m, dict)], ""
        errors.append(f"{url}: no members in the answer")
    return None, "; ".join(errors[:3]) or "no ready node to ask"


async def ring_agreed(session: aiohttp.ClientSession, urls: Sequence[str], timeout_s: float,
                      headers: Mapping[str, str] | None = None) -> bool | None:
    """Whether every live member gossips the same view of the ring, as the first answering node sees it
    (`/admin/v1/ring`'s `agreed`); None when no node answers."""
    for url in urls:
        try:
            doc = await _get(session, url.rstrip("/") + "/admin/v1/ring", timeout_s, headers)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("agreed"), bool):
            return bool(doc["agreed"])
    return None


async def _get(session: aiohttp.ClientSession, url: str, timeout_s: float,
               headers: Mapping[str, str] | None = None) -> Any:
    async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
        if response.status != 200:
            raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)
        return await response.json()


async def node_view(session: aiohttp.ClientSession, pod: str, url: str, timeout_s: float,
                    operations: bool = False, headers: Mapping[str, str] | None = None,
                    hints: bool = False) -> NodeView:
    """How the node describes itself (with `hints`, also the hints it holds); unreachable (or an answer that
    is not one) gives `reachable=False`."""
    base = url.rstrip("/")
    try:
        calls = {"node": _get(session, base + "/admin/v1/node", timeout_s, headers),
                 "members": _get(session, base + "/admin/v1/members", timeout_s, headers)}
        if operations:
            calls["operations"] = _get(session, base + "/admin/v1/operations", timeout_s, headers)
        if hints:
            calls["hints"] = _get(session, base + "/admin/v1/hints", timeout_s, headers)
        docs = dict(zip(calls, await asyncio.gather(*calls.values()), strict=True))
        node, members = docs["node"], docs["members"]
        listed = [m for m in members.get("members") or [] if isinstance(m, dict)]
        decommission = None
        if operations:
            mine = [o for o in docs["operations"].get("operations") or [] if isinstance(o, dict)
                    and o.get("kind") == "decommission"]
            decommission = max(mine, key=lambda o: int(o.get("started_ms") or 0)) if mine else None
        return NodeView(
            pod, True, str(node.get("mode", "")), str(node.get("view", "")), bool(node.get("agreed")),
            {str(m.get("node_id")): str(m.get("status")) for m in listed},
            frozenset(str(m.get("node_id")) for m in listed if m.get("up")),
            tuple(r for r in node.get("streaming") or [] if isinstance(r, dict)),
            {k: int(v) for k, v in (node.get("storage") or {}).items() if isinstance(v, int)}, decommission,
            pending_hints(docs["hints"]) if hints else None)
    except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError, TypeError):
        return NodeView(pod)


def pending_hints(doc: Any) -> dict[str, int]:
    """/admin/v1/hints' "pending": hints held, by target node."""
    return {str(k): int(v) for k, v in (doc.get("pending") or {}).items() if isinstance(v, int) and v > 0}


async def observe(session: aiohttp.ClientSession, pods: Mapping[str, str], timeout_s: float,
                  operations_of: frozenset[str] = frozenset(),
                  headers: Mapping[str, str] | None = None, hints: bool = False) -> dict[str, NodeView]:
    """Every pod's NodeView (pods: name -> admin URL), asked at once."""
    names = sorted(pods)
    views = await asyncio.gather(*(node_view(session, p, pods[p], timeout_s, p in operations_of, headers, hints)
                                   for p in names))
    return dict(zip(names, views, strict=True))


async def decommission(session: aiohttp.ClientSession, url: str, timeout_s: float,
                       headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
    """POST /admin/v1/decommission: (status, body); 202 started, 200 already running, 400 refused."""
    async with session.post(url.rstrip("/") + "/admin/v1/decommission", json={}, headers=headers,
                            timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
        try:
            body = await response.json()
        except (aiohttp.ContentTypeError, ValueError):
            body = None
        return response.status, body
