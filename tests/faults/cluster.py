"""Real `ringkv node` processes, one inside each namespace of a `netns.Network`.

Node i (0-based) is `n{i+1}`, listens on 10.77.X.(i+1):8080 (HTTP) and :7070 (peers) inside `rkv<pid>-n<i>`,
seeds are the first two nodes, tokens come from `ringkv.local.plan` (a balanced ring), replication 3,
durability sync, gossip every 0.5 s. Data lives in RUN_DIR/nodes/n{i+1}/, stdout and stderr go to
RUN_DIR/logs/n{i+1}.log (appended across restarts, each start marked).

Readiness is polled from the root namespace (its bridge address routes there; every URL is checked by
`Network.check_url` first), with a deadline, through an opener that ignores any proxy settings. Faults:
`kill9` + `start` (same data dir), `pause` (SIGSTOP) / `resume` (SIGCONT); topology churn: `decommission`
(the node hands its ranges over and exits by itself) then `rejoin` (data directory wiped, started with no
`--tokens`: it joins as a new member, waits its turn and streams its ranges before it is ready).

`secure=True`: a CA in RUN_DIR/certs, a certificate per node (for its address), mutual TLS between the nodes
and an admin token (`token`) that every admin call here sends; client HTTP stays plain.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringkv import local
from ringkv.security import certs, tokens
from tests.faults.netns import Network

REPO = Path(__file__).resolve().parents[2]
NODE_SRC = REPO / "node"
HTTP_PORT = 8080
PEER_PORT = 7070
DRAIN_DELAY_S = 1.0  # a graceful stop (the nemesis' `stop`) serves this long after announcing it
GOSSIP_INTERVAL_S = 0.5
REPLICATION = 3
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


@dataclass
class NetNode:
    index: int
    node_id: str
    host: str
    data_dir: Path
    log_path: Path
    tokens: list[int]
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    starts: int = 0
    killed: bool = False  # the current process was SIGKILLed on purpose
    unexpected_exits: list[str] = field(default_factory=list)  # exits nobody asked for ("code 1 at 12:03:04")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{HTTP_PORT}"

    @property
    def peer(self) -> str:
        return f"{self.host}:{PEER_PORT}"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class NetCluster:
    def __init__(self, net: Network, run_dir: Path, extra_args: list[str] | None = None,
                 secure: bool = False) -> None:
        self.net = net
        self.run_dir = run_dir
        self.extra_args = list(extra_args or [])
        planned = local.plan(str(run_dir / "nodes"), net.size, HTTP_PORT, REPLICATION)
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.nodes = [NetNode(i, p.node_id, net.addr(i), Path(p.data_dir), run_dir / "logs" / f"{p.node_id}.log",
                              list(p.tokens)) for i, p in enumerate(planned)]
        self.secure = secure
        self.token: str | None = None
        if secure:
            self._make_certs()

    def _make_certs(self) -> None:
        top = self.run_dir / "certs"
        ca = certs.create_ca("ringkv")
        self.token = tokens.new_token()
        certs.write(top / "tokens", tokens.render([tokens.Entry("bench", "admin", tokens.digest(self.token))])
                    .encode(), secret=True)
        for node in self.nodes:
            pair = certs.create_node(ca, "ringkv", node.node_id, [node.host])
            d = top / node.node_id
            certs.write(d / certs.CA_CERT, ca.cert_pem)
            certs.write(d / certs.NODE_CERT, pair.cert_pem)
            certs.write(d / certs.NODE_KEY, pair.key_pem, secret=True)

    def _security_args(self, node: NetNode) -> list[str]:
        if not self.secure:
            return ["--insecure"]
        return ["--certs-dir", str(self.run_dir / "certs" / node.node_id),
                "--tokens-file", str(self.run_dir / "certs" / "tokens")]

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(self.net.check_url(n.url) for n in self.nodes)

    def seeds(self) -> str:
        return ",".join(n.peer for n in self.nodes[:2])

    def command(self, node: NetNode) -> list[str]:
        return self.net.exec_argv(node.index, [
            python(), "-m", "ringkv.cli", "node", "--host", node.host, "--port", str(HTTP_PORT),
            "--peer-port", str(PEER_PORT), "--node-id", node.node_id, "--seeds", self.seeds(),
            *(["--tokens=" + ",".join(map(str, node.tokens))] if node.tokens else []),
            "--replication-factor", str(REPLICATION),
            "--durability", "sync", "--gossip-interval-s", str(GOSSIP_INTERVAL_S), "--data-dir", str(node.data_dir),
            "--drain-delay-s", str(DRAIN_DELAY_S),
            *self._security_args(node),
            *self.extra_args,
        ])

    # -- processes --------------------------------------------------------------------------------------------

    def note_exit(self, node: NetNode) -> str | None:
        """If `node`'s process ended without `kill9`, note it (once) and return the note."""
        if node.process is None or node.process.poll() is None or node.killed:
            return None
        note = f"code {node.process.returncode} (start {node.starts}), noticed at {time.strftime('%H:%M:%S')}"
        node.unexpected_exits.append(note)
        node.killed = True  # noted: not again for this process
        return note

    def unexpected_exits(self) -> dict[str, list[str]]:
        for node in self.nodes:
            self.note_exit(node)
        return {n.node_id: list(n.unexpected_exits) for n in self.nodes if n.unexpected_exits}

    def start(self, node: NetNode) -> None:
        if node.running():
            return
        self.note_exit(node)
        self.net.check_url(node.url)  # routed via the bridge before the node (or we) send anything
        node.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NODE_SRC), env.get("PYTHONPATH", "")]))
        with open(node.log_path, "ab") as log:
            node.starts += 1
            log.write(f"===== start {node.starts} of {node.node_id} at {time.strftime('%H:%M:%S')} "
                      f"({time.time():.3f}) =====\n".encode())
            log.flush()
            node.process = subprocess.Popen(self.command(node), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        node.paused = False
        node.killed = False

    def start_all(self) -> None:
        for node in self.nodes:
            self.start(node)

    def kill9(self, node: NetNode) -> None:
        """SIGKILL (a paused node too) and wait until the process is gone."""
        if node.process is None:
            return
        self.note_exit(node)
        node.killed = True
        with contextlib.suppress(ProcessLookupError):
            node.process.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.process.wait(timeout=10.0)
        node.paused = False

    def terminate(self, node: NetNode, timeout_s: float = 30.0) -> str:
        """SIGTERM: a graceful stop (the node drains: announces its shutdown, serves `--drain-delay-s` more,
        finishes in-flight requests, keeps owed replication as hints, flushes). Waits for the exit; a node that
        does not stop in `timeout_s` is SIGKILLed. Returns what happened (an exit code other than 0 says so)."""
        if node.process is None or not node.running():
            return "not running"
        node.killed = True  # asked for: not an unexpected exit
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            node.process.send_signal(signal.SIGTERM)
        try:
            code = node.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9(node)
            return f"did NOT stop within {timeout_s:.0f}s of SIGTERM: killed"
        took = time.monotonic() - started
        if code != 0:  # a graceful stop that fails is a finding
            node.unexpected_exits.append(f"code {code} after SIGTERM (start {node.starts})")
            return f"stopped with exit code {code} (NOT 0) in {took:.2f}s"
        return f"stopped in {took:.2f}s"

    def pause(self, node: NetNode) -> None:
        if node.running():
            node.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
            node.paused = True

    def resume(self, node: NetNode) -> None:
        if node.running():
            node.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        node.paused = False

    def stop_all(self) -> None:
        """SIGCONT + SIGKILL every node, waiting (bounded) for each to be gone."""
        for node in self.nodes:
            self.note_exit(node)
            node.killed = True
            if node.running():
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
                    node.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        for node in self.nodes:
            self.kill9(node)

    # -- topology churn ---------------------------------------------------------------------------------------

    def decommission(self, node: NetNode) -> int:
        """POST /admin/v1/decommission to `node` (its exit at the end is expected); the HTTP status."""
        url = self.net.check_url(node.url + "/admin/v1/decommission")
        request = urllib.request.Request(url, data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json", **self.headers()})
        node.killed = True  # it stops by itself once it has left: not an unexpected exit
        try:
            with _NO_PROXY.open(request, timeout=5.0) as response:
                return int(response.status)
        except urllib.error.HTTPError as e:
            return e.code
        except (urllib.error.URLError, OSError):
            return 0

    def rejoin(self, node: NetNode, left_timeout_s: float, join_timeout_s: float) -> str:
        """Wait until the decommissioned `node` has exited, wipe its data, start it as a new member (no tokens),
        wait until it is ready (joined and streamed). What happened, in words."""
        assert node.process is not None
        try:
            node.process.wait(timeout=left_timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9(node)
            self.start(node)  # back on its data and tokens: the decommission is rolled back
            self.wait_ready([node], timeout_s=join_timeout_s)
            return f"decommission NOT finished in {left_timeout_s:.0f}s: killed, restarted on its data"
        code = node.process.returncode
        shutil.rmtree(node.data_dir, ignore_errors=True)
        node.tokens = []
        start = time.monotonic()
        self.start(node)
        self.wait_ready([node], timeout_s=join_timeout_s)
        return f"left (exit {code}), wiped, rejoined and streamed in {time.monotonic() - start:.1f}s"

    # -- readiness --------------------------------------------------------------------------------------------

    def get_json(self, node: NetNode, path: str, timeout_s: float = 1.0) -> tuple[int, Any]:
        """(status, parsed body) of GET node.url+path; status 0 when no answer."""
        url = self.net.check_url(node.url + path)
        try:
            with _NO_PROXY.open(urllib.request.Request(url, headers=self.headers()), timeout=timeout_s) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, None
        except (urllib.error.URLError, OSError, ValueError):
            return 0, None

    def wait_ready(self, nodes: list[NetNode] | None = None, timeout_s: float = 60.0) -> None:
        waiting = list(nodes if nodes is not None else self.nodes)
        deadline = time.monotonic() + timeout_s
        for _ in range(int(timeout_s / 0.1) + 100):
            waiting = [n for n in waiting if self.get_json(n, "/ready")[0] != 200]
            if not waiting:
                return
            for n in waiting:
                if not n.running():
                    raise RuntimeError(f"{n.node_id} exited (code {n.process and n.process.returncode}); "
                                       f"see {n.log_path}:\n{self.log_tail(n)}")
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        raise TimeoutError(f"not ready after {timeout_s:.0f}s: {', '.join(n.node_id for n in waiting)}")

    def wait_converged(self, timeout_s: float = 30.0) -> None:
        """Until every running node sees every running node up and `normal`."""
        expected = {n.node_id for n in self.nodes if n.running()}
        deadline = time.monotonic() + timeout_s
        for _ in range(int(timeout_s / 0.1) + 100):
            docs = [self.get_json(n, "/admin/v1/members")[1] for n in self.nodes if n.running()]
            if all(isinstance(d, dict) and {m["node_id"] for m in d.get("members", [])
                                            if m.get("up") and m.get("status") == "normal"} >= expected
                   for d in docs):
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        raise TimeoutError(f"gossip did not converge within {timeout_s:.0f}s")

    def log_tail(self, node: NetNode, lines: int = 40) -> str:
        try:
            with open(node.log_path, errors="replace") as f:
                tail = f.readlines()[-lines:]
        except OSError as e:
            return f"(no log: {e})"
        return "".join(line[:400].rstrip() + "\n" for line in tail)

    def node(self, node_id: str) -> NetNode:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)
