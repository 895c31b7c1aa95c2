"""The operator as a client of the nodes' HTTP API (the only way it learns about the ring: it never imports the
node's code). Read-only for now: `GET /admin/v1/members` of one ready node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from ringkv_operator import resources, settings


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


async def members(session: aiohttp.ClientSession, urls: Sequence[str],
                  timeout_s: float) -> tuple[list[dict[str, Any]] | None, str]:
    """The ring's members as the first answering node sees them, or (None, why not)."""
    errors = []
    for url in urls:
        try:
            async with session.get(url.rstrip("/") + "/admin/v1/members",
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
