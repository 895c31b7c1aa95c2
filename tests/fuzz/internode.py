"""The target of the internode fuzz tests: a real `ringkv node --insecure` process and raw sockets to its peer
port, plus the corpus kept next to the tests (`corpus/internode/`, described in its README).

Everything that waits has a deadline: connecting, every receive (`REPLY_TIMEOUT_S`), waiting for the node to
close a connection after we closed our side (`CLOSE_TIMEOUT_S`), HTTP calls. A deadline missed is a hang and
fails the test that hit it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from tests.integration.nodes import NodeProcess

HOST = "127.0.0.1"
FUZZER_ID = "fuzz-peer"
AFTER_ID = 987_654_321  # the id of the ping that checks a connection still serves after a request
CONNECT_TIMEOUT_S = 5.0
REPLY_TIMEOUT_S = 5.0  # a node answers every request within this (its own deadlines are far shorter)
CLOSE_TIMEOUT_S = 5.0  # and drops a connection whose peer stopped sending in the middle of a frame
HTTP_TIMEOUT_S = 5.0
MAX_FRAME_BYTES = 16 * 1024 * 1024  # transport.MAX_FRAME_BYTES
RSS_FACTOR, RSS_SLACK = 2, 100 * 1024 * 1024  # the node's RSS stays under 2x its start + 100 MB

CORPUS = Path(__file__).resolve().parent / "corpus" / "internode"
KINDS = ("prehello", "frames", "requests")

# The nodes under test: alone (N = R = W = 1), durability off, short deadlines so that a request bound to fail
# (a forward nobody takes, a stream from a source that is not there) fails fast, small Merkle trees (the seed
# corpus was captured with 16 leaves per tree, so its anti-entropy bodies name trees of the same shape).
CLUSTER = "ringkv-fuzz"  # its own: a port a hostile gossip state names never reaches another test's cluster
NODE_ARGS = ("--cluster-name", CLUSTER, "--gossip-interval-s", "0.05", "--request-timeout-s", "0.5",
             "--aae-tree-leaves", "16", "--tombstone-grace-s", "0", "--hints-max-mb", "16", "--log-level", "warning")

# A handler that raised something else than a RingkvError answers `internal_error` and logs this line.
HANDLER_FAILED = "ERROR ringkv.transport: internode"
LOG_ALARMS = (HANDLER_FAILED, "Traceback (most recent call last)", "exception was never retrieved",
              "--- Logging error ---", "Unhandled exception")


def frame(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(data)) + data


class Closed(Exception):
    """The node closed the connection."""


class Hang(AssertionError):
    """The node neither answered nor closed the connection in time."""


class Peer:
    """A raw connection to the node's peer port, every receive bounded by a deadline."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=CONNECT_TIMEOUT_S)
        self.buffer = b""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:  # it dropped us mid-way: a verdict, not a failure
            raise Closed(repr(e)) from None

    def send_frame(self, obj: Any) -> None:
        self.send(frame(obj))

    def _fill(self, need: int, deadline: float, timeout_s: float) -> None:
        while len(self.buffer) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Hang(f"no complete frame within {timeout_s}s ({len(self.buffer)} bytes buffered)")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise Closed(f"closed with {len(self.buffer)} bytes of a frame buffered")
            self.buffer += chunk

    def recv_frame(self, timeout_s: float = REPLY_TIMEOUT_S) -> Any:
        """The next frame; raises `Closed` at EOF and `Hang` past the deadline."""
        deadline = time.monotonic() + timeout_s
        self._fill(4, deadline, timeout_s)
        (length,) = struct.unpack(">I", self.buffer[:4])
        assert length <= MAX_FRAME_BYTES, f"the node sent a frame of {length} bytes, over the limit"
        self._fill(4 + length, deadline, timeout_s)
        payload, self.buffer = self.buffer[4:4 + length], self.buffer[4 + length:]
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)

    def hello(self, cluster: str, node: str = FUZZER_ID) -> None:
        self.send_frame({"t": "hello", "v": 1, "cluster": cluster, "node": node})
        welcome = self.recv_frame()
        assert isinstance(welcome, dict) and welcome.get("t") == "welcome", f"not welcomed: {welcome!r}"

    def frames_until_closed(self, timeout_s: float = CLOSE_TIMEOUT_S) -> list[Any]:
        """After we stopped sending (SHUT_WR): every frame the node still sends, until it closes. Raises
        `Hang` if it keeps the connection open past the deadline."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        out = []
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                out.append(self.recv_frame(max(0.0, deadline - time.monotonic())))
            except Closed:
                return out
            except Hang:
                raise Hang(f"the node kept the connection open {timeout_s}s after we closed our side") from None


def check_reply(reply: Any, request_id: Any) -> tuple[bool, Any]:
    """A response frame to `request_id`: `[1, id, True, body]` or `[1, id, False, [code, message, details]]`
    with a code other than `internal_error` (what an unexpected exception in a handler answers)."""
    assert isinstance(reply, list) and len(reply) == 4 and reply[0] == 1, f"not a response frame: {reply!r:.300}"
    if not (isinstance(request_id, float) and math.isnan(request_id)):
        assert reply[1] == request_id, f"answer to request {reply[1]!r:.100}, not {request_id!r:.100}"
    assert type(reply[2]) is bool, f"ok flag {reply[2]!r}"
    if not reply[2]:
        error = reply[3]
        assert isinstance(error, list) and len(error) == 3, f"malformed error {error!r:.300}"
        code, message, details = error
        assert isinstance(code, str) and isinstance(message, str) and isinstance(details, dict), f"{error!r:.300}"
        assert code != "internal_error", f"a handler failed unexpectedly: {message[:500]}"
    return reply[2], reply[3]


def check_frames(frames: list[Any]) -> None:
    """What a node may send on a connection fed garbage: handshake answers and response frames."""
    for f in frames:
        if isinstance(f, dict):
            assert f.get("t") in ("welcome", "refused"), f"unexpected frame {f!r:.300}"
        else:
            check_reply(f, f[1] if isinstance(f, list) and len(f) == 4 else None)


class Target:
    """One running node and what the tests check about it."""

    def __init__(self, root: Path, name: str) -> None:
        self.process = NodeProcess(root / name / "data", node_id=name, durability="off", extra_args=NODE_ARGS,
                                   log_dir=root / name)
        self.process.start()
        self.url = self.process.url
        members = self.http_json("/admin/v1/members")
        self.cluster: str = members["cluster_name"]
        self.node_id: str = members["node_id"]
        self.peer_port: int = next(m["peer_port"] for m in members["members"] if m["local"])
        self.sentinels: dict[str, Any] = {}
        for i in range(3):
            key, value = f"sentinel-{i}", {"written": "before the fuzzing", "n": i}
            self.http_json("/api/v1/put", {"key": key, "value": value})
            self.sentinels[key] = value
        self.rss_at_start = self.rss()
        self._log_mark = 0

    # -- HTTP -------------------------------------------------------------------------------------------

    def http(self, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def http_json(self, path: str, body: Any = None) -> Any:
        status, doc = self.http(path, body)
        assert status == 200, f"{path} answered {status}: {doc}"
        return doc

    # -- the peer port ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def peer(self, hello: bool = True) -> Iterator[Peer]:
        peer = Peer(self.peer_port)
        try:
            if hello:
                peer.hello(self.cluster)
            yield peer
        finally:
            peer.close()

    def request(self, method: Any, body: Any, request_id: Any = 1,
                timeout_s: float = REPLY_TIMEOUT_S) -> tuple[bool, Any]:
        """One request on a fresh connection: it must be answered (and properly), never left hanging; the
        connection still serves a ping afterwards. Only a malformed frame (an id that is not an int, a
        method that is not a str) may get the connection dropped instead: returns (False, None) then."""
        with self.peer() as peer:
            peer.send_frame([0, request_id, method, body])
            try:
                reply = peer.recv_frame(timeout_s)
            except Closed as e:
                if type(request_id) is not int or not isinstance(method, str):
                    return False, None
                raise AssertionError(f"the node dropped the connection instead of answering: {e}") from None
            result = check_reply(reply, request_id)
            peer.send_frame([0, AFTER_ID, "ping", {}])
            assert check_reply(peer.recv_frame(), AFTER_ID)[0], "the connection no longer serves a ping"
            return result

    def raw(self, data: bytes, hello: bool) -> list[Any]:
        """Send `data` (after a hello or as the very first bytes), then close our side: the node must answer
        properly whatever it answers, and close the connection in time."""
        with self.peer(hello=hello) as peer:
            try:
                peer.send(data)
            except Closed:
                return []  # dropped while we were still sending: fine
            frames = peer.frames_until_closed()
        check_frames(frames)
        return frames

    # -- the node's health ------------------------------------------------------------------------------

    def alive(self) -> None:
        assert self.process.running, f"the node died\n{self.process.stderr()[-4000:]}"

    def rss(self) -> int:
        """Resident set size of the node process in bytes (0 where /proc is not available)."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def new_log(self) -> str:
        log = self.process.stderr()
        new, self._log_mark = log[self._log_mark:], len(log)
        return new

    def check(self, log: bool = True) -> None:
        """Alive, healthy, every sentinel still holds its value, RSS bounded, and (unless `log` is False) no
        handler failure, traceback or unretrieved task exception logged since the last check."""
        self.alive()
        assert self.http("/health")[0] == 200, "/health does not answer 200"
        for key, value in self.sentinels.items():
            status, doc = self.http(f"/admin/v1/local?key={key}")
            assert status == 200, f"the node lost {key}: {status} {doc}"
            live = [v["value"] for v in doc["versions"] if not v["deleted"]]
            assert live == [value], f"{key} holds {live}, not {value}"
        rss = self.rss()
        assert rss <= RSS_FACTOR * self.rss_at_start + RSS_SLACK, \
            f"RSS {rss >> 20} MB, from {self.rss_at_start >> 20} MB at start"
        if log:
            new = self.new_log()
            for alarm in LOG_ALARMS:
                assert alarm not in new, f"the node logged {alarm!r}:\n{_around(new, alarm)}"

    def stop(self) -> None:
        self.process.kill()


