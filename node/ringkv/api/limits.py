"""HTTP connection limits aiohttp does not enforce by itself: a cap on open connections, a deadline for a
request's headers to arrive (slowloris), JSON bodies on the protocol's own errors, all counted.

- `http_max_connections`: a connection beyond it is answered `503 too_many_connections` and closed at once.
  Connections still in their TLS handshake count (HTTPS): asyncio makes the application's protocol at the
  accept and calls its `connection_made` only once the handshake is done, so those are counted from the one to
  the other (or, for a handshake that fails, until its deadline has passed).
- `http_header_timeout_s`: a connection that has sent part of a request for this long without completing its
  headers is closed (a client trickling a byte at a time holds nothing for long); under HTTPS the handshake has
  the same deadline (`LimitedSite`; asyncio's default is 60 s). Bodies are bounded by the same deadline in the
  handlers that read them (`routes._json_body`).
- `http_keepalive_s`: an idle keep-alive connection is closed after this (aiohttp's default is an hour).
- Request line and header sizes are aiohttp's limits (`max_line_size`, `max_field_size`, `max_headers`); a
  request over them, or one that is not HTTP, gets a JSON `400`/`431` body like every other error.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web, web_protocol, web_server

from ringkv.api.metrics import NodeMetrics


class GuardedHandler(web_protocol.RequestHandler):
    """aiohttp's request handler with a header deadline and JSON protocol errors."""

    header_timeout_s = 10.0
    metrics: NodeMetrics | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        opened = getattr(self._manager, "opened", None)
        if opened is not None:
            opened(self)
        super().connection_made(transport)
        # From the accept: a connection that sends nothing at all is held no longer than a slow one.
        self._guard: asyncio.TimerHandle | None = self._loop.call_later(self.header_timeout_s, self._expire)

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count > before or self._current_request is not None:
            self._cancel_guard()  # a request's headers are complete
        elif self._guard is None and data:
            self._guard = self._loop.call_later(self.header_timeout_s, self._expire)

    def _cancel_guard(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None

    def _expire(self) -> None:
        self._guard = None
        if self._current_request is None and not self._messages and self.transport is not None:
            if self.metrics is not None:
                self.metrics.http_closed.labels("header_timeout").inc()
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_guard()
        super().connection_lost(exc)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """The protocol's own errors (malformed request, line or headers too long) as JSON, like the rest."""
        if request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        code = {400: "bad_request", 413: "request_too_large", 431: "headers_too_large"}.get(status, "http_error")
        text = str(getattr(exc, "message", "") or message or "malformed request").splitlines()[0]
        text = text.split(": b'", 1)[0].split(': b"', 1)[0][:200]  # never echo request bytes (a token)
        if status >= 500:
            self.log_exception("Error handling request", exc_info=exc)
            text = "internal error; see the node's log"
            code = "internal_error"
        if self.metrics is not None:
            self.metrics.http_closed.labels("bad_request" if status < 500 else "error").inc()
        response = web.Response(status=status, body=orjson.dumps({"error": code, "message": text}),
                                content_type="application/json")
        response.force_close()
        return response


class _Reject(asyncio.Protocol):
    """Answers a connection over the cap with a 503 and closes it."""

    BODY = orjson.dumps({"error": "too_many_connections", "message": "this node has too many open connections"})
    RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Retry-After: 1\r\nContent-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert hasattr(transport, "write")
        transport.write(self.RESPONSE)
        transport.close()


class LimitedServer(web_server.Server):
    """aiohttp's connection factory, with the connection cap and `GuardedHandler`."""

    def __init__(self, *args: Any, max_connections: int, metrics: NodeMetrics, header_timeout_s: float,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_connections = max_connections
        self._metrics = metrics
        self._header_timeout_s = header_timeout_s
        self._opening: dict[GuardedHandler, asyncio.TimerHandle] = {}
        metrics.http_connections.set_function(lambda: self.open_count)

    def __call__(self) -> Any:
        if len(self.connections) + len(self._opening) >= self._max_connections:
            self._metrics.http_closed.labels("too_many_connections").inc()
            return _Reject()
        handler = GuardedHandler(self, loop=self._loop, **self._kwargs)
        handler.header_timeout_s = self._header_timeout_s
        handler.metrics = self._metrics
        # Counted until its connection_made (at once for plain TCP, after the handshake for TLS); a handshake
        # that fails never calls it, and is forgotten once the handshake's deadline has passed.
        self._opening[handler] = self._loop.call_later(self._header_timeout_s + 1.0, self.opened, handler)
        return handler

    def opened(self, handler: GuardedHandler) -> None:
        timer = self._opening.pop(handler, None)
        if timer is not None:
            timer.cancel()

    @property
    def open_count(self) -> int:
        """Open connections, those still in their TLS handshake included."""
        return len(self.connections) + len(self._opening)


class LimitedSite(web.TCPSite):
    """aiohttp's TCP site, with the TLS handshake bounded by `handshake_timeout_s` (asyncio's default: 60 s)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, handshake_timeout_s: float,
                 **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._handshake_timeout_s = handshake_timeout_s

    async def start(self) -> None:
        if self._ssl_context is None:
            await super().start()
            return
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
            ssl_handshake_timeout=self._handshake_timeout_s)
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


class LimitedRunner(web.AppRunner):
    """An AppRunner whose server is a `LimitedServer`."""

    def __init__(self, app: web.Application, *, max_connections: int, header_timeout_s: float,
                 metrics: NodeMetrics, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._max_connections = max_connections
        self._header_timeout_s = header_timeout_s
        self._metrics = metrics

    async def _make_server(self) -> web_server.Server:
        server: web_server.Server = await super()._make_server()
        return LimitedServer(server.request_handler, request_factory=server.request_factory,
                             handler_cancellation=server.handler_cancellation, loop=server._loop,
                             max_connections=self._max_connections, header_timeout_s=self._header_timeout_s,
                             metrics=self._metrics, **server._kwargs)
