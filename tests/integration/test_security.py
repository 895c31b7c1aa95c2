"""Security with real processes: a secure local cluster (cluster CA, mutual TLS between nodes, HTTPS, tokens).

- Peers: a node with a self-signed certificate, one with a certificate of another cluster from the same CA,
  and a plaintext node are refused by the cluster (counted by reason), never become members, and say why.
- Clients: no token 401; a read token reads but cannot write or administer (403); write writes; admin does
  everything; a token added to or revoked from the tokens file takes effect without a restart.
- Rotation under load: the CA and every node certificate replaced (trust both CAs, re-issue, restart a node so
  every one of its connections is new) while clients write and read: no request fails, no write is lost.
- Afterwards no log and no metric holds a token or any key material.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509

from ringkv import local
from ringkv.client import Client, ClientError
from ringkv.local import LocalCluster, LocalNode
from ringkv.security import certs, tokens
from ringkv.security.credentials import Credentials
from tests.integration.cluster_helpers import kill_all, pick_base_port, print_logs, wait_until
from tests.integration.nodes import NODE_DIR

pytestmark = pytest.mark.slow

RELOAD_S = 0.3
SECRETS: list[str] = []  # every token made here and every private key's body: none may reach a log


def remember_secret(text: str | bytes) -> None:
    value = text.decode() if isinstance(text, bytes) else text
    if "PRIVATE KEY" in value:
        SECRETS.extend(line for line in value.splitlines() if line and not line.startswith("-----"))
    else:
        SECRETS.append(value.strip())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    data_dir = tmp_path_factory.mktemp("secure")
    base = pick_base_port(3)
    c = LocalCluster(str(data_dir), local.plan(str(data_dir), 3, base, 3), 3, "batch",
                     ["--gossip-interval-s", "0.5", "--security-reload-s", str(RELOAD_S)], secure=True)
    try:
        for node in c.nodes:
            c.start(node)
        c.wait_ready(timeout_s=60)
        c.wait_converged(timeout_s=30)
        remember_secret(Path(c.certs_dir, local.ADMIN_TOKEN).read_text())
        for key in [Path(c.certs_dir, certs.CA_KEY), *(Path(n.data_dir, "certs", certs.NODE_KEY) for n in c.nodes)]:
            remember_secret(key.read_bytes())
        yield c
    except BaseException:
        print_logs(c)
        raise
    finally:
        kill_all(c)


def request(node: LocalNode, method: str, path: str, token: str | None = None, body: Any = None,
            ca: str | None = None) -> tuple[int, dict[str, Any]]:
    assert node.url.startswith("https://127.0.0.1:")
    headers = {"content-type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(node.url + path, method=method, headers=headers,
                                 data=None if body is None else orjson.dumps(body))
    context = ssl.create_default_context(cafile=ca or str(Path(node.data_dir, "certs", certs.CA_CERT)))
    try:
        with urllib.request.urlopen(req, timeout=5, context=context) as response:
            raw = response.read()
            return response.status, orjson.loads(raw) if response.headers.get_content_type().endswith("json") else {}
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read() or b"{}")


def members(cluster: LocalCluster, node: LocalNode) -> set[str]:
    status, body = request(node, "GET", "/admin/v1/members", cluster.creds().token)
    assert status == 200, body
    return {m["node_id"] for m in body["members"]}


def metrics(node: LocalNode) -> str:
    context = ssl.create_default_context(cafile=str(Path(node.data_dir, "certs", certs.CA_CERT)))
    with urllib.request.urlopen(node.url + "/metrics", timeout=5, context=context) as response:
        return str(response.read().decode())


def sample(node: LocalNode, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", metrics(node), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def add_token(cluster: LocalCluster, name: str, role: str) -> str:
    path = Path(cluster.certs_dir, local.TOKENS)
    token = tokens.new_token()
    remember_secret(token)
    entries = [e for e in tokens.parse(path.read_text()) if e.name != name]
    certs.write(path, tokens.render([*entries, tokens.Entry(name, role, tokens.digest(token))]).encode(), secret=True)
    return token


# -- clients ------------------------------------------------------------------------------------------------


def test_tokens_and_roles(cluster: LocalCluster) -> None:
    n1, n2 = cluster.nodes[0], cluster.nodes[1]
    reader, writer = add_token(cluster, "reader", "read"), add_token(cluster, "writer", "write")
    wait_until(lambda: request(n2, "GET", "/api/v1/getValue?key=x", reader)[0] != 401
               and request(n1, "GET", "/api/v1/getValue?key=x", writer)[0] != 401, 10, "nodes took the tokens")

    status, body = request(n1, "POST", "/api/v1/put", None, {"key": "sec:1", "value": "v"})
    assert (status, body["error"]) == (401, "unauthenticated")
    status, body = request(n1, "POST", "/api/v1/put", "rkv_made-up", {"key": "sec:1", "value": "v"})
    assert (status, body["error"]) == (401, "invalid_token")
    status, body = request(n1, "POST", "/api/v1/put", reader, {"key": "sec:1", "value": "v"})
    assert (status, body["error"]) == (403, "forbidden")
    for path in ("/admin/v1/members", "/admin/v1/node", "/admin/v1/local?key=sec:1"):
        assert request(n1, "GET", path, reader)[0] == 403
        assert request(n1, "GET", path, writer)[0] == 403
    assert request(n1, "POST", "/admin/v1/decommission", writer, {})[0] == 403
    assert request(n1, "POST", "/api/v1/put", writer, {"key": "sec:1", "value": "v"})[0] == 200
    status, body = request(n2, "GET", "/api/v1/getValue?key=sec:1", reader)
    assert (status, body["value"]) == (200, "v")
    assert request(n2, "GET", "/admin/v1/node", cluster.creds().token)[0] == 200
    for path in ("/health", "/ready", "/metrics"):
        assert request(n1, "GET", path)[0] == 200
    assert sample(n1, 'ringkv_http_auth_failures_total{reason="forbidden"}') >= 1

    path = Path(cluster.certs_dir, local.TOKENS)  # revoke the reader: no restart
    certs.write(path, tokens.render([e for e in tokens.parse(path.read_text()) if e.name != "reader"]).encode(),
                secret=True)
    wait_until(lambda: all(request(n, "GET", "/api/v1/getValue?key=sec:1", reader)[0] == 401
                           for n in cluster.nodes), 10, "every node refuses the revoked token")


# -- peers --------------------------------------------------------------------------------------------------


def rogue_certs(cluster: LocalCluster, tmp: Path, kind: str) -> list[str]:
    """Flags for a node that tries to join `cluster` with bad credentials."""
    d = tmp / kind
    if kind == "plaintext":
        return ["--insecure"]
    # It trusts the cluster's CA (a public certificate, so an attacker may have it), so that it is the cluster
    # that must refuse it, not it that gives up on the cluster.
    ca = certs.create_ca("ringkv") if kind == "self-signed" else certs.load_ca(Path(cluster.certs_dir))
    pair = certs.create_node(ca, "ringkv" if kind == "self-signed" else "staging", "rogue", ["127.0.0.1"])
    certs.write(d / certs.CA_CERT, Path(cluster.certs_dir, certs.CA_CERT).read_bytes())
    certs.write(d / certs.NODE_CERT, pair.cert_pem)
    certs.write(d / certs.NODE_KEY, pair.key_pem, secret=True)
    remember_secret(pair.key_pem)
    (d / "tokens").write_text("")
    return ["--certs-dir", str(d)]


@pytest.mark.parametrize("kind,reason", [("self-signed", "tls"), ("other-cluster", "certificate"),
                                         ("plaintext", "tls")])
def test_a_bad_peer_is_refused(cluster: LocalCluster, tmp_path: Path, kind: str, reason: str) -> None:
    seed = cluster.nodes[0]
    name = f'ringkv_internode_refused_connections_total{{reason="{reason}"}}'
    before = sample(seed, name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path / "rogue.log"
    argv = [sys.executable, "-m", "ringkv.cli", "node", "--data-dir", str(tmp_path / "data"), "--host", "127.0.0.1",
            "--port", str(port), "--peer-port", "0", "--node-id", "rogue", "--cluster-name", "ringkv",
            "--seeds", f"127.0.0.1:{seed.peer_port}", "--gossip-interval-s", "0.2",
            *rogue_certs(cluster, tmp_path, kind)]
    with open(log_path, "wb") as log:
        rogue = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env={"PYTHONPATH": str(NODE_DIR), "PATH": "/usr/bin:/bin"})
    try:
        wait_until(lambda: sample(seed, name) >= before + 2, 20, f"{seed.node_id} refused the {kind} peer",
                   observe=lambda: log_path.read_text(errors="replace")[-2000:])
        assert rogue.poll() is None  # still trying: it never got in
        assert "rogue" not in members(cluster, seed) and "rogue" not in members(cluster, cluster.nodes[2])
        assert all(request(n, "GET", "/ready")[0] == 200 for n in cluster.nodes)
        seed_log = Path(seed.log_path).read_text(errors="replace")
        assert "refused internode connection" in seed_log
        if kind == "plaintext":  # the rogue's own log says why it cannot get in (within its 10 s wait warning)
            wait_until(lambda: "does the peer require TLS" in log_path.read_text(errors="replace"), 15,
                       "the rogue logs the reason")
    finally:
        rogue.send_signal(signal.SIGKILL)
        rogue.wait(10)


# -- rotation -----------------------------------------------------------------------------------------------


class Load:
    """Writes (W=2) and reads against every node from a thread until stopped; every answer recorded."""

    def __init__(self, cluster: LocalCluster, ca_bundle: str) -> None:
        self.urls = [n.url for n in cluster.nodes[:2]]  # not n3, the one restarted: no request may fail
        self.creds = Credentials(cluster.creds().token, ca_bundle)
        self.acked: dict[str, int] = {}
        self.failures: list[str] = []
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _worker(self, index: int) -> None:
        # A fresh client (fresh HTTPS connections) every few requests: rotation must serve new connections.
        i = 0
        while not self._stop.is_set():
            async with Client(self.urls[(index + i) % len(self.urls)], timeout_s=10, creds=self.creds) as c:
                for _ in range(5):
                    key = f"rot:{index}:{i}"
                    try:
                        await c.put(key, [i], w=2)
                        self.acked[key] = i
                        got = await c.get(f"rot:{index}:{max(0, i - 3)}")
                        if not got.found:
                            self.failures.append(f"read of an acknowledged key rot:{index}:{max(0, i - 3)}")
                    except ClientError as e:
                        self.failures.append(f"{key}: {e}")
                    self.requests += 2
                    i += 1

    async def _run(self) -> None:
        await asyncio.gather(*(self._worker(k) for k in range(4)))


def served_issuer(node: LocalNode, ca_bundle: str) -> x509.Name:
    context = ssl.create_default_context(cafile=ca_bundle)
    with socket.create_connection(("127.0.0.1", node.http_port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).issuer


def test_certificate_rotation_under_load_loses_nothing(cluster: LocalCluster, tmp_path: Path) -> None:
    old_ca = certs.load_ca(Path(cluster.certs_dir))
    new_ca = certs.create_ca("ringkv")
    remember_secret(new_ca.key_pem)
    bundle = old_ca.cert_pem + new_ca.cert_pem
    client_bundle = tmp_path / "both.crt"
    client_bundle.write_bytes(bundle)
    reloads = 'ringkv_security_reloads_total{result="ok",what="certificate"}'
    with Load(cluster, str(client_bundle)) as load:
        wait_until(lambda: load.requests >= 100, 30, "the load runs")
        before = {n.node_id: sample(n, reloads) for n in cluster.nodes}
        certs.write(Path(cluster.certs_dir, certs.CA_CERT), bundle)  # 1. clients and every node trust both CAs
        for node in cluster.nodes:
            certs.write(Path(node.data_dir, "certs", certs.CA_CERT), bundle)
        wait_until(lambda: all(sample(n, reloads) > before[n.node_id] for n in cluster.nodes), 15,
                   "every node re-read its CA bundle")
        for node in cluster.nodes:  # 2. new certificates from the new CA, written as Kubernetes does: whole
            pair = certs.create_node(new_ca, "ringkv", node.node_id, ["127.0.0.1", "localhost"])
            remember_secret(pair.key_pem)
            d = Path(node.data_dir, "certs")
            staged = d.with_name("certs.new")
            certs.write(staged / certs.NODE_KEY, pair.key_pem, secret=True)
            certs.write(staged / certs.NODE_CERT, pair.cert_pem)
            certs.write(staged / certs.CA_CERT, bundle)
            old = d.with_name("certs.old")
            d.rename(old)
            staged.rename(d)
            with contextlib.suppress(OSError):
                for f in old.iterdir():
                    f.unlink()
                old.rmdir()
        new_subject = x509.load_pem_x509_certificate(new_ca.cert_pem).subject
        wait_until(lambda: all(served_issuer(n, str(client_bundle)) == new_subject for n in cluster.nodes), 15,
                   "every node serves its new certificate")
        mid = load.requests
        victim = cluster.nodes[2]  # 3. a restart: all of its connections, both ways, are new ones
        cluster.stop(victim)
        cluster.start(victim)
        cluster.wait_ready([victim], timeout_s=30)
        cluster.wait_converged(timeout_s=30)
        wait_until(lambda: load.requests >= mid + 200, 30, "the load goes on after the restart")
    assert load.failures == [], load.failures[:5]
    lost = []

    async def read_back() -> None:
        async with Client(cluster.nodes[0].url, creds=Credentials(cluster.creds().token, str(client_bundle))) as c:
            for key, value in load.acked.items():
                got = await c.get(key, r=2)
                if not got.found or got.value != [value]:
                    lost.append(key)

    asyncio.run(read_back())
    assert len(load.acked) > 100 and lost == []


# -- last: nothing secret was written anywhere ---------------------------------------------------------------


def test_no_secret_in_any_log_or_metric(cluster: LocalCluster) -> None:
    assert len(SECRETS) > 10
    texts = {n.log_path: Path(n.log_path).read_text(errors="replace") for n in cluster.nodes}
    texts.update({f"{n.node_id} /metrics": metrics(n) for n in cluster.nodes})
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, f"a secret ({secret[:6]}...) is in {where}"
    assert any("TLS certificate reloaded" in t for t in texts.values())
    assert time.time() < sample(cluster.nodes[0], "ringkv_tls_certificate_expiry_timestamp_seconds")
