"""Internode transport: persistent TCP connections carrying length-prefixed msgpack frames.

Wire format (version 1; never change without bumping `PROTOCOL_VERSION`)::

    frame    := length:u32 (big-endian, <= MAX_FRAME_BYTES)  payload:msgpack
    hello    := {"t": "hello", "v": 1, "cluster": str, "node": str}       client -> server, first frame
    welcome  := {"t": "welcome", "node": str}                             server -> client
    refused  := {"t": "refused", "reason": str}                           then the server closes
    request  := [0, request_id:int, method:str, body]
    response := [1, request_id:int, ok:bool, body | [error_code:str, message:str, details:map]]

One connection per peer pair direction; many requests share it, matched by `request_id`, each answered as
soon as its handler finishes (handlers run concurrently, bounded per connection). A frame over the limit is
refused by its sender (a request fails with TransportError, a response becomes error `frame_too_large`) and,
if received, drops the connection. A node refuses connections whose hello names another cluster. Every call
has a timeout; a lost connection fails every pending call on it and the next call reconnects. A client made
for a known node id refuses a welcome from another node (stale DNS, a reused address).

Security: unless the node runs `--insecure`, every connection is TLS with certificates on both sides (mutual;
`security/tls.py`). The listener runs its own accept loop and hands each socket to the TLS layer before the
first byte is read (`connect_accepted_socket`), so that a failed handshake (a certificate not signed by the
cluster CA, a self-signed one, a plaintext peer) is seen, logged and counted here instead of vanishing inside
asyncio (and, unlike pausing a plain connection and calling `start_tls`, no early byte is lost under uvloop;
at most MAX_CONNECTIONS are held). After the handshake each
side checks the other's certificate identity (`security/identity.py`): a node of this cluster, and — where the
node id is known (the hello's on the listening side, `expect` on the dialling side) — that node.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeGuard

import msgpack

from ringkv.errors import RingkvError
from ringkv.security import identity
from ringkv.security.tls import NodeTls

log = logging.getLogger("ringkv.transport")

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_CONCURRENT_PER_CONNECTION = 512
MAX_CONNECTIONS = 1024  # open internode connections a listener holds at most (peers hold one or two each)
MAX_PENDING_CALLS = 4096  # per peer: past this a call fails at once instead of queueing without bound
READ_CHUNK_BYTES = 256 * 1024
WRITE_HIGH_WATER = 1024 * 1024  # bytes buffered for a peer before a sender waits for the socket
_LEN = struct.Struct(">I")
_REQUEST, _RESPONSE = 0, 1

SEED_PREFIX = "seed:"  # Peers keys of seed addresses, whose node id is not known in advance
Handler = Callable[[Any, str], Awaitable[Any]]  # (body, calling node id) -> reply body
OnRefused = Callable[[str, str], None]  # (peer: its claimed node id or address, reason: cluster|certificate|
#                                          tls|self|hello)
HANDSHAKE_TIMEOUT_S = 10.0
_REFUSAL_LOG_INTERVAL_S = 10.0  # one warning per peer address and reason per interval: a scanner cannot flood


class TransportError(RingkvError):
    """A peer could not be reached or did not answer in time. The request may have reached the peer (and may
    have been acted on) unless it is a `NotDeliveredError`."""

    code = "peer_unavailable"


class NotDeliveredError(TransportError):
    """The request never left this node (no connection, refused handshake, too many calls in flight, frame
    too large): the peer certainly did not act on it, so it is safe to send it elsewhere."""


class RemoteError(RingkvError):
    """The peer's handler failed; carries the peer's error code and details."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self._details: dict[str, object] = details or {}

    def details(self) -> dict[str, object]:
        return self._details


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    if len(data) > MAX_FRAME_BYTES:
        raise NotDeliveredError(f"frame of {len(data)} bytes is over the limit")
    return _LEN.pack(len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (length,) = _LEN.unpack(await reader.readexactly(4))
    if length > MAX_FRAME_BYTES:
        raise TransportError(f"frame of {length} bytes is over the limit")
    return msgpack.unpackb(await reader.readexactly(length), raw=False)


class _FrameReader:
    """The frames of a stream read in chunks: one read (one wake-up of the reading task) yields every frame
    complete in it, instead of two `readexactly` calls per frame. A frame that fails to decode ends the
    stream, after the frames before it were handed out."""

    __slots__ = ("_buf", "_error", "_reader")

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._buf = bytearray()
        self._error: BaseException | None = None

    async def frames(self) -> list[Any]:
        while True:
            frames = self._parse()
            if frames:
                return frames
            if self._error is not None:
                raise self._error
            chunk = await self._reader.read(READ_CHUNK_BYTES)
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(self._buf), None)
            self._buf += chunk

    def _parse(self) -> list[Any]:
        if self._error is not None:
            return []
        buf, out, pos = self._buf, [], 0
        size = len(buf)
        try:
            while size - pos >= 4:
                (length,) = _LEN.unpack_from(buf, pos)
                if length > MAX_FRAME_BYTES:
                    raise TransportError(f"frame of {length} bytes is over the limit")
                end = pos + 4 + length
                if end > size:
                    break
                out.append(msgpack.unpackb(buf[pos + 4 : end], raw=False))
                pos = end
        except (TransportError, ValueError, msgpack.UnpackException) as e:
            self._error = e
        if pos:
            del buf[:pos]
        return out


