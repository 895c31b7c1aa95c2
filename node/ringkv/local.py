"""`ringkv local up|status|down`: a cluster of real node processes on this machine (127.0.0.1).

Node i (1-based) is `n{i}`, serves HTTP on `base_port + i - 1` and peers on `base_port + 1000 + i - 1`,
keeps its data in `DATA_DIR/n{i}/` and its log in `DATA_DIR/n{i}/node.log`. Tokens are planned up front
(nodes joining the ring one by one, `ring.join`), so a fresh cluster starts balanced. The processes are
detached; `DATA_DIR/local-cluster.json` records them so `status` and `down` work from any later shell.

Secure by default (`secure=True`, what `ringkv local up` does unless `--insecure`): a cluster CA in
`DATA_DIR/certs/` (ca.crt, ca.key), each node's certificate in `DATA_DIR/n{i}/certs/` (for 127.0.0.1 and
localhost), mutual TLS between the nodes, HTTPS, and one admin token (`DATA_DIR/certs/admin.token`, its hash
in `DATA_DIR/certs/tokens`). `env()` gives the RINGKV_* variables a client needs to reach it.

`LocalCluster` is the same as a library (tests use it to kill, stop and restart single nodes).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ringkv.cluster import ring as ringmod
from ringkv.cluster.ids import NodeId
from ringkv.security import certs, tokens
from ringkv.security.credentials import Credentials

STATE_FILE = "local-cluster.json"
PEER_PORT_OFFSET = 1000
CERTS_DIR = "certs"
ADMIN_TOKEN = "admin.token"
TOKENS = "tokens"


@dataclass
class LocalNode:
    node_id: str
    http_port: int
    peer_port: int
    data_dir: str
    tokens: list[int]
    pid: int = 0
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.data_dir, "node.log")


def plan(data_dir: str, nodes: int, base_port: int, replication: int, num_tokens: int = 16) -> list[LocalNode]:
    """Node names, ports, directories and balanced tokens for a fresh cluster (pure but for paths)."""
    ring = ringmod.Ring()
    out = []
    for i in range(1, nodes + 1):
        info = ringmod.NodeInfo(NodeId(f"n{i}"))
        ring = ringmod.join(ring, info, replication=replication, tokens_per_unit=num_tokens)
        out.append(LocalNode(
            node_id=f"n{i}", http_port=base_port + i - 1, peer_port=base_port + PEER_PORT_OFFSET + i - 1,
            data_dir=os.path.join(data_dir, f"n{i}"), tokens=list(ring.tokens_of(info.node_id)),
        ))
    return out


def port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port` (a bind test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as dead
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _open(url: str, creds: Credentials | None, timeout_s: float) -> Any:
    creds = creds or Credentials()
    request = urllib.request.Request(url, headers=creds.headers())
    context = creds.ssl_context() if url.startswith("https:") else None
    return urllib.request.urlopen(request, timeout=timeout_s, context=context)


def _http_json(url: str, timeout_s: float = 1.0, creds: Credentials | None = None) -> Any:
    try:
        with _open(url, creds, timeout_s) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _http_ok(url: str, timeout_s: float = 1.0, creds: Credentials | None = None) -> bool:
    try:
        with _open(url, creds, timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class LocalCluster:
    data_dir: str
    nodes: list[LocalNode] = field(default_factory=list)
    replication: int = 3
    durability: str = "sync"
    extra_args: list[str] = field(default_factory=list)
    secure: bool = False
    https: bool = True  # with `secure`: the HTTP API over TLS too

    # -- security -------------------------------------------------------------------------------------

    @property
    def certs_dir(self) -> str:
        return os.path.join(self.data_dir, CERTS_DIR)

    def creds(self) -> Credentials:
        """The admin token and the CA (no credentials for an insecure cluster)."""
        if not self.secure:
            return Credentials()
        token = Path(self.certs_dir, ADMIN_TOKEN).read_text().strip()
        return Credentials(token, os.path.join(self.certs_dir, certs.CA_CERT))

    def env(self) -> dict[str, str]:
        """The RINGKV_* variables that point a client command at this cluster, as its admin."""
        out = {"RINGKV_URL": self.nodes[0].url if self.nodes else ""}
        if self.secure:
            out["RINGKV_TOKEN_FILE"] = os.path.join(self.certs_dir, ADMIN_TOKEN)
            out["RINGKV_CA_CERT"] = os.path.join(self.certs_dir, certs.CA_CERT)
        return out

    def ensure_certs(self) -> None:
        """The CA, each node's certificate and the admin token, made once (kept across `down`/`up`)."""
        top = Path(self.certs_dir)
        if not (top / certs.CA_KEY).exists():
            ca = certs.create_ca("ringkv")
            certs.write(top / certs.CA_KEY, ca.key_pem, secret=True)
            certs.write(top / certs.CA_CERT, ca.cert_pem)
        ca = certs.load_ca(top)
        if not (top / TOKENS).exists():
            token = tokens.new_token()
            certs.write(top / ADMIN_TOKEN, (token + "\n").encode(), secret=True)
            certs.write(top / TOKENS, tokens.render([tokens.Entry("admin", "admin", tokens.digest(token))]).encode(),
                        secret=True)
        for node in self.nodes:
            node_dir = Path(node.data_dir) / CERTS_DIR
            if not (node_dir / certs.NODE_KEY).exists():
                pair = certs.create_node(ca, "ringkv", node.node_id, ["127.0.0.1", "localhost"])
                certs.write(node_dir / certs.NODE_KEY, pair.key_pem, secret=True)
                certs.write(node_dir / certs.NODE_CERT, pair.cert_pem)
                certs.write(node_dir / certs.CA_CERT, ca.cert_pem)

    def _security_args(self, node: LocalNode) -> list[str]:
        if not self.secure:
            return ["--insecure"]
        return ["--certs-dir", os.path.join(node.data_dir, CERTS_DIR), "--tokens-file",
                os.path.join(self.certs_dir, TOKENS), *(["--http-tls"] if self.https else [])]

    # -- persistence ----------------------------------------------------------------------------------

    @property
    def state_path(self) -> str:
        return os.path.join(self.data_dir, STATE_FILE)

    def save(self) -> None:
        doc = {"replication": self.replication, "durability": self.durability, "extra_args": self.extra_args,
               "secure": self.secure, "https": self.https, "nodes": [asdict(n) for n in self.nodes]}
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=2)
        os.replace(tmp, self.state_path)

    @classmethod
    def load(cls, data_dir: str) -> LocalCluster | None:
        path = os.path.join(data_dir, STATE_FILE)
        try:
            with open(path) as f:
                doc: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            return None
        return cls(data_dir, [LocalNode(**n) for n in doc["nodes"]], int(doc["replication"]),
                   str(doc["durability"]), list(doc.get("extra_args", [])), bool(doc.get("secure", False)),
                   bool(doc.get("https", True)))

    # -- processes ------------------------------------------------------------------------------------

    def seeds(self) -> str:
        return ",".join(f"127.0.0.1:{n.peer_port}" for n in self.nodes[:2])

    def command(self, node: LocalNode) -> list[str]:
        return [
            sys.executable, "-m", "ringkv.cli", "node", "--data-dir", node.data_dir, "--host", "127.0.0.1",
            "--port", str(node.http_port), "--peer-port", str(node.peer_port), "--node-id", node.node_id,
            "--seeds", self.seeds(), "--tokens=" + ",".join(map(str, node.tokens)),
            "--replication-factor", str(self.replication), "--durability", self.durability,
            *self._security_args(node), *self.extra_args,
        ]

    def start(self, node: LocalNode) -> None:
        if _alive(node.pid):
            return
        for port in (node.http_port, node.peer_port):
            if not port_free(port):
                raise RuntimeError(f"port {port} for {node.node_id} is in use")
        os.makedirs(node.data_dir, exist_ok=True)
        node.scheme = "https" if self.secure and self.https else "http"
        if self.secure:
            self.ensure_certs()
        with open(node.log_path, "ab") as log:
            process = subprocess.Popen(self.command(node), stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        node.pid = process.pid
        self.save()

    def wait_ready(self, nodes: Sequence[LocalNode] | None = None, timeout_s: float = 60.0) -> None:
        waiting = list(nodes if nodes is not None else self.nodes)
        deadline = time.monotonic() + timeout_s
        creds = self.creds()
        while waiting:
            waiting = [n for n in waiting if not _http_ok(n.url + "/ready", creds=creds)]
            for n in waiting:
                if not _alive(n.pid):
                    raise RuntimeError(f"{n.node_id} exited; see {n.log_path}")
            if not waiting:
                return
            if time.monotonic() > deadline:
                names = ", ".join(n.node_id for n in waiting)
                raise TimeoutError(f"not ready after {timeout_s:.0f}s: {names}")
            time.sleep(0.1)

    def wait_converged(self, timeout_s: float = 30.0) -> None:
        """Until every running node's gossip sees every running node up and `normal` (so in its ring: a
        restarted node is announced `joining`, without tokens, for a gossip round before that)."""
        expected = {n.node_id for n in self.nodes if _alive(n.pid)}
        deadline = time.monotonic() + timeout_s
        while True:
            creds = self.creds()
            seen = [_http_json(self.node(n).url + "/admin/v1/members", creds=creds) for n in expected]
            if all(doc and {m["node_id"] for m in doc["members"] if m["up"] and m["status"] == "normal"} >= expected
                   for doc in seen):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"gossip did not converge within {timeout_s:.0f}s")
            time.sleep(0.1)

    def signal(self, node: LocalNode, sig: int) -> None:
        if _alive(node.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, sig)

    def kill(self, node: LocalNode) -> None:
        """SIGKILL, and wait until the process is gone."""
        self.signal(node, signal.SIGKILL)
        self._wait_gone(node, 10.0)

    def stop(self, node: LocalNode, timeout_s: float = 30.0) -> None:
        """SIGTERM (clean shutdown), SIGKILL if it takes longer than `timeout_s`."""
        self.signal(node, signal.SIGTERM)
        if not self._wait_gone(node, timeout_s):
            self.kill(node)

    def _wait_gone(self, node: LocalNode, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while _alive(node.pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def status(self) -> list[dict[str, Any]]:
        creds = self.creds()
        return [{"node_id": n.node_id, "pid": n.pid, "http": n.url, "peer_port": n.peer_port,
                 "data_dir": n.data_dir, "alive": _alive(n.pid), "up": _http_ok(n.url + "/health", creds=creds)}
                for n in self.nodes]

    def node(self, node_id: str) -> LocalNode:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)


def up(data_dir: str, nodes: int = 3, base_port: int = 8080, replication: int = 3, durability: str = "sync",
       extra_args: Sequence[str] = (), secure: bool = False, https: bool = True) -> LocalCluster:
    data_dir = os.path.abspath(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    cluster = LocalCluster.load(data_dir)
    if cluster is None or len(cluster.nodes) != nodes:
        if cluster is not None and any(_alive(n.pid) for n in cluster.nodes):
            raise RuntimeError(f"a cluster of {len(cluster.nodes)} nodes is running in {data_dir}; "
                               "run 'ringkv local down' first")
        cluster = LocalCluster(data_dir, plan(data_dir, nodes, base_port, min(replication, nodes)),
                               min(replication, nodes), durability, list(extra_args), secure, https)
    elif cluster.secure != secure and not any(_alive(n.pid) for n in cluster.nodes):
        cluster.secure = secure  # the same nodes, restarted with (or without) security
    for node in cluster.nodes:
        cluster.start(node)
    cluster.wait_ready()
    cluster.wait_converged()
    return cluster


def down(data_dir: str, timeout_s: float = 30.0) -> LocalCluster | None:
    cluster = LocalCluster.load(os.path.abspath(data_dir))
    if cluster is None:
        return None
    for node in cluster.nodes:
        cluster.signal(node, signal.SIGTERM)
    for node in cluster.nodes:
        cluster.stop(node, timeout_s)
        node.pid = 0
    cluster.save()
    return cluster
