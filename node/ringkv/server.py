"""`ringkv node`: run one node until SIGTERM/SIGINT, then shut down cleanly.

Start-up: the HTTP listener first (`/health` and `/metrics` answer at once), then storage replay and the
node's start in the background (`/ready` and the API answer 503 `not_ready` meanwhile); the ready line is
printed once the node serves.

Shutdown (a drain, as Cassandra's `nodetool drain` + shutdown announcement):
1. `/ready` answers 503 and the node announces it is stopping to every live peer by gossip: they judge it
   down on receipt and coordinate around it (requests, hints) instead of timing out on it;
2. it keeps serving for `drain_delay_s` (Kubernetes removes it from the Service endpoints meanwhile; clients
   still on their old connections are answered); a second signal skips the rest of the delay;
3. it stops accepting connections, lets in-flight requests finish (up to `shutdown_timeout_s`), keeps what
   it still owed other replicas as hints, flushes the memtable, fsyncs and closes the storage engine, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    signals = [0]

    def on_signal() -> None:
        signals[0] += 1
        stop.set()
        if signals[0] > 1:
            hurry.set()

    hurry = asyncio.Event()  # a second signal: skip the rest of the drain delay
    for sig in (signal.SIGTERM, signal.SIGINT):  # first: a SIGTERM during a long replay is graceful too
        loop.add_signal_handler(sig, on_signal)
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
    state.stopping = True  # /ready: 503
    await _drain(state, config.drain_delay_s, hurry)
    await runner.cleanup()  # stop listening, drain in-flight requests, close storage
    log.info("node %s stopped", node_id)
    return 0


async def _drain(state: keys.NodeState, delay_s: float, hurry: asyncio.Event) -> None:
    """Announce the shutdown to the peers, then keep serving `delay_s` (unless hurried)."""
    node = state.node if state.storage_open else None
    if node is None:
        return  # never served: nobody routes to us
    try:
        await node.gossiper.announce_shutdown(timeout_s=1.0)
    except Exception:  # never let the announcement stand in the way of the stop
        log.exception("announcing the shutdown failed")
    if delay_s > 0:
        log.info("draining: still serving for %.1fs while load balancers take the node out", delay_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), delay_s)


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
