"""Typed application state keys (aiohttp `AppKey`), and the node's mutable start-up state.

The HTTP listener comes up before storage is replayed and the node joins (so `/health` and `/metrics` answer
during a long replay): the engine and the cluster node appear in `NodeState` when they are open, and a
handler that needs them gets them through `node_of`, which answers 503 `not_ready` until then.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from ringkv.api.auth import Security
from ringkv.api.metrics import NodeMetrics
from ringkv.config import NodeConfig
from ringkv.errors import NotReadyError
from ringkv.net.node import ClusterNode
from ringkv.storage.aio import AsyncEngine

# What a starting node is doing, as /health reports it.
OPENING_STORAGE, STARTING_NODE, SERVING, FAILED = "opening storage", "starting the node", "serving", "failed"


@dataclass
class NodeState:
    node_id: str
    storage_open: bool = False
    stopping: bool = False
    phase: str = OPENING_STORAGE
    engine: AsyncEngine | None = None
    node: ClusterNode | None = None
    http_port: int = 0  # the bound port (config.port may be 0), once listening
    opening: asyncio.Task[None] | None = None

    def listening_on(self, port: int) -> None:
        self.http_port = port
        if self.node is not None:
            self.node.set_http_port(port)


def node_of(app: web.Application) -> ClusterNode:
    """The cluster node; NotReadyError (503) while storage is replayed and the node starts."""
    state = app[STATE]
    if state.node is None or not state.storage_open:
        raise NotReadyError(f"node {state.node_id} is starting ({state.phase})")
    return state.node


CONFIG = web.AppKey("config", NodeConfig)
SECURITY = web.AppKey("security", Security)
STATE = web.AppKey("state", NodeState)
METRICS = web.AppKey("metrics", NodeMetrics)
