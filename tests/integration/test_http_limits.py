"""HTTP limits on a real node: slowloris headers and bodies are dropped at their deadline, idle keep-alive
connections are closed, connections over the cap get a JSON 503, oversized and non-HTTP requests a JSON 4xx;
each counted, and the node serves normally throughout."""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringkv.security import certs
from tests.integration.nodes import NodeProcess

pytestmark = pytest.mark.slow

HEADER_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    data = tmp_path_factory.mktemp("limits") / "data"
    with NodeProcess(data, "n1", durability="off", extra_args=[
            "--http-header-timeout-s", str(HEADER_TIMEOUT_S), "--http-keepalive-s", "3",
            "--http-max-connections", "8"]) as n:
        yield n


def address(node: NodeProcess) -> tuple[str, int]:
    port = int(node.url.rsplit(":", 1)[1])
    return "127.0.0.1", port


def connect(node: NodeProcess) -> socket.socket:
    s = socket.create_connection(address(node), timeout=10)
    s.settimeout(10)
    return s


def closed_within(s: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing, if it closes within `seconds` (None: still open)."""
    s.settimeout(0.1)
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk
    return None


def counter(node: NodeProcess, reason: str) -> float:
    with urllib.request.urlopen(node.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf'^ringkv_http_connections_closed_total{{reason="{reason}"}} (\S+)$', text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def healthy(node: NodeProcess) -> bool:
    with urllib.request.urlopen(node.url + "/health", timeout=5) as r:
        return r.status == 200


def body_of(raw: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def test_a_slowloris_header_is_dropped_at_its_deadline(node: NodeProcess) -> None:
    before = counter(node, "header_timeout")
    with connect(node) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed = None
        while closed is None and time.monotonic() - started < 5 * HEADER_TIMEOUT_S:
            s.sendall(b"X")  # one more byte of a header that never ends
            closed = closed_within(s, 0.2)
        assert closed == b"", "the trickling connection was not closed"
        assert time.monotonic() - started < 3 * HEADER_TIMEOUT_S
    assert counter(node, "header_timeout") == before + 1 and healthy(node)


def test_a_trickled_body_is_dropped(node: NodeProcess) -> None:
    before = counter(node, "body_timeout")
    with connect(node) as s:
        s.sendall(b"POST /api/v1/put HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"key\"")
        raw = closed_within(s, 4 * HEADER_TIMEOUT_S)
    assert raw is not None, "the connection with a stalled body stayed open"
    assert raw == b"" or body_of(raw)[0] == 408
    assert counter(node, "body_timeout") == before + 1 and healthy(node)


def test_an_idle_keepalive_connection_is_closed(node: NodeProcess) -> None:
    with connect(node) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 200 " in s.recv(65536).split(b"\r\n")[0] + b" "
        assert closed_within(s, 1.5) is None  # idle, but within its keep-alive time
        assert closed_within(s, 5.0) is not None, "idle keep-alive connection still open after 6.5 s"


def test_connections_over_the_cap_get_a_json_503(node: NodeProcess) -> None:
    before = counter(node, "too_many_connections")
    held = []
    try:
        for _ in range(12):
            s = connect(node)
            held.append(s)
        answers = [closed_within(s, 0.5) for s in held]
        refused = [a for a in answers if a]
        assert len(refused) >= 4, answers
        status, body = body_of(refused[0])
        assert (status, body["error"]) == (503, "too_many_connections")
    finally:
        for s in held:
            s.close()
    assert counter(node, "too_many_connections") >= before + 4
    assert healthy(node)  # the cap frees up as connections go


@pytest.mark.parametrize("request_bytes,status", [
    (b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer rkv_" + b"a" * 20_000 + b"\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64 + b"\r\n\r\n", 400),  # TLS to the HTTP port
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
])
def test_malformed_requests_get_a_json_4xx(node: NodeProcess, tmp_path: Path, request_bytes: bytes,
                                           status: int) -> None:
    with connect(node) as s:
        s.sendall(request_bytes)
        raw = closed_within(s, 5)
    assert raw, "no answer"
    got, body = body_of(raw)
    assert got == status, (got, body)
    assert isinstance(body["error"], str) and "Traceback" not in str(body) and "aaaa" not in str(body)
    assert healthy(node)


# -- HTTPS: the TLS handshake is bounded and counted too ------------------------------------------------------

HTTPS_CAP = 4


@pytest.fixture(scope="module")
def https_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, ssl.SSLContext]]:
    root = tmp_path_factory.mktemp("limits-https")
    certs_dir = root / "certs"
    ca = certs.create_ca("limits")
    node_pair = certs.create_node(ca, "limits", "n1", ["127.0.0.1"])
    certs.write(certs_dir / certs.CA_CERT, ca.cert_pem)
    certs.write(certs_dir / certs.NODE_CERT, node_pair.cert_pem)
    certs.write(certs_dir / certs.NODE_KEY, node_pair.key_pem, secret=True)
    certs.write(certs_dir / "tokens", b"", secret=True)  # no client tokens: /health is all this test asks
    client = ssl.create_default_context(cafile=str(certs_dir / certs.CA_CERT))
    with NodeProcess(root / "data", "n1", durability="off", insecure=False, extra_args=[
            "--cluster-name", "limits", "--certs-dir", str(certs_dir), "--http-tls",
            "--http-header-timeout-s", str(HEADER_TIMEOUT_S), "--http-max-connections", str(HTTPS_CAP)]) as n:
        yield n, client


def https_health(node: NodeProcess, context: ssl.SSLContext) -> int:
    try:
        with urllib.request.urlopen(node.url + "/health", timeout=5, context=context) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_a_stalled_tls_handshake_is_dropped_and_counted_against_the_cap(
        https_node: tuple[NodeProcess, ssl.SSLContext]) -> None:
    # asyncio held a connection that never sent its ClientHello for 60 s, outside the connection cap: enough of
    # them held every file descriptor the node has (its SSTables, its peers' connections) at no cost.
    node, context = https_node
    assert node.url.startswith("https://") and https_health(node, context) == 200
    held = [connect(node) for _ in range(HTTPS_CAP)]  # TCP only: no ClientHello, ever
    try:
        started = time.monotonic()
        status = https_health(node, context)
        assert status == 503, f"a {HTTPS_CAP + 1}th connection was served while {HTTPS_CAP} were handshaking"
        for s in held:
            assert closed_within(s, 5 * HEADER_TIMEOUT_S) is not None, "a stalled handshake was never dropped"
        assert time.monotonic() - started < 4 * HEADER_TIMEOUT_S + 2
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while https_health(node, context) != 200:  # the cap frees up once the handshakes are forgotten
        assert time.monotonic() < deadline, "the cap never freed up after the stalled handshakes went"
        time.sleep(0.1)
