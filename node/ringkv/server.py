"""`ringkv node`: run one node until SIGTERM/SIGINT, then shut down cleanly.

Shutdown: stop accepting connections, let in-flight requests finish (up to `shutdown_timeout_s`), flush
the memtable, fsync and close the storage engine, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from ringkv import logs
from ringkv.api import auth, keys, limits, validation
from ringkv.api.app import create_app
from ringkv.config import NodeConfig

log = logging.getLogger("ringkv.node")

# A GET carries its key percent-encoded in the query (up to 3 characters per UTF-8 byte); any key a put
# accepts must be readable, so the request line may be longer than aiohttp's default 8190 bytes.
MAX_REQUEST_LINE = 3 * validation.MAX_ITEM_BYTES + 1024


async def serve(config: NodeConfig, ready: Callable[[str], None] = print,
                security: auth.Security | None = None) -> int:
    app = create_app(config, security)
    security = app[keys.SECURITY]
    runner = limits.LimitedRunner(app, max_connections=config.http_max_connections,
                                  header_timeout_s=config.http_header_timeout_s, metrics=app[keys.METRICS],
                                  handle_signals=False, access_log=None, shutdown_timeout=config.shutdown_timeout_s,
                                  max_line_size=MAX_REQUEST_LINE, max_field_size=config.http_max_header_bytes,
                                  keepalive_timeout=config.http_keepalive_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # first: a SIGTERM during a long replay is graceful too
        loop.add_signal_handler(sig, stop.set)
    await runner.setup()  # starts opening storage and the node in the background (cleanup_ctx)
    state = app[keys.STATE]
    https = security.http_tls and security.tls is not None
    site = limits.LimitedSite(runner, config.host, config.port, backlog=1024,
                              handshake_timeout_s=config.http_header_timeout_s,
                              ssl_context=security.tls.http_server if https and security.tls is not None else None)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = config.port
    for address in runner.addresses:  # the real port when config.port is 0
        port = address[1]
    node_id = state.node_id
    url = f"{'https' if https else 'http'}://{config.host}:{port}"
    log.info("node %s listening on %s (%s)", node_id, url, state.phase)
    state.listening_on(port)

    opening = state.opening
    assert opening is not None
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({opening, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if opening.done() and not opening.cancelled() and opening.exception() is not None:
        state.phase = keys.FAILED
        stopped.cancel()
        await runner.cleanup()
        raise opening.exception()  # type: ignore[misc]  # as an open in runner.setup() used to
    if not stop.is_set():
        ready(f"ringkv node {node_id} ready on {url}")
        await stop.wait()
    log.info("node %s stopping", node_id)
    state.stopping = True
    await runner.cleanup()  # stop listening, drain in-flight requests, close storage
    log.info("node %s stopped", node_id)
    return 0


def run(config: NodeConfig) -> int:
    logs.setup(config.log_level, config.log_format)
    log.info("config: %s", config)
    try:
        security = auth.Security.from_config(config)
    except (ValueError, OSError) as e:
        log.error("cannot start: %s", e)
        print(f"ringkv: {e}", file=sys.stderr, flush=True)
        return 2
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # optional speed-up
        loop_factory = None

    def ready(line: str) -> None:
        print(line, flush=True)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(config, ready, security))