class _FrameWriter:
    """Frames queued during one event-loop iteration go out in one write (one syscall) at its end: replies
    released by one group-commit fsync, requests sent by the writes it acknowledged."""

    __slots__ = ("_loop", "_queued", "_scheduled", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._loop = asyncio.get_running_loop()
        self._queued: list[bytes] = []
        self._scheduled = False

    def write(self, frame: bytes) -> None:
        self._queued.append(frame)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        queued, self._queued = self._queued, []
        if not self.writer.is_closing():
            self.writer.write(queued[0] if len(queued) == 1 else b"".join(queued))

    def is_closing(self) -> bool:
        return self.writer.is_closing()

    async def drain(self) -> None:
        """Wait for the socket when the peer reads slower than we write (beyond `WRITE_HIGH_WATER`)."""
        if self.writer.transport.get_write_buffer_size() + sum(map(len, self._queued)) > WRITE_HIGH_WATER:
            self._flush()
            await self.writer.drain()


class TransportServer:
    """Accepts peer connections and dispatches requests to handlers by method name."""

    def __init__(self, cluster: str, node_id: str, handlers: Mapping[str, Handler],
                 on_refused: OnRefused | None = None, tls: NodeTls | None = None) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.handlers = dict(handlers)
        self._on_refused = on_refused
        self._tls = tls
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._logged: dict[tuple[str, str], float] = {}
        self._listener: socket.socket | None = None  # TLS: our own accept loop (`_accept_forever`)
        self._accepting: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        if self._tls is None:
            self._server = await asyncio.start_server(self._serve, host, port, backlog=256)
            return int(self._server.sockets[0].getsockname()[1])
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    backlog=256)
        sock.setblocking(False)
        self._listener = sock
        self._accepting = asyncio.get_running_loop().create_task(self._accept_forever(sock))
        return int(sock.getsockname()[1])

    def _refuse(self, peer: str, reason: str, detail: str, who: str | None = None) -> None:
        """Count and log (rate-limited) a refused connection; `who` names the peer in the log (default
        `peer`, its address or claimed node id)."""
        if self._on_refused is not None:
            self._on_refused(peer, reason)
        now = time.monotonic()
        if now - self._logged.get((peer, reason), -_REFUSAL_LOG_INTERVAL_S) >= _REFUSAL_LOG_INTERVAL_S:
            if len(self._logged) > 1024:
                self._logged.clear()
            self._logged[(peer, reason)] = now
            log.warning("refused internode connection from %s: %s", who or peer, detail)

    async def _accept_forever(self, sock: socket.socket) -> None:
        """A TLS listener's accept loop: each connection is handed to the TLS layer before any byte is read
        (`connect_accepted_socket`), so that a failed handshake is seen, logged and counted here."""
        loop = asyncio.get_running_loop()
        while True:
            conn, address = await loop.sock_accept(sock)
            if len(self._connections) >= MAX_CONNECTIONS:  # unauthenticated connections are bounded too
                conn.close()
                self._refuse(str(address[0]), "too_many", f"over {MAX_CONNECTIONS} connections")
                continue
            task = loop.create_task(self._upgrade(conn, str(address[0])))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _upgrade(self, conn: socket.socket, peer: str) -> None:
        assert self._tls is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**16)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=self._tls.peer_server, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S)
        except ssl.SSLError as e:  # a verdict: plaintext, no certificate, one the cluster CA did not sign
            conn.close()
            self._refuse(peer, "tls", f"TLS handshake failed ({_ssl_reason(e)}): a plaintext peer, or a "
                                      "certificate not signed by this cluster's CA")
            return
        except (OSError, TimeoutError, asyncio.CancelledError) as e:  # the peer went away or stalled
            conn.close()
            log.debug("TLS handshake with %s did not finish: %r", peer, e)
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await self._serve(reader, writer)

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        if self._listener is not None:
            self._listener.close()
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            peer = await self._handshake(reader, writer)
            if peer is not None:
                await self._dispatch_loop(peer, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, TransportError, ValueError,
                msgpack.UnpackException):
            pass
        except asyncio.CancelledError:
            pass  # stop(): end quietly (Python 3.11's start_server logs a cancelled connection task as an error)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
        async with asyncio.timeout(10.0):  # not wait_for: on 3.11 it can swallow stop()'s cancellation
            hello = await _read_frame(reader)
        if not isinstance(hello, dict) or hello.get("t") != "hello" or hello.get("v") != PROTOCOL_VERSION:
            writer.write(_pack({"t": "refused", "reason": "bad hello"}))
            return None
        claimed, cluster = hello.get("node"), hello.get("cluster")
        if not _is_name(claimed) or not _is_name(cluster):  # never str()/repr() of a hostile value: it may nest
            writer.write(_pack({"t": "refused", "reason": "bad hello: node and cluster must be short strings"}))
            return None
        problem: tuple[str, str] | None = None
        if cluster != self.cluster:
            problem = "cluster", f"cluster {cluster!r} is not {self.cluster!r}"
        elif hello.get("node") == self.node_id:  # ourselves (a seed list naming us), or an impostor with our id
            problem = "self", f"node id {self.node_id!r} is this node's own"
        elif self._tls is not None:
            why = identity.check_node(writer.get_extra_info("peercert"), self.cluster, claimed)
            if why is not None:
                problem = "certificate", why
        if problem is not None:
            self._refuse(claimed, problem[0], problem[1], who=f"node {claimed!r}")
            writer.write(_pack({"t": "refused", "reason": problem[1]}))
            await writer.drain()
            return None
        writer.write(_pack({"t": "welcome", "node": self.node_id}))
        return claimed

    async def _dispatch_loop(self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        slots = asyncio.Semaphore(MAX_CONCURRENT_PER_CONNECTION)
        running: set[asyncio.Task[None]] = set()
        frames, out = _FrameReader(reader), _FrameWriter(writer)
        try:
            while True:
                for frame in await frames.frames():
                    if not (isinstance(frame, list) and len(frame) == 4 and frame[0] == _REQUEST
                            and type(frame[1]) is int and isinstance(frame[2], str)):
                        raise TransportError("malformed request frame")  # no id to answer: the connection goes
                    await slots.acquire()
                    task = asyncio.create_task(self._answer(peer, frame[1], frame[2], frame[3], out, slots))
                    running.add(task)
                    task.add_done_callback(running.discard)
        finally:
            for task in running:
                task.cancel()

    async def _answer(self, peer: str, request_id: int, method: str, body: Any, out: _FrameWriter,
                      slots: asyncio.Semaphore) -> None:
        try:
            handler = self.handlers.get(method)
            if handler is None:
                reply = [_RESPONSE, request_id, False, ["unknown_method", f"no method {method[:80]!r}", {}]]
            else:
                try:
                    reply = [_RESPONSE, request_id, True, await handler(body, peer)]
                except RingkvError as e:
                    reply = [_RESPONSE, request_id, False, [e.code, str(e), e.details()]]
                except Exception as e:
                    log.exception("internode %s from %s failed", method, peer)
                    reply = [_RESPONSE, request_id, False, ["internal_error", repr(e), {}]]
            if not out.is_closing():
                try:
                    frame = _pack(reply)
                except TransportError as e:  # fail this call, not every call sharing the connection
                    frame = _pack([_RESPONSE, request_id, False, ["frame_too_large", str(e), {}]])
                out.write(frame)
                await out.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            slots.release()


MAX_NAME_CHARS = 256  # a node id or cluster name in a hello


def _is_name(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS


def _ssl_reason(e: BaseException) -> str:
    reason = getattr(e, "verify_message", None) or getattr(e, "reason", None)
    return str(reason) if reason else (type(e).__name__ if isinstance(e, TimeoutError) else repr(e))


class PeerClient:
    """Calls to one peer over one persistent connection."""

    def __init__(self, cluster: str, node_id: str, host: str, port: int, connect_timeout_s: float = 2.0,
                 expect: str | None = None, tls: NodeTls | None = None) -> None:
        self.tls = tls
        self.cluster = cluster
        self.node_id = node_id
        self.expect = expect  # the node id that must answer the handshake (None: any, e.g. a seed address)
        self.host, self.port = host, port
        self._connect_timeout_s = connect_timeout_s
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._out: _FrameWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()
        self.remote_node: str | None = None
        self.last_heard = time.monotonic()  # when the peer last answered anything (or we connected)
        self._sent_at: dict[int, float] = {}  # calls in flight, in the order they were made -> when

    def silent_for(self, now: float | None = None) -> float:
        """How long the oldest call in flight has waited with nothing at all heard from the peer since (0 when
        no call is waiting): a peer that has stopped answering (paused, cut off) shows within a fraction of
        a second, long before the failure detector convicts it."""
        if not self._sent_at:
            return 0.0
        oldest = next(iter(self._sent_at.values()))
        return max(0.0, (time.monotonic() if now is None else now) - max(oldest, self.last_heard))

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            try:  # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the caller's cancellation
                async with asyncio.timeout(self._connect_timeout_s):
                    if self.tls is None:
                        reader, writer = await asyncio.open_connection(self.host, self.port)
                    else:
                        reader, writer = await asyncio.open_connection(
                            self.host, self.port, ssl=self.tls.peer_client, server_hostname="",
                            ssl_handshake_timeout=self._connect_timeout_s)
                if self.tls is not None:
                    why = identity.check_node(writer.get_extra_info("peercert"), self.cluster, self.expect)
                    if why is not None:
                        writer.close()
                        raise NotDeliveredError(f"{self.host}:{self.port} is not a node we trust: {why}")
                writer.write(_pack({"t": "hello", "v": PROTOCOL_VERSION, "cluster": self.cluster,
                                    "node": self.node_id}))
                async with asyncio.timeout(self._connect_timeout_s):
                    answer = await _read_frame(reader)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, msgpack.UnpackException, ValueError,
                    TransportError) as e:
                if isinstance(e, NotDeliveredError):
                    raise
                hint = "" if self.tls is not None or isinstance(e, OSError | TimeoutError) else \
                    " (does the peer require TLS? this node runs --insecure)"
                what = _ssl_reason(e) if self.tls is not None and isinstance(e, OSError) else repr(e)
                raise NotDeliveredError(f"cannot connect to {self.host}:{self.port}: {what}{hint}") from None
            if not isinstance(answer, dict) or answer.get("t") != "welcome":
                writer.close()
                reason = answer.get("reason") if isinstance(answer, dict) else "bad answer"
                raise NotDeliveredError(f"{self.host}:{self.port} refused us: {reason}")
            if self.expect is not None and answer.get("node") != self.expect:
                writer.close()  # stale DNS, a reused address: its acknowledgements would count for another node
                raise NotDeliveredError(f"{self.host}:{self.port} is {answer.get('node')!r}, not {self.expect!r}")
            self.remote_node = str(answer.get("node"))
            self.last_heard = time.monotonic()
            self._writer = writer
            self._out = _FrameWriter(writer)
            self._reader_task = asyncio.create_task(self._read_responses(reader))
            return writer

    async def _read_responses(self, reader: asyncio.StreamReader) -> None:
        error: BaseException = TransportError(f"connection to {self.host}:{self.port} closed")
        frames = _FrameReader(reader)
        try:
            while True:
                batch = await frames.frames()
                self.last_heard = time.monotonic()
                for frame in batch:
                    if not isinstance(frame, list) or len(frame) != 4 or frame[0] != _RESPONSE:
                        raise TransportError("malformed response frame")
                    future = self._pending.pop(frame[1], None)
                    if future is None or future.done():
                        continue
                    if frame[2]:
                        future.set_result(frame[3])
                    else:
                        code, message, details = frame[3]
                        future.set_exception(RemoteError(str(code), str(message), dict(details)))
        except (asyncio.IncompleteReadError, ConnectionError, TransportError, msgpack.UnpackException,
                ValueError, TypeError) as e:
            error = TransportError(f"connection to {self.host}:{self.port} lost: {e!r}")
        except asyncio.CancelledError:
            pass
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
                self._out = None
            pending, self._pending = self._pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(error)

    async def call(self, method: str, body: Any, timeout_s: float) -> Any:
        """Send one request and await its answer; TransportError on connection trouble or timeout
        (`NotDeliveredError` when the request certainly never reached the peer). Connected (the usual case),
        a call costs no task and no timeout context: its frame joins this iteration's write, and a timer
        fails its future if no answer comes in time."""
        if len(self._pending) >= MAX_PENDING_CALLS:
            raise NotDeliveredError(f"{len(self._pending)} calls to {self.host}:{self.port} are in flight already")
        request_id = next(self._ids)
        loop = asyncio.get_running_loop()
        frame = _pack([_REQUEST, request_id, method, body])
        deadline = loop.time() + timeout_s
        self._sent_at[request_id] = time.monotonic()
        try:
            out = self._out
            if out is None or out.is_closing():
                try:  # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the caller's cancellation
                    async with asyncio.timeout_at(deadline):
                        await self._connect()
                except TimeoutError:
                    raise NotDeliveredError(f"{method} to {self.host}:{self.port} timed out after {timeout_s}s "
                                            "while connecting") from None
                out = self._out
                if out is None:
                    raise NotDeliveredError(f"{method} to {self.host}:{self.port}: the connection closed at once")
            future: asyncio.Future[Any] = loop.create_future()
            self._pending[request_id] = future
            out.write(frame)
            timer = loop.call_at(deadline, _expire, future, method, self.host, self.port, timeout_s)
            try:
                await out.drain()
                return await future
            finally:
                timer.cancel()
        except ConnectionError as e:
            raise TransportError(f"{method} to {self.host}:{self.port} failed: {e!r}") from None
        finally:
            self._pending.pop(request_id, None)
            self._sent_at.pop(request_id, None)

    def request(self, method: str, body: Any, timeout_s: float) -> asyncio.Future[Any] | None:
        """`call` without a coroutine, when connected: the frame joins this iteration's write and the future
        of the answer is returned (failing with TransportError on a timeout or a lost connection, with
        RemoteError on an error answer). None when not connected or at the pending bound (use `call`).
        Raises NotDeliveredError for a frame over the limit. Cancelling the future forgets the call."""
        out = self._out
        if out is None or out.is_closing() or len(self._pending) >= MAX_PENDING_CALLS:
            return None
        request_id = next(self._ids)
        frame = _pack([_REQUEST, request_id, method, body])
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[request_id] = future
        self._sent_at[request_id] = time.monotonic()
        out.write(frame)
        timer = loop.call_later(timeout_s, _expire, future, method, self.host, self.port, timeout_s)
        future.add_done_callback(functools.partial(self._request_done, request_id, timer))
        return future

    def _request_done(self, request_id: int, timer: asyncio.TimerHandle, future: asyncio.Future[Any]) -> None:
        timer.cancel()
        self._pending.pop(request_id, None)
        self._sent_at.pop(request_id, None)

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
            self._reader_task = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._out = None


def _expire(future: asyncio.Future[Any], method: str, host: str, port: int, timeout_s: float) -> None:
    if not future.done():
        future.set_exception(TransportError(f"{method} to {host}:{port} timed out after {timeout_s}s"))


class Peers:
    """Clients for every known peer, keyed by node id, following address changes."""

    def __init__(self, cluster: str, node_id: str, tls: NodeTls | None = None) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.tls = tls
        self._clients: dict[str, PeerClient] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    def get(self, node_id: str, host: str, port: int) -> PeerClient:
        client = self._clients.get(node_id)
        if client is None or (client.host, client.port) != (host, port):
            if client is not None:
                task = asyncio.get_running_loop().create_task(client.close())
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            expect = None if node_id.startswith(SEED_PREFIX) else node_id
            client = PeerClient(self.cluster, self.node_id, host, port, expect=expect, tls=self.tls)
            self._clients[node_id] = client
        return client

    def silent_for(self, node_id: str) -> float:
        """`PeerClient.silent_for` of our client for `node_id` (0 when we have none)."""
        client = self._clients.get(node_id)
        return 0.0 if client is None else client.silent_for()

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
