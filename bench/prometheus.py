"""A real Prometheus server (Debian's `prometheus`) scraping local ringkv nodes, and its HTTP query API.

    with Prometheus(workdir, targets=[("127.0.0.1:8080", {"rack": "rack1"})], rules=[rules_yaml]) as prom:
        prom.wait_scraped(3)                             # every target answered a scrape
        prom.query('sum(rate(ringkv_http_requests_total[15s]))')
        prom.alerts()                                    # active alerts: [{"labels", "state", ...}]

The configuration scrapes every `scrape_s` seconds (1 s: tests and pictures want data quickly), evaluates rules
as often, labels every target `kvcluster=<cluster>` (what the chart's PodMonitor does) plus the target's own
labels (`rack`), and listens on 127.0.0.1 only. Used by tests/monitoring and bench/dashboard.py.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

BINARY = "prometheus"


def installed() -> bool:
    return shutil.which(BINARY) is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dashboard_expr(expr: str, rate_interval: str = "15s", cluster: str = ".+") -> str:
    """A dashboard expression as Grafana would send it: its variables substituted."""
    return expr.replace("$__rate_interval", rate_interval).replace("$kvcluster", cluster)


class PrometheusError(RuntimeError):
    pass


class Prometheus:
    def __init__(self, workdir: Path, targets: Sequence[tuple[str, dict[str, str]]], rules: Sequence[str] = (),
                 cluster: str = "local", scrape_s: float = 1.0) -> None:
        self.workdir = Path(workdir)
        self.targets = list(targets)
        self.rules = list(rules)
        self.cluster = cluster
        self.scrape_s = scrape_s
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        interval = f"{int(self.scrape_s * 1000)}ms"
        rule_files = []
        for i, text in enumerate(self.rules):
            path = self.workdir / f"rules-{i}.yaml"
            path.write_text(text)
            rule_files.append(str(path))
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
            "rule_files": rule_files,
            "scrape_configs": [{
                "job_name": "ringkv",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [address], "labels": {"kvcluster": self.cluster, **labels}}
                                   for address, labels in self.targets],
            }],
        }

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        return config

    def reload(self) -> None:
        """Re-read the configuration (after `targets` changed): SIGHUP."""
        self.write_config()
        if self.process is not None:
            self.process.send_signal(signal.SIGHUP)

    def start(self, timeout_s: float = 30.0) -> Prometheus:
        config = self.write_config()
        self.port = free_port()
        log = open(self.workdir / "prometheus.log", "ab")  # noqa: SIM115 (the process keeps it)
        self.process = subprocess.Popen(
            [BINARY, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d",
             "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise PrometheusError(f"prometheus not ready after {timeout_s:.0f}s: {self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def log_tail(self, chars: int = 3000) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # -- the HTTP API -------------------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400/422 carry the error document
            doc = json.loads(e.read() or b"{}")
        if doc.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr}: a {data['resultType']}, not a vector")
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step_s:g}")
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def firing(self, name: str) -> list[dict[str, str]]:
        return [a["labels"] for a in self.alerts() if a["labels"].get("alertname") == name and a["state"] == "firing"]

    def targets_up(self) -> int:
        active = self.api("targets")["activeTargets"]
        return sum(1 for t in active if t.get("health") == "up")

    def wait_scraped(self, count: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.targets_up() < count:
            if time.monotonic() > deadline:
                raise PrometheusError(f"fewer than {count} targets up after {timeout_s:.0f}s")
            time.sleep(0.2)