def _around(text: str, needle: str, before: int = 300, after: int = 2500) -> str:
    i = text.find(needle)
    return text[max(0, i - before):i + after]


# -- the corpus -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One corpus input: `kind` is `prehello` (raw bytes, the first on a connection), `frames` (raw bytes
    after a hello) or `requests` (`[method, body]`, sent as a request after a hello)."""

    kind: str
    path: Path
    data: Any  # bytes for prehello/frames, (method, body, request id) for requests

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.path.name}"


def decode_json(value: Any) -> Any:
    """A JSON corpus value: `{"$bin": hex}` is bytes, `{"$nest": [depth, leaf]}` a list nested `depth` deep
    around `leaf`, `{"$ext": [code, hex]}` a msgpack extension, `{"$repeat": [str or $bin, n]}` that string
    or those bytes n times over; anything else is itself."""
    if isinstance(value, list):
        return [decode_json(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        if set(value) == {"$nest"}:
            depth, leaf = value["$nest"]
            out = decode_json(leaf)
            for _ in range(depth):
                out = [out]
            return out
        if set(value) == {"$ext"}:
            code, data = value["$ext"]
            return msgpack.ExtType(code, bytes.fromhex(data))
        if set(value) == {"$repeat"}:
            unit, times = value["$repeat"]
            return decode_json(unit) * times
        return {k: decode_json(v) for k, v in value.items()}
    return value


def _load(kind: str, path: Path) -> Entry:
    raw = path.read_bytes()
    if path.suffix == ".json":
        doc = json.loads(raw)
        if kind == "requests":
            data: Any = (decode_json(doc["method"]), decode_json(doc["body"]), decode_json(doc.get("id", 1)))
        elif "hex" in doc:
            data = bytes.fromhex(doc["hex"])
        else:  # frames given as values: each packed and length-prefixed
            data = b"".join(frame(decode_json(f)) for f in doc["frames"])
    elif kind == "requests":
        method, body = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        data = (method, body, 1)
    else:
        data = raw
    return Entry(kind, path, data)


def corpus() -> list[Entry]:
    root = CORPUS
    out = []
    for kind in KINDS:
        for path in sorted((root / kind).glob("*")):
            if path.suffix in (".bin", ".json", ".msgpack"):
                out.append(_load(kind, path))
    return out


def seeds() -> dict[str, list[Any]]:
    """The valid bodies captured from a real cluster (`capture_seeds.py`), by method."""
    out: dict[str, list[Any]] = {}
    for entry in corpus():
        if entry.kind == "requests" and entry.path.name.startswith("seed-"):
            method, body, _ = entry.data
            out.setdefault(method, []).append(body)
    return out


def examples(default: int) -> int:
    """Examples per fuzz test: `default`, or RINGKV_FUZZ_EXAMPLES (a longer run, e.g. `make fuzz`)."""
    return int(os.environ.get("RINGKV_FUZZ_EXAMPLES") or default)


def long_run() -> bool:
    return bool(os.environ.get("RINGKV_FUZZ_EXAMPLES"))
