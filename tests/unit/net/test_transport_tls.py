"""Mutual TLS on the internode transport, over real sockets on 127.0.0.1: a node of the cluster is served;
a self-signed certificate, one of another cluster (same CA), a client certificate, a node id the certificate
does not name, and plaintext are refused, counted by reason, and fail the caller with NotDeliveredError."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ringkv.net.transport import NotDeliveredError, PeerClient, TransportServer
from ringkv.security import certs
from ringkv.security.tls import NodeTls, TlsFiles
from tests.unit.net.test_transport import run  # bounded asyncio.run

T = TypeVar("T")
HOST = "127.0.0.1"
CLUSTER = "prod"


def tls_for(tmp_path: Path, name: str, ca: certs.Pair, cluster: str = CLUSTER, node_id: str | None = None,
            trust: certs.Pair | None = None, client: bool = False) -> NodeTls:
    """A NodeTls whose certificate is issued by `ca` (for `node_id`, default `name`) and which trusts `trust`
    (default `ca`)."""
    d = tmp_path / name
    if client:
        pair = certs.create_client(ca, cluster, name, "admin")
    else:
        pair = certs.create_node(ca, cluster, node_id or name, ["127.0.0.1"])
    certs.write(d / certs.CA_CERT, (trust or ca).cert_pem)
    certs.write(d / certs.NODE_CERT, pair.cert_pem)
    certs.write(d / certs.NODE_KEY, pair.key_pem, secret=True)
    return NodeTls(TlsFiles.in_dir(d))


async def echo(body: Any, peer: str) -> Any:
    return {"body": body, "peer": peer}


class Refusals(list[tuple[str, str]]):
    """(peer, reason) of each refused connection; `counted` set at the first."""

    def __init__(self) -> None:
        super().__init__()
        self.counted = asyncio.Event()

    def note(self, peer: str, reason: str) -> None:
        self.append((peer, reason))
        self.counted.set()


@asynccontextmanager
async def serving(tls: NodeTls | None, refused: Refusals) -> AsyncIterator[int]:
    server = TransportServer(CLUSTER, "server", {"echo": echo}, tls=tls, on_refused=refused.note)
    port = await server.start(HOST, 0)
    try:
        yield port
    finally:
        await server.stop()


async def call(port: int, tls: NodeTls | None, node_id: str = "n1", expect: str | None = "server") -> Any:
    client = PeerClient(CLUSTER, node_id, HOST, port, tls=tls, expect=expect)
    try:
        return await client.call("echo", 1, timeout_s=5.0)
    finally:
        await client.close()


@pytest.fixture
def ca() -> certs.Pair:
    return certs.create_ca(CLUSTER)


def test_a_node_of_the_cluster_is_served(tmp_path: Path, ca: certs.Pair) -> None:
    server_tls, client_tls = tls_for(tmp_path, "server", ca), tls_for(tmp_path, "n1", ca)

    async def main() -> None:
        refused = Refusals()
        async with serving(server_tls, refused) as port:
            assert await call(port, client_tls) == {"body": 1, "peer": "n1"}
            assert await call(port, client_tls, expect=None) == {"body": 1, "peer": "n1"}  # a seed address
        assert refused == []

    run(main())


@pytest.mark.parametrize("case", ["self-signed", "other-ca", "other-cluster", "client-cert", "other-node",
                                  "plaintext"])
def test_the_listener_refuses(tmp_path: Path, ca: certs.Pair, case: str) -> None:
    server_tls = tls_for(tmp_path, "server", ca)
    other_ca = certs.create_ca(CLUSTER)
    client_tls: NodeTls | None = {
        "self-signed": lambda: tls_for(tmp_path, "n1", other_ca, trust=ca),  # trusts us, we do not trust it
        "other-ca": lambda: tls_for(tmp_path, "n1", other_ca, trust=ca),
        "other-cluster": lambda: tls_for(tmp_path, "n1", ca, cluster="staging"),  # a shared CA
        "client-cert": lambda: tls_for(tmp_path, "n1", ca, client=True),
        "other-node": lambda: tls_for(tmp_path, "n1", ca, node_id="n2"),  # claims n1 with n2's certificate
        "plaintext": lambda: None,
    }[case]()
    reason = {"other-cluster": "certificate", "client-cert": "certificate", "other-node": "certificate"}.get(
        case, "tls")

    async def main() -> None:
        refused = Refusals()
        async with serving(server_tls, refused) as port:
            with pytest.raises(NotDeliveredError):
                await call(port, client_tls)
            async with asyncio.timeout(5):  # the refusal is counted as the connection closes
                await refused.counted.wait()
            assert [r for _, r in refused] == [reason]
            assert await call(port, tls_for(tmp_path, "n3", ca), node_id="n3") == {"body": 1, "peer": "n3"}

    run(main())


@pytest.mark.parametrize("case", ["untrusted", "other-cluster", "not-the-node", "plaintext-server"])
def test_the_dialler_refuses(tmp_path: Path, ca: certs.Pair, case: str) -> None:
    """A node does not talk to a listener it cannot verify, so it never counts a stranger's answers."""
    client_tls = tls_for(tmp_path, "n1", ca)
    server_tls: NodeTls | None = {
        "untrusted": lambda: tls_for(tmp_path, "server", certs.create_ca(CLUSTER), trust=ca),
        "other-cluster": lambda: tls_for(tmp_path, "server", ca, cluster="staging"),
        "not-the-node": lambda: tls_for(tmp_path, "server", ca, node_id="impostor"),
        "plaintext-server": lambda: None,
    }[case]()

    async def main() -> None:
        async with serving(server_tls, Refusals()) as port:
            with pytest.raises(NotDeliveredError):
                await call(port, client_tls)

    run(main())


