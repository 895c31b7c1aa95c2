"""`ringkv admin` against real nodes: status, ring, streams, and a decommission followed to its end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.cluster_helpers import admin, running_cluster, wait_until

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
