"""`ringkv repair` as an operator runs it, against a real 3-node cluster (RF 3, no hints): it starts a repair
on one node, follows it and exits 0 once it is done, after which the node holds every write it missed while
down; `--json`, `--no-wait` and `--status` work; a range the node does not replicate is refused (exit 1, the
node's `unknown_range` error on one line); an unreachable node is exit 2. And the node's /metrics exposes
every anti-entropy metric.

Waiting is always on a condition with a deadline (`wait_until`), never a bare sleep; every HTTP call has a
timeout and goes to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ringkv.client import Client
from ringkv.local import LocalCluster, LocalNode
from tests.integration.cluster_helpers import (
    HTTP_TIMEOUT_S,
    admin,
    http_json,
    local_values,
    members,
    restart,
    running_cluster,
    sees,
    wait_until,
)
from tests.integration.nodes import NODE_DIR

pytestmark = pytest.mark.slow

CLI_TIMEOUT_S = 60.0
NO_HINTS = ["--hints-enabled", "false"]
DONE_LINE = re.compile(r"repair \S+ done: (\d+)/(\d+) ranges done")

AAE_METRICS = (
    "ringkv_antientropy_exchanges_total", "ringkv_antientropy_hashes_compared_total",
    "ringkv_antientropy_keys_compared_total", "ringkv_antientropy_keys_repaired_total",
    "ringkv_antientropy_bytes_total", "ringkv_antientropy_tree_builds_total",
    "ringkv_antientropy_tree_build_seconds_total", "ringkv_antientropy_tree_heals_total",
    "ringkv_antientropy_trees", "ringkv_antientropy_tree_keys", "ringkv_antientropy_tombstones",
    "ringkv_antientropy_tombstones_reaped_total", "ringkv_antientropy_reap_checks_total",
    "ringkv_antientropy_oldest_unverified_seconds", "ringkv_antientropy_range_verified_age_seconds",
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("repair-cli"), nodes=3, extra_args=NO_HINTS) as c:
        yield c


def ringkv(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGKV_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(NODE_DIR), env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run([sys.executable, "-m", "ringkv.cli", *args], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, env=env, timeout=CLI_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"ringkv {' '.join(args)} did not finish within {CLI_TIMEOUT_S} s") from None
    assert "Traceback" not in done.stderr, done.stderr
    return done


def all_up(node: LocalNode) -> bool:
    seen = members(node)
    return len(seen) == 3 and all(seen.values())


def put_all(node: LocalNode, keys: list[str], w: int) -> None:
    async def main() -> None:
        async with Client(node.url, timeout_s=HTTP_TIMEOUT_S) as client:
            for key in keys:
                await client.put(key, {"key": key}, w=w)

    asyncio.run(main())


def scrape(node: LocalNode) -> dict[str, list[tuple[dict[str, str], float]]]:
    """sample name -> [(labels, value), ...] of `node`'s /metrics."""
    with urllib.request.urlopen(node.url + "/metrics", timeout=HTTP_TIMEOUT_S) as response:
        text = response.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    found = [v for lab, v in samples.get(name, []) if lab == labels]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def test_repair_refills_a_replica_that_missed_writes_and_exits_0(cluster: LocalCluster) -> None:
    n1, n3 = cluster.node("n1"), cluster.node("n3")
    cluster.kill(n3)
    wait_until(lambda: sees(n1, "n3", up=False), 30, "n1 sees n3 down")
    keys = [f"repair-cli-{i}" for i in range(20)]
    put_all(n1, keys, w=2)  # no hints: n3 misses them
    restart(cluster, n3)
    wait_until(lambda: all_up(n3) and all_up(n1), 30, "n1 and n3 see everybody up")

    done = ringkv("repair", "--node", n3.url)
    assert done.returncode == 0, (done.stdout, done.stderr)
    match = DONE_LINE.search(done.stdout)
    assert match and match.group(1) == match.group(2) and int(match.group(2)) > 0, done.stdout
    assert "keys repaired" in done.stdout
    for key in keys:  # a repair that is done has merged every range with every replica: no waiting
        assert local_values(n3, key) == [{"key": key}], key


