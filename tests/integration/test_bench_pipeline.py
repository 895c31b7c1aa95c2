"""The benchmark pipeline end to end, with short durations, so that it cannot rot:

- `ringkv bench` (two worker processes, JSON output) against a tiny local ringkv cluster;
- `bench/compare.py` starting its own ringkv cluster, etcd and redis-server, running every workload, stopping
  everything, writing the doc and the chart. etcd and Redis are only used when their binaries are installed
  (the tests never install anything); their parts skip with a message otherwise.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from ringkv import local

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def free_base_port(nodes: int) -> int:
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(30_000, 40_000)
        ports = [base + i for i in range(nodes)] + [base + local.PEER_PORT_OFFSET + i for i in range(nodes)]
        free = True
        for port in ports:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    free = False
                    break
        if free:
            return base
    raise RuntimeError("no free ports")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.LocalCluster]:
    data_dir = str(tmp_path_factory.mktemp("bench-cluster"))
    try:
        yield local.up(data_dir, nodes=3, base_port=free_base_port(3), replication=3, durability="sync")
    finally:
        local.down(data_dir)


def test_ringkv_bench_cli_with_two_workers(cluster: local.LocalCluster) -> None:
    urls = ",".join(n.url for n in cluster.nodes)
    done = subprocess.run(
        [sys.executable, "-m", "ringkv.cli", "bench", "--url", urls, "--ops", "300", "--warmup", "0.3",
         "--mix", "0.5", "--keys", "100", "--preload", "--workers", "2", "--connections", "8",
         "--distribution", "zipfian", "--json"],
        capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    doc = orjson.loads(done.stdout)
    assert doc["workers"] == 2 and doc["errors"] == 0
    assert doc["ok"] == 300  # the operation count is split over the workers and exact
    assert doc["ops"]["put"]["ok"] > 0 and doc["ops"]["get"]["ok"] > 0
    assert doc["ops"]["get"]["misses"] == 0  # preloaded
    lat = doc["all"]["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert "preload" in done.stderr and "ops/s" in done.stderr  # the progress line


def test_ringkv_bench_cli_reports_an_unreachable_target() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    done = subprocess.run(
        [sys.executable, "-m", "ringkv.cli", "bench", "--url", f"http://127.0.0.1:{port}", "--duration", "0.5",
         "--warmup", "0", "--connections", "2", "--quiet"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "ClientConnectorError" in done.stdout


@dataclass
class CompareRun:
    returncode: int
    stdout: str
    stderr: str
    doc: str
    chart: Path
    leftovers: str


@pytest.fixture(scope="module")
def compare(tmp_path_factory: pytest.TempPathFactory) -> CompareRun:
    root = tmp_path_factory.mktemp("compare")
    out, chart = root / "benchmarks-cluster.md", root / "img" / "latency-percentiles.png"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "compare.py"), "--duration", "0.5", "--warmup", "0.2", "--keys", "100",
         "--connections", "8", "--no-install", "--dir", str(root), "--out", str(out), "--chart", str(chart)],
        capture_output=True, text=True, timeout=110, check=False, cwd=root)
    # every process compare.py started had its data under `root`; none may be left running
    leftovers = "" if shutil.which("pgrep") is None else subprocess.run(
        ["pgrep", "-af", str(root)], capture_output=True, text=True, check=False).stdout
    return CompareRun(done.returncode, done.stdout, done.stderr, out.read_text() if out.exists() else "", chart,
                      leftovers)


def test_compare_measures_ringkv_and_writes_the_doc(compare: CompareRun) -> None:
    assert compare.returncode == 0, compare.stderr[-3000:]
    assert compare.leftovers == "", f"still running after compare.py: {compare.leftovers}"
    assert "| put | " in compare.stdout and "| get | " in compare.stdout and "| mixed | " in compare.stdout
    doc = compare.doc
    assert doc.startswith("# ringkv next to etcd and Redis")
    assert "python bench/compare.py --duration 0.5" in doc  # the exact command
    assert "cores" in doc and "RF 3, W 2, R 2, durability sync" in doc
    for workload in ("put", "get", "mixed"):
        assert f"| {workload} | ringkv | {workload if workload != 'mixed' else 'put'} |" in doc
    assert "ringkv/etcd" in doc or "etcd: skipped" in doc
    # the CPU each server process spent per operation, one column entry per node
    assert "server processes: CPU µs/op" in doc
    assert re.search(r"\| put \| ringkv bench \| ringkv \| [\d,]+ \| n\d [\d,]+, n\d [\d,]+, n\d [\d,]+ \|", doc), doc


def test_compare_drives_ringkv_with_wrk_too(compare: CompareRun) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk): compare.py ran ringkv bench only")
    for workload in ("put", "get", "mixed"):
        row = re.search(rf"\| {workload} \| wrk \| ringkv \| ([\d,]+) \| (n\d [\d,]+(, )?){{3}} \| [\d,]+ \| [\d,]+ \| "
                        rf"\d+% \| \d+% \| (\S+) \|", compare.doc)
        assert row, compare.doc
        assert int(row.group(1).replace(",", "")) > 0
        assert row.group(4) == "0", f"wrk saw errors: {row.group(0)}"  # non-2xx answers would flatter the figure


def test_compare_chart(compare: CompareRun) -> None:
    if "matplotlib is not installed" in compare.stderr:
        pytest.skip("matplotlib is not installed: compare.py wrote no chart")
    assert compare.chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![latency percentiles per system](img/latency-percentiles.png)" in compare.doc


def test_compare_against_etcd(compare: CompareRun) -> None:
    if shutil.which("etcd") is None:
        assert "etcd: skipped, `etcd` not found (--no-install)" in compare.doc
        pytest.skip("etcd is not installed (apt-get install etcd-server): the etcd part was skipped")
    assert "| put | etcd | put |" in compare.doc and "| get | etcd | get |" in compare.doc
    assert "ringkv/etcd ops/s" in compare.doc
    assert "etcd mixed failed" not in compare.stderr


def test_compare_against_redis(compare: CompareRun) -> None:
    if shutil.which("redis-server") is None:
        assert "redis: skipped, `redis-server` not found (--no-install)" in compare.doc
        pytest.skip("redis-server is not installed (apt-get install redis-server): the Redis part was skipped")
    assert "| put | redis | put |" in compare.doc and "| mixed | redis | get |" in compare.doc
    assert os.path.getsize(compare.chart) > 0 or "matplotlib is not installed" in compare.stderr
