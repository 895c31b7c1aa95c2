"""`ringkv admin` against real nodes: status, ring, streams, and a decommission followed to its end."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.cluster_helpers import admin, metric, running_cluster, wait_until

pytestmark = pytest.mark.slow


def ringkv(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ringkv.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, check=False)


def test_admin_status_ring_streams_and_decommission(tmp_path: Path) -> None:
    with running_cluster(tmp_path, nodes=4) as cluster:
        n1, n4 = cluster.nodes[0], cluster.nodes[3]
        # Every node gossips its view of the ring a round after it has it: wait for all four to show one.
        wait_until(lambda: admin(n1, "/admin/v1/ring")["agreed"], 15, "every member gossips the same ring view")
        status = ringkv("admin", "status", "--url", n1.url)
        assert status.returncode == 0, status.stderr
        assert "all members agree" in status.stdout
        for node in cluster.nodes:
            assert node.node_id in status.stdout
        ring = ringkv("admin", "ring", "--url", n1.url, "--json")
        assert ring.returncode == 0 and json.loads(ring.stdout)["agreed"] is True
        streams = ringkv("admin", "streams", "--url", n4.url)
        assert streams.returncode == 0 and "n4: normal" in streams.stdout

        gone = ringkv("admin", "decommission", "--url", n4.url)
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert "done" in gone.stdout
        wait_until(lambda: all(len(admin(n, "/admin/v1/ring")["nodes"]) == 3 for n in cluster.nodes[:3]), 30,
                   "every remaining node's ring without n4")

        last = ringkv("admin", "status", "--url", "http://127.0.0.1:1")
        assert last.returncode == 2 and "cannot reach" in last.stderr


def test_admin_drain_stops_client_requests_and_flushes(tmp_path: Path) -> None:
    """A drained node answers no client request (503 `not_ready`, and `/ready` 503) while the others go on
    serving (it is still a replica); its memtable is flushed; a second drain answers the first."""
    def call(url: str, body: bytes | None = None) -> tuple[int, dict[str, object]]:
        assert url.startswith("http://127.0.0.1:"), url
        req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    with running_cluster(tmp_path, nodes=3) as cluster:
        n1, n2 = cluster.nodes[0], cluster.nodes[1]
        for i in range(50):
            assert call(n1.url + "/api/v1/put", json.dumps({"key": f"d{i}", "value": str(i)}).encode())[0] == 200
        assert metric(n1, "ringkv_storage_memtable_bytes") > 0
        drained = ringkv("admin", "drain", "--url", n1.url)
        assert drained.returncode == 0, drained.stdout + drained.stderr
        assert admin(n1, "/admin/v1/node")["mode"] == "drained"
        assert metric(n1, "ringkv_storage_memtable_bytes") == 0
        status, body = call(n1.url + "/api/v1/put", json.dumps({"key": "late", "value": "1"}).encode())
        assert (status, body["error"]) == (503, "not_ready")
        assert call(n1.url + "/api/v1/getValue?key=d1")[0] == 503
        assert call(n1.url + "/ready")[0] == 503
        # The others still serve every key (n1 is still a replica: writes through n2 reach it).
        assert call(n2.url + "/api/v1/put", json.dumps({"key": "after", "value": "2"}).encode())[0] == 200
        assert all(call(n2.url + f"/api/v1/getValue?key=d{i}&r=3")[0] == 200 for i in range(50))
        again, op = call(n1.url + "/admin/v1/drain", b"{}")
        assert again == 200 and op["state"] == "done"