def test_repair_json_no_wait_and_status(cluster: LocalCluster) -> None:
    n1 = cluster.node("n1")
    wait_until(lambda: all_up(n1), 30, "n1 sees everybody up")
    done = ringkv("repair", "--url", n1.url, "--json")
    assert done.returncode == 0, done.stderr
    op = json.loads(done.stdout)
    assert op["kind"] == "repair" and op["state"] == "done" and op["error"] is None
    assert op["progress"]["ranges_done"] == op["progress"]["ranges_total"] > 0
    assert op["progress"]["exchanges"] >= 2 * op["progress"]["ranges_total"]  # two peers per range (RF 3)

    started = ringkv("repair", "--node", n1.url, "--no-wait", "--json")
    assert started.returncode == 0, started.stderr
    op_id = json.loads(started.stdout)["id"]

    def finished() -> dict[str, Any] | None:
        status, body = http_json(f"{n1.url}/admin/v1/repair/{op_id}")
        assert status == 200, (status, body)
        return body if body["state"] != "running" else None

    assert wait_until(finished, 60, f"repair {op_id} ends")["state"] == "done"

    status = admin(n1, "/admin/v1/antientropy")
    shown = ringkv("repair", "--node", n1.url, "--status")
    assert shown.returncode == 0, shown.stderr
    for r in status["ranges"]:
        row = next(line for line in shown.stdout.splitlines() if line.split()[:1] == [r["range"]])
        assert "ready" in row and "s ago" in row, row
    as_json = ringkv("repair", "--node", n1.url, "--status", "--json")
    assert as_json.returncode == 0 and [r["range"] for r in json.loads(as_json.stdout)["ranges"]] == \
        [r["range"] for r in status["ranges"]]


def test_a_range_the_node_does_not_replicate_is_refused(cluster: LocalCluster) -> None:
    done = ringkv("repair", "--node", cluster.node("n2").url, "--range", "1:2")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "400 unknown_range" in done.stderr and "1:2" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and done.stdout == ""


def test_usage_and_connection_errors_exit_2(cluster: LocalCluster) -> None:
    with socket.socket() as closed:  # bound, never listening
        closed.bind(("127.0.0.1", 0))
        unreachable = ringkv("repair", "--node", f"http://127.0.0.1:{closed.getsockname()[1]}")
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr, unreachable.stderr
    bad_range = ringkv("repair", "--node", cluster.node("n1").url, "--range", "everything")
    assert bad_range.returncode == 2 and "LO:HI" in bad_range.stderr, bad_range.stderr


def test_metrics_expose_anti_entropy(cluster: LocalCluster) -> None:
    n1 = cluster.node("n1")
    wait_until(lambda: all_up(n1), 30, "n1 sees everybody up")
    assert ringkv("repair", "--node", n1.url).returncode == 0
    ranges = [r["range"] for r in admin(n1, "/admin/v1/antientropy")["ranges"]]

    def trees_ready() -> dict[str, list[tuple[dict[str, str], float]]] | None:
        samples = scrape(n1)
        return samples if value(samples, "ringkv_antientropy_trees", state="ready") == len(ranges) else None

    samples = wait_until(trees_ready, 30, "every tree of n1 is ready")
    missing = [name for name in AAE_METRICS if name not in samples]
    assert not missing, missing
    assert value(samples, "ringkv_antientropy_trees", state="building") == 0
    assert value(samples, "ringkv_antientropy_exchanges_total", result="in_sync") + \
        value(samples, "ringkv_antientropy_exchanges_total", result="repaired") >= 2 * len(ranges)
    assert value(samples, "ringkv_antientropy_tree_builds_total") >= len(ranges)
    assert value(samples, "ringkv_antientropy_tree_keys") >= 20  # the first test's keys, on every replica
    repaired = {lab["direction"] for lab, _ in samples["ringkv_antientropy_keys_repaired_total"]}
    assert repaired == {"pulled", "pushed"}
    assert sorted(lab["range"] for lab, _ in samples["ringkv_antientropy_range_verified_age_seconds"]) == \
        sorted(ranges)
    ages = [v for _, v in samples["ringkv_antientropy_range_verified_age_seconds"]]
    assert all(0 <= age < 600 for age in ages)  # just verified by the repair (the bound is generous)
    assert value(samples, "ringkv_antientropy_oldest_unverified_seconds") == pytest.approx(max(ages), abs=5)
    assert value(samples, "ringkv_operations_running", kind="repair") == 0
    assert value(samples, "ringkv_hints_expired_total") == 0
