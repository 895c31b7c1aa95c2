"""Typed application state keys (aiohttp `AppKey`)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ringkv.api.auth import Security
from ringkv.api.metrics import NodeMetrics
from ringkv.config import NodeConfig
from ringkv.net.node import ClusterNode
from ringkv.storage.aio import AsyncEngine


@dataclass
class NodeState:
    node_id: str
    storage_open: bool = False
    stopping: bool = False


CONFIG = web.AppKey("config", NodeConfig)
SECURITY = web.AppKey("security", Security)
STATE = web.AppKey("state", NodeState)
METRICS = web.AppKey("metrics", NodeMetrics)
ENGINE = web.AppKey("engine", AsyncEngine)
NODE = web.AppKey("node", ClusterNode)
