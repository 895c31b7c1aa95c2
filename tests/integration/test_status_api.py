"""`GET /admin/v1/cluster`, the document behind the status page, with real node processes (insecure cluster,
127.0.0.1): every member's own status gathered through one node; what it says as nodes die.

- healthy: every member up and `normal`, each with its own status (mode, ready, requests with the window's
  rate, hints, storage), one agreed ring, quorum fine; the page and its assets are served.
- one of three killed: it is down with an `error` instead of a status, the others still answer, the quorum
  document counts every range under-replicated but none unavailable (RF 3, R = W = 2).
- two of three killed: every range's reads unavailable and writes unavailable: `lost`.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from ringkv.local import LocalCluster
from tests.integration.cluster_helpers import admin, http_json, running_cluster, wait_until
from tests.integration.topology_helpers import post_json

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("status"), nodes=3) as c:
        yield c


def status_of(cluster: LocalCluster) -> dict[str, Any]:
    return dict(admin(cluster.nodes[0], "/admin/v1/cluster"))


def test_healthy_cluster(cluster: LocalCluster) -> None:
    n1 = cluster.nodes[0]
    for i in range(40):
        assert post_json(f"{n1.url}/api/v1/put", {"key": f"k{i}", "value": {"i": i}})[0] == 200
        assert http_json(f"{n1.url}/api/v1/getValue?key=k{i}")[0] == 200

    def answered() -> dict[str, Any] | None:
        doc = status_of(cluster)
        reads = doc["nodes"]["n1"].get("requests", {}).get("read", {})
        return doc if reads.get("requests", 0) >= 40 else None

    doc = wait_until(answered, 15, "n1's window holding the 40 reads", observe=lambda: status_of(cluster)["nodes"])
    assert doc["node_id"] == "n1"
    assert {m["node_id"] for m in doc["members"]} == {"n1", "n2", "n3"}
    assert all(m["up"] and m["status"] == "normal" for m in doc["members"]), doc["members"]
    assert doc["ring"]["agreed"] and doc["ring"]["replication_factor"] == 3
    assert doc["quorum"]["lost"] is False and doc["quorum"]["under_replicated"] == 0
    assert set(doc["nodes"]) == {"n1", "n2", "n3"}
    for node_id, answer in doc["nodes"].items():
        assert "error" not in answer, (node_id, answer)
        assert answer["mode"] == "normal" and answer["ready"] is True
        assert {"hints", "storage", "requests", "antientropy", "operations"} <= set(answer), answer
    reads = doc["nodes"]["n1"]["requests"]["read"]
    assert reads["rate_per_s"] == pytest.approx(reads["requests"] / 10) and reads["p99_ms"] > 0
    for path, kind in (("/ui", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/ui.css", "text/css")):
        with urllib.request.urlopen(n1.url + path, timeout=5) as response:  # insecure cluster: open
            assert response.status == 200 and response.headers.get_content_type() == kind
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]


def test_nodes_dying(cluster: LocalCluster) -> None:
    _, n2, n3 = cluster.nodes
    cluster.kill(n3)

    def n3_down() -> dict[str, Any] | None:
        doc = status_of(cluster)
        member = next(m for m in doc["members"] if m["node_id"] == "n3")
        return doc if not member["up"] else None

    doc = wait_until(n3_down, 20, "n1 sees n3 down", observe=lambda: status_of(cluster)["members"])
    assert "error" in doc["nodes"]["n3"], doc["nodes"]["n3"]
    assert "error" not in doc["nodes"]["n2"] and "error" not in doc["nodes"]["n1"]
    q = doc["quorum"]
    assert q["under_replicated"] == q["ranges"] > 0, q
    assert (q["reads_unavailable"], q["writes_on_stand_ins"], q["writes_unavailable"], q["lost"]) == (0, 0, False,
                                                                                                      False), q
    cluster.kill(n2)

    def lost() -> dict[str, Any] | None:
        q = status_of(cluster)["quorum"]
        return q if q["lost"] else None

    q = wait_until(lost, 20, "n1 reports the quorum lost", observe=lambda: status_of(cluster)["quorum"])
    assert q["reads_unavailable"] == q["writes_on_stand_ins"] == q["ranges"] and q["writes_unavailable"], q
