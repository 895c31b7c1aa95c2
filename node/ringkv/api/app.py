"""The node's aiohttp application: state, middlewares, routes, and the storage engine's lifetime."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from ringkv.api import keys
from ringkv.api.errors import error_middleware
from ringkv.api.metrics import NodeMetrics
from ringkv.api.routes import routes
from ringkv.cluster.versions import NodeId
from ringkv.config import NodeConfig
from ringkv.replica import Replica
from ringkv.storage.aio import AsyncEngine
from ringkv.storage.engine import EngineOptions
from ringkv.storage.wal import Durability

log = logging.getLogger("ringkv.node")


async def _storage(app: web.Application) -> AsyncIterator[None]:
    """Open the engine before serving; on shutdown flush, fsync and close it."""
    config = app[keys.CONFIG]
    metrics = app[keys.METRICS]
    options = EngineOptions(
        durability=Durability(config.durability),
        memtable_bytes=int(config.memtable_mb * 1024 * 1024),
        on_fsync=metrics.fsync.observe,
    )
    engine = await AsyncEngine.open(config.data_dir, options)
    metrics.storage.engine = engine.engine
    app[keys.ENGINE] = engine
    app[keys.REPLICA] = Replica(engine, NodeId(app[keys.STATE].node_id))
    app[keys.STATE].storage_open = True
    log.info("storage open at %s (durability %s, %d SSTables)", config.data_dir, config.durability,
             engine.engine.table_count)
    try:
        yield
    finally:
        app[keys.STATE].storage_open = False
        await engine.close(flush=True)
        log.info("storage flushed and closed")


def create_app(config: NodeConfig) -> web.Application:
    metrics = NodeMetrics()
    app = web.Application(client_max_size=config.max_request_bytes,
                          middlewares=[metrics.middleware(), error_middleware])
    app[keys.CONFIG] = config
    app[keys.METRICS] = metrics
    app[keys.STATE] = keys.NodeState(node_id=config.effective_node_id())
    app.cleanup_ctx.append(_storage)
    app.add_routes(routes)
    return app
