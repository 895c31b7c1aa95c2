"""After the settle phase: which keys' replicas still disagree, from each replica's own storage.

For a key, the preference list comes from `GET /admin/v1/ring?key=K` and each replica's record from its own
`GET /admin/v1/local?key=K` (addresses from `/admin/v1/members`). Replicas agree when they hold the same
versions (dots and values) and the same context. A disagreement is re-checked until `deadline` (read repair
from the final reads may still be landing) before it is reported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Fetch = Callable[[str, str, dict[str, str]], Awaitable[tuple[int, Any]]]  # (base url, path, query)


def _state(status: int, doc: Any) -> Any:
    if status == 404:
        return None  # holds nothing
    if status != 200 or not isinstance(doc, dict):
        return ("unreachable",)
    versions = sorted((v.get("node"), v.get("counter"), str(v.get("value"))) for v in doc.get("versions", []))
    return (tuple(versions), doc.get("context"))


async def node_urls(fetch: Fetch, urls: Sequence[str]) -> dict[str, str]:
    for url in urls:
        status, doc = await fetch(url, "/admin/v1/members", {})
        if status == 200 and isinstance(doc, dict):
            return {m["node_id"]: f"http://{m['host']}:{m['http_port']}" for m in doc.get("members", [])}
    return {}


async def disagreeing(fetch: Fetch, urls: Sequence[str], keys: Sequence[str], now: Callable[[], float],
                      deadline: float, concurrency: int = 16) -> list[str]:
    """The keys whose replicas still hold different records at `deadline`."""
    where = await node_urls(fetch, urls)
    if not where:
        return list(keys)

    async def differs(key: str) -> bool:
        status, ring = await fetch(urls[0], "/admin/v1/ring", {"key": key})
        if status != 200 or not isinstance(ring, dict):
            return True
        states = []
        for node in ring["key"]["preference_list"]:
            if node not in where:
                return True
            states.append(_state(*await fetch(where[node], "/admin/v1/local", {"key": key})))
        return len({repr(s) for s in states}) > 1

    slots = asyncio.Semaphore(concurrency)

    async def one(key: str) -> str | None:
        async with slots:
            return key if await differs(key) else None

    pending = list(keys)
    while True:
        pending = sorted(k for k in await asyncio.gather(*(one(k) for k in pending)) if k is not None)
        if not pending or now() >= deadline:
            return pending
        await asyncio.sleep(0.5)
