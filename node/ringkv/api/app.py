"""The node's aiohttp application: state, middlewares, routes, and the storage engine's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from ringkv.api import auth, keys
from ringkv.api.admin import admin_routes
from ringkv.api.errors import error_middleware
from ringkv.api.metrics import NodeMetrics
from ringkv.api.routes import routes
from ringkv.api.ui import ui_routes
from ringkv.config import NodeConfig
from ringkv.net.node import ClusterNode
from ringkv.storage.aio import AsyncEngine
from ringkv.storage.engine import EngineOptions
from ringkv.storage.wal import Durability

log = logging.getLogger("ringkv.node")


async def _open(app: web.Application) -> None:
    """Replay storage, then start the cluster node (hints, identity, gossip, join); the listener already
    serves /health and /metrics meanwhile. Each part appears in the node state once open."""
    config = app[keys.CONFIG]
    metrics = app[keys.METRICS]
    state = app[keys.STATE]
    options = EngineOptions(
        durability=Durability(config.durability),
        memtable_bytes=int(config.memtable_mb * 1024 * 1024),
        block_cache_bytes=int(config.block_cache_mb * 1024 * 1024),
        on_fsync=metrics.fsync.observe,
    )
    started = time.monotonic()
    replay = asyncio.ensure_future(AsyncEngine.open(config.data_dir, options))
    try:
        engine = await asyncio.shield(replay)
    except asyncio.CancelledError:  # the replay's thread cannot be interrupted: let it end, so it is closed
        state.engine = await replay
        raise
    state.engine = engine
    metrics.storage.engine = engine.engine
    log.info("storage open at %s in %.2fs (durability %s, %d SSTables)", config.data_dir,
             time.monotonic() - started, config.durability, engine.engine.table_count)
    state.phase = keys.STARTING_NODE
    node = ClusterNode(config, engine, on_transition=metrics.transition, on_refused=metrics.refused,
                       tls=app[keys.SECURITY].tls, recent=metrics.recent)
    try:
        await node.start()
    except BaseException:
        with contextlib.suppress(Exception):  # a start cut short (SIGTERM, an error): undo what it began
            await node.stop()
        raise
    state.node = node
    if state.http_port:
        node.set_http_port(state.http_port)
    metrics.cluster.node = node
    state.storage_open = True
    state.phase = keys.SERVING


async def _storage(app: web.Application) -> AsyncIterator[None]:
    """Open storage and the node in the background (`state.opening`, awaited by the server); on shutdown
    stop the node, flush, fsync and close the engine — or cut a start short, waiting for a replay in progress
    to end (its thread cannot be interrupted) before closing what it opened."""
    state = app[keys.STATE]
    state.opening = asyncio.create_task(_open(app), name="ringkv-open")
    try:
        yield
    finally:
        state.storage_open = False
        opening = state.opening
        if not opening.done():
            log.info("stopping during start-up (%s)", state.phase)
            opening.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # a failure was reported by the server
            await opening
        node, engine = state.node, state.engine
        if node is not None:
            await node.stop()
        if engine is not None:
            await engine.close(flush=True)
        if node is not None:
            await node.finish()  # the stop was clean: the next start keeps this incarnation
        log.info("storage flushed and closed")


async def _security_reload(app: web.Application) -> AsyncIterator[None]:
    """Re-read certificates and tokens when their files change (rotation without a restart)."""
    security = app[keys.SECURITY]
    metrics = app[keys.METRICS]

    async def forever() -> None:
        while True:
            await asyncio.sleep(app[keys.CONFIG].security_reload_s)
            try:
                security.reload()
            except Exception:  # never let rotation stop for good: log it, try again next time
                log.exception("reloading certificates or tokens failed")

    metrics.security.source = security
    task = asyncio.create_task(forever()) if security.secure else None
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def create_app(config: NodeConfig, security: auth.Security | None = None) -> web.Application:
    """The node's application; `security` from `auth.Security.from_config(config)` (built here when not
    given: ValueError when the config asks for security it lacks the files of)."""
    security = security or auth.Security.from_config(config)
    if not security.secure:
        log.warning("running INSECURE (--insecure): no TLS between nodes and no authentication; anyone who "
                    "can reach ports %s and the peer port can read, write and administer this cluster",
                    config.port)
    metrics = NodeMetrics()
    app = web.Application(client_max_size=config.max_request_bytes,
                          middlewares=[metrics.middleware(), error_middleware,
                                       auth.middleware(security, metrics.auth_failed)])
    app[keys.CONFIG] = config
    app[keys.SECURITY] = security
    app[keys.METRICS] = metrics
    app[keys.STATE] = keys.NodeState(node_id=config.effective_node_id())
    app.cleanup_ctx.append(_security_reload)
    app.cleanup_ctx.append(_storage)
    app.add_routes(routes)
    app.add_routes(admin_routes)
    app.add_routes(ui_routes)
    return app
