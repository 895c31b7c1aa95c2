"""`bench/streaming.py` end to end in a tiny configuration (2 MiB: 2,048 keys of 1 KB, 1 s warm-up and 3 s baseline
windows, 100 requests/s, gossip every 0.25 s; about 40 s), so that it cannot rot: it loads its own 3-node cluster,
joins a 4th node twice (stream throttle off, then on) on fresh copies of it under a paced client load, stops every
node and writes its JSON, whose fields are checked here (the figures themselves are not: only that they are there,
consistent and plausible).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MB, VALUE_SIZE, RATE, BASELINE_S, THROTTLE = 2, 1024, 100, 3, 16
WARMUP_S, GOSSIP_S = 1, 0.25  # the bench's defaults (3 s, 1 s) only make the smoke run longer
KEYS = MB * 2**20 // VALUE_SIZE


@dataclass
class BenchRun:
    returncode: int
    stdout: str
    stderr: str
    doc: dict[str, Any]
    leftovers: str


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> BenchRun:
    root = tmp_path_factory.mktemp("streaming-bench")
    out = root / "streaming.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "streaming.py"), "--mb", str(MB), "--value-size", str(VALUE_SIZE),
         "--rate", str(RATE), "--baseline-s", str(BASELINE_S), "--warmup-s", str(WARMUP_S),
         "--gossip-interval-s", str(GOSSIP_S), "--throttle-mb-s", str(THROTTLE), "--quiet",
         "--dir", str(root), "--json", str(out)],
        capture_output=True, text=True, timeout=280, check=False, cwd=root)
    # every node the bench started had its data under `root`; none may be left running
    leftovers = "" if shutil.which("pgrep") is None else subprocess.run(
        ["pgrep", "-af", str(root)], capture_output=True, text=True, check=False).stdout
    doc = orjson.loads(out.read_bytes()) if out.exists() else {}
    return BenchRun(done.returncode, done.stdout, done.stderr, doc, leftovers)


def test_runs_and_stops_everything(bench: BenchRun) -> None:
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert bench.leftovers == "", f"still running after the bench: {bench.leftovers}"
    assert "throttle  join s" in bench.stdout and "| throttle | window |" in bench.stdout
    assert "Markdown for docs/benchmarks.md" in bench.stdout
    doc = bench.doc
    assert doc["bench"] == "streaming" and doc["command"].startswith(f"python bench/streaming.py --mb {MB}")
    assert doc["config"]["keys"] == KEYS and doc["config"]["rate"] == RATE
    assert doc["config"]["warmup_s"] == WARMUP_S and doc["config"]["gossip_interval_s"] == GOSSIP_S
    assert set(doc["phase_seconds"]) == {"load", "unthrottled", "throttled"}
    assert doc["load"]["keys"] == KEYS and doc["load"]["puts_per_s"] > 0
    assert [t["stream_mb_s"] for t in doc["trials"]] == [0, THROTTLE]
    assert [t["node_args"][-2:] for t in doc["trials"]] == [["--stream-mb-s", "0"], ["--stream-mb-s", str(THROTTLE)]]


@pytest.mark.parametrize("trial", [0, 1], ids=["unthrottled", "throttled"])
def test_the_join_streamed_what_the_joiner_replicates(bench: BenchRun, trial: int) -> None:
    j = bench.doc["trials"][trial]["join"]
    assert j["keys"] > 0 and j["bytes"] > j["keys"] * VALUE_SIZE  # a record is its value and some
    assert j["ranges"] > 0 and j["ranges_not_done"] == 0
    # the node's two accounts of the stream agree, and the sources sent what it received
    assert j["metrics"] == {"received_keys": j["keys"], "received_bytes": j["bytes"], "ranges": j["ranges"]}
    assert sum(s["keys"] for s in j["sent_by_source"].values()) == j["keys"]
    assert sum(s["bytes"] for s in j["sent_by_source"].values()) == j["bytes"]
    # with RF 3 on 4 nodes n4 replicates about 3/4 of the loaded keys, and streams each of them
    assert 0.4 * KEYS < j["loaded_keys_replicated_by_joiner"] <= j["keys"]
    assert j["keys_as_expected"]
    t = j["timeline_s"]
    assert 0 < t["http_up"] <= t["tokens_taken"] <= t["normal"] <= t["rings_agreed"] == j["seconds"] < 120
    assert 0 < j["stream_phase_s"] <= t["normal"] - t["tokens_taken"] + 1.0
    assert j["mib_per_s"] > 0 and j["mib"] == round(j["bytes"] / 2**20, 2)
    assert j["modes_seen"].get("joining", 0) > 0 and j["modes_seen"].get("normal") == 1
    cpu = j["cpu_ms_per_s"]
    assert set(cpu["baseline"]) == {"n1", "n2", "n3"} and set(cpu["join"]) == {"n1", "n2", "n3", "n4", "bench"}
    assert all(v > 0 for v in cpu["baseline"].values())  # the nodes served the client load


@pytest.mark.parametrize("trial", [0, 1], ids=["unthrottled", "throttled"])
def test_the_client_load_before_and_during_the_join(bench: BenchRun, trial: int) -> None:
    t = bench.doc["trials"][trial]
    assert t["client_outcomes"].get("get not_found", 0) == 0  # every loaded key was written to all 3 replicas
    lat = t["latency"]
    base, during, stream = lat["baseline"], lat["join"], lat["stream"]
    assert base["seconds"] == pytest.approx(BASELINE_S, abs=0.5)
    assert during["seconds"] == pytest.approx(t["join"]["seconds"], abs=0.05)
    for w in (base, during):
        assert w["requests"] == pytest.approx(RATE * w["seconds"], rel=0.1)  # paced: the same rate in both
        assert w["ok"] > 0.9 * w["requests"] and w["ok"] + w["errors"] + w["dropped"] == w["requests"]
        assert 0 < w["p50_ms"] <= w["p99_ms"] <= w["max_ms"] < 10_000
        assert w["by_op"]["put"]["requests"] > 0 and w["by_op"]["get"]["requests"] > 0
        assert w["by_op"]["put"]["requests"] + w["by_op"]["get"]["requests"] == w["requests"]
        assert set(w["by_target"]) == {"n1", "n2", "n3"}  # the original nodes only, in turn
        assert sum(x["requests"] for x in w["by_target"].values()) == w["requests"]
    assert 0 < stream["requests"] <= during["requests"]