def test_a_plaintext_dialler_is_told_why(tmp_path: Path, ca: certs.Pair) -> None:
    async def main() -> None:
        async with serving(tls_for(tmp_path, "server", ca), Refusals()) as port:
            with pytest.raises(NotDeliveredError, match="require TLS"):
                await call(port, None)

    run(main())


def test_a_rotated_certificate_serves_new_connections_and_keeps_open_ones(tmp_path: Path, ca: certs.Pair) -> None:
    server_tls, client_tls = tls_for(tmp_path, "server", ca), tls_for(tmp_path, "n1", ca)

    async def main() -> None:
        async with serving(server_tls, Refusals()) as port:
            kept = PeerClient(CLUSTER, "n1", HOST, port, tls=client_tls, expect="server")
            assert (await kept.call("echo", 1, timeout_s=5.0))["body"] == 1
            new_ca = certs.create_ca(CLUSTER)  # a CA rotation: trust both, then move to the new one
            d = tmp_path / "server"
            certs.write(d / certs.CA_CERT, ca.cert_pem + new_ca.cert_pem)
            pair = certs.create_node(new_ca, CLUSTER, "server", ["127.0.0.1"])
            certs.write(d / certs.NODE_CERT, pair.cert_pem)
            certs.write(d / certs.NODE_KEY, pair.key_pem, secret=True)
            assert server_tls.reload()
            assert (await kept.call("echo", 2, timeout_s=5.0))["body"] == 2  # the open connection goes on
            with pytest.raises(NotDeliveredError):  # a new one gets the new certificate: n1 does not trust it yet
                await call(port, client_tls)
            d = tmp_path / "n1"
            certs.write(d / certs.CA_CERT, ca.cert_pem + new_ca.cert_pem)
            assert client_tls.reload()
            assert await call(port, client_tls) == {"body": 1, "peer": "n1"}
            await kept.close()

    run(main())


def test_a_busy_listener_under_uvloop_serves_every_dialler(tmp_path: Path, ca: certs.Pair) -> None:
    """uvloop delivers bytes that were waiting at accept even to a paused transport: the listener must not
    lose a ClientHello that arrived before it took the connection over (it did, when it paused a plain
    connection and then called start_tls)."""
    uvloop = pytest.importorskip("uvloop")
    server_tls, client_tls = tls_for(tmp_path, "server", ca), tls_for(tmp_path, "n1", ca)

    async def main() -> None:
        async with serving(server_tls, Refusals()) as port:
            busy = asyncio.get_running_loop().create_task(hog())
            try:
                for _ in range(6):  # each ClientHello lands while the loop is blocked, before the accept runs
                    assert await call(port, client_tls) == {"body": 1, "peer": "n1"}
            finally:
                busy.cancel()

    async def hog() -> None:
        while True:
            time.sleep(0.02)  # noqa: ASYNC251 (on purpose: a node busy with CPU work between turns)
            await asyncio.sleep(0.001)

    async def bounded() -> None:
        async with asyncio.timeout(30):
            await main()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(bounded())
