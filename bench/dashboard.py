"""The Grafana dashboard with real data: a local 3-node cluster (one node per rack) under load, scraped by a real
Prometheus; a node is killed with SIGKILL and restarted, a repair runs; then every panel's PromQL is queried over
the run and the panels are drawn with matplotlib, as Grafana would draw them from the same results (Grafana
itself is not installed here).

    python bench/dashboard.py [--phase-s 20] [--out docs/img/dashboard.png]      # `make dashboard-png`

The panels come from charts/ringkv/files/dashboards/ringkv.json (rendered by tools/render-dashboard), the
alert rules from charts/ringkv/files/alerts/ringkv-rules.yaml. tests/monitoring uses the same cluster, load
and Prometheus helpers.
"""

from __future__ import annotations

import os
import sys

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = os.path.dirname(sys.path[0])

import argparse
import http.client
import itertools
import json
import random
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.prometheus import Prometheus, dashboard_expr
from ringkv import local
from ringkv.local import LocalCluster, LocalNode

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "charts" / "ringkv" / "files" / "dashboards" / "ringkv.json"
RULES = REPO / "charts" / "ringkv" / "files" / "alerts" / "ringkv-rules.yaml"
NODE_ARGS = ["--gossip-interval-s", "0.5", "--aae-interval-s", "2", "--log-level", "warning"]


# -- the dashboard and the rules as files ---------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    section: str
    title: str
    unit: str
    targets: tuple[tuple[str, str], ...]  # (expr, legend)


def panels(path: Path = DASHBOARD) -> list[Panel]:
    doc = json.loads(path.read_text())
    out, section = [], ""
    for p in doc["panels"]:
        if p["type"] == "row":
            section = p["title"]
            continue
        out.append(Panel(section, p["title"], p["fieldConfig"]["defaults"].get("unit", ""),
                         tuple((t["expr"], t.get("legendFormat", "")) for t in p["targets"])))
    return out


def rule_expressions(text: str) -> list[tuple[str, str]]:
    """(alert name, expr) of every rule in a rules file."""
    import yaml
    doc = yaml.safe_load(text)
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in doc["groups"] for r in g["rules"]]


def hurried_rules(text: str, for_s: int = 2) -> str:
    """The rules file with every `for:` cut to `for_s` seconds (alerts fire in a test's time; expressions and
    thresholds stay as shipped)."""
    return re.sub(r"^(\s+)for: \S+$", rf"\1for: {for_s}s", text, flags=re.MULTILINE)


# -- a cluster with racks, and load -----------------------------------------------------------------------------


@dataclass
class RackedCluster(LocalCluster):
    """A local cluster of three racks: node nK lives in rack `rack_of(nK)` (n1..n3 in rack1..rack3, n4 in rack1)."""

    def command(self, node: LocalNode) -> list[str]:
        return [*super().command(node), "--rack", rack_of(node.node_id)]


def rack_of(node_id: str) -> str:
    return f"rack{(int(node_id.lstrip('n')) - 1) % 3 + 1}"


def start_cluster(data_dir: str, base_port: int, nodes: int = 3, extra_args: tuple[str, ...] = ()) -> RackedCluster:
    cluster = RackedCluster(data_dir, nodes=local.plan(data_dir, nodes, base_port, 3), replication=3,
                            durability="batch", extra_args=[*NODE_ARGS, *extra_args])
    try:
        for node in cluster.nodes:
            cluster.start(node)
        cluster.wait_ready(timeout_s=60.0)
        cluster.wait_converged(timeout_s=30.0)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        cluster.kill(node)


def targets(cluster: LocalCluster) -> list[tuple[str, dict[str, str]]]:
    return [(f"127.0.0.1:{n.http_port}", {"rack": rack_of(n.node_id)}) for n in cluster.nodes]


@dataclass
class Load:
    """Puts, gets and reads of missing keys (404s) from a few threads, to every node in turn; `errors` counts
    answers other than 2xx/404 (expected while a node is down: the request went to it)."""

    cluster: LocalCluster
    threads: int = 4
    keys: int = 2000
    acked: int = 0
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(15)

    def _run(self, index: int) -> None:
        rng = random.Random(index)
        nodes = itertools.cycle(self.cluster.nodes[index % len(self.cluster.nodes):] + self.cluster.nodes)
        conns: dict[int, http.client.HTTPConnection] = {}
        while not self._stop.is_set():
            node = next(nodes)
            conn = conns.get(node.http_port) or http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=5)
            conns[node.http_port] = conn
            roll = rng.random()
            key = f"k{rng.randrange(self.keys)}"
            try:
                if roll < 0.5:
                    body = json.dumps({"key": key, "value": "v" * rng.randrange(10, 400)})
                    conn.request("POST", "/api/v1/put", body, {"Content-Type": "application/json"})
                elif roll < 0.95:
                    conn.request("GET", f"/api/v1/get?key={key}")
                else:
                    conn.request("GET", f"/api/v1/get?key=missing-{rng.randrange(10**9)}")
                response = conn.getresponse()
                response.read()
                ok = response.status < 300 or response.status == 404
            except (OSError, http.client.HTTPException):
                conn.close()
                conns.pop(node.http_port, None)
                ok = False
                self._stop.wait(0.05)  # a dead node refuses at once: do not spin on it
            with self._lock:
                if ok:
                    self.acked += 1
                else:
                    self.errors += 1


def admin(node: LocalNode, method: str, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=10)
    try:
        conn.request(method, path, "{}" if method == "POST" else None, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return json.loads(response.read() or b"{}")
    finally:
        conn.close()


def add_node(cluster: LocalCluster, node_id: str, http_port: int) -> LocalNode:
    """A new node with no tokens (it joins, streaming its ranges), appended to the cluster; not started."""
    node = LocalNode(node_id=node_id, http_port=http_port, peer_port=http_port + local.PEER_PORT_OFFSET,
                     data_dir=os.path.join(cluster.data_dir, node_id), tokens=[])
    cluster.nodes.append(node)
    return node


def wait_for(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


# -- drawing ----------------------------------------------------------------------------------------------------


def _label(legend: str, metric: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), legend) or \
        ",".join(f"{k}={v}" for k, v in sorted(metric.items())) or "value"


def render(prom: Prometheus, start: float, end: float, out: Path, marks: list[tuple[float, str]],
           step_s: float = 2.0) -> int:
    """Draw every panel from query_range results into one PNG; returns the number of series drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = panels()
    cols = 4
    rows = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 5.2, rows * 2.9), squeeze=False)
    drawn = 0
    for ax, panel in zip(axes.flat, items, strict=False):
        for expr, legend in panel.targets:
            for series in prom.query_range(dashboard_expr(expr), start, end, step_s):
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, linewidth=1.2, label=_label(legend, series["metric"])[:28])
                drawn += 1
        for at, _ in marks:
            ax.axvline(at - start, color="grey", linewidth=0.7, linestyle=":")
        ax.set_title(f"{panel.section}: {panel.title}", fontsize=8.5, loc="left")
        ax.tick_params(labelsize=7)
        ax.set_xlabel(f"s ({panel.unit})", fontsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="upper left", ncol=2, framealpha=0.6)
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    names = "; ".join(f"{at - start:.0f}s {text}" for at, text in marks)
    fig.suptitle("ringkv dashboard panels from a real Prometheus scraping a local 3-node cluster under load "
                 f"(drawn with matplotlib from the panels' PromQL). Events: {names}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return drawn


def _running(node: LocalNode) -> bool:
    try:
        ops = admin(node, "GET", "/admin/v1/operations").get("operations", [])
    except (OSError, ValueError):
        return False  # a decommissioned node exits
    return any(op.get("state") == "running" for op in ops)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase-s", type=float, default=20.0, help="seconds of each phase (default 20)")
    parser.add_argument("--out", default=str(REPO / "docs" / "img" / "dashboard.png"))
    parser.add_argument("--stream-mb-s", type=float, default=0.5,
                        help="streaming throttle of the nodes, so that the join shows (default 0.5 MB/s)")
    parser.add_argument("--keys", type=int, default=20_000, help="keys the load writes and reads")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="ringkv-dashboard-")
    from bench.compare import ringkv_base_port
    cluster = start_cluster(os.path.join(root, "cluster"), ringkv_base_port(3, set()),
                            extra_args=("--stream-mb-s", str(args.stream_mb_s)))
    marks: list[tuple[float, str]] = []
    try:
        with Prometheus(Path(root) / "prometheus", targets(cluster), rules=[RULES.read_text()]) as prom:
            prom.wait_scraped(3)
            load = Load(cluster, keys=args.keys).start()
            start = time.time()
            time.sleep(args.phase_s)
            victim = cluster.node("n3")
            cluster.kill(victim)
            marks.append((time.time(), "kill -9 n3"))
            print(f"dashboard: killed n3 at {marks[-1][0] - start:.0f}s", file=sys.stderr)
            time.sleep(args.phase_s)
            cluster.start(victim)
            cluster.wait_ready([victim], timeout_s=60)
            marks.append((time.time(), "n3 restarted"))
            time.sleep(args.phase_s)
            admin(cluster.node("n1"), "POST", "/admin/v1/repair")
            marks.append((time.time(), "repair on n1"))
            time.sleep(args.phase_s / 2)
            # a 4th node joins (streaming, throttled so that it shows), then is decommissioned
            from bench.compare import ringkv_base_port
            joiner = add_node(cluster, "n4", ringkv_base_port(1, {p for n in cluster.nodes
                                                                   for p in (n.http_port, n.peer_port)}))
            prom.targets.append((f"127.0.0.1:{joiner.http_port}", {"rack": rack_of("n4")}))
            prom.reload()
            cluster.start(joiner)
            marks.append((time.time(), "n4 joins"))
            cluster.wait_ready([joiner], timeout_s=300)
            time.sleep(args.phase_s / 2)
            admin(joiner, "POST", "/admin/v1/decommission")
            marks.append((time.time(), "n4 decommissioned"))
            wait_for(lambda: not _running(joiner), 300, "the decommission to end")
            time.sleep(args.phase_s / 2)
            load.stop()
            end = time.time()
            drawn = render(prom, start, end, Path(args.out), marks)
            print(f"dashboard: {load.acked:,} requests answered, {load.errors:,} failed; {drawn} series in "
                  f"{len(panels())} panels -> {args.out}", file=sys.stderr)
    finally:
        stop_cluster(cluster)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
