"""`bench/antientropy.py` end to end in a tiny configuration (2,000 keys, 20 of them made stale on n3 per pass,
2 s CPU windows; about 45 s), so that it cannot rot: it starts its own 3-node cluster, measures the AAE repair
and the naive full comparison, the CPU windows, stops every node and writes its JSON, whose fields are checked
here (the figures themselves are not: only that they are there, consistent and plausible).
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
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

KEYS, STALE = 2000, 20  # --keys, and 1% of them


@dataclass
class BenchRun:
    returncode: int
    stdout: str
    stderr: str
    doc: dict[str, Any]
    leftovers: str


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> BenchRun:
    root = tmp_path_factory.mktemp("aae-bench")
    out = root / "antientropy.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "antientropy.py"), "--keys", str(KEYS), "--cpu-window", "2",
         "--put-rate", "100", "--quiet", "--dir", str(root), "--json", str(out)],
        capture_output=True, text=True, timeout=220, check=False, cwd=root)
    # every node the bench started had its data under `root`; none may be left running
    leftovers = "" if shutil.which("pgrep") is None else subprocess.run(
        ["pgrep", "-af", str(root)], capture_output=True, text=True, check=False).stdout
    doc = orjson.loads(out.read_bytes()) if out.exists() else {}
    return BenchRun(done.returncode, done.stdout, done.stderr, doc, leftovers)


def test_runs_and_stops_everything(bench: BenchRun) -> None:
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert bench.leftovers == "", f"still running after the bench: {bench.leftovers}"
    assert "| repair | time s | wire bytes |" in bench.stdout and "| naive / AAE |" in bench.stdout
    assert "| AAE | idle | 100 puts/s |" in bench.stdout
    doc = bench.doc
    assert doc["bench"] == "antientropy" and doc["command"].startswith("python bench/antientropy.py --keys 2000")
    assert doc["config"]["keys"] == KEYS and doc["config"]["stale_keys"] == STALE
    assert set(doc["phase_seconds"]) >= {"start", "load", "crash_restart", "aae", "naive", "cpu"}
    assert doc["load"]["keys"] == KEYS and doc["load"]["puts_per_s"] > 0


def test_crash_restart_rebuilds_the_trees(bench: BenchRun) -> None:
    c = bench.doc["crash_restart"]
    assert c["tree_builds"] >= 1 and c["tree_keys"] == KEYS and c["tree_build_seconds"] >= 0
    assert c["first_round_keys_repaired"] == 0  # every acknowledged write survived the kill: in sync
    assert c["first_round_exchanges"].get("in_sync") == 2 and "repaired" not in c["first_round_exchanges"]


def test_aae_repair(bench: BenchRun) -> None:
    a = bench.doc["aae"]
    assert a["stale_keys"] == STALE and a["differing_found"] == STALE and a["differing_match"]
    assert a["repair"]["state"] == "done" and a["repair"]["error"] is None
    assert a["counters"]["keys_pulled"] == STALE and a["counters"]["keys_pushed"] == 0
    assert a["other_nodes_exchanges"] == {}  # only n3's repair exchanged: nothing raced it
    # the replay of the exchange finds what the node's own exchange compared and moved
    assert a["replay_keys_compared"] == a["counters"]["keys_compared"] >= STALE
    assert a["hashes_compared"] > 0 and a["leaves_compared"] >= 1
    wire = a["wire_bytes"]
    assert wire["total"] == sum(v for k, v in wire.items() if k != "total")
    assert wire["fetch"] > a["record_bytes"] > STALE * bench.doc["config"]["value_size"]
    assert a["converged"] == {"roots_equal": True, "records_checked": STALE, "records_differing": 0, "ok": True}
    assert a["seconds"] > 0


def test_naive_repair(bench: BenchRun) -> None:
    n = bench.doc["naive"]
    assert n["stale_keys"] == STALE and n["differing_found"] == STALE and n["differing_match"]
    assert n["keys_listed"] == {"n1": KEYS, "n3": KEYS} and n["records_moved"] == STALE
    assert n["background_exchanges"] == {"n1": 0, "n2": 0, "n3": 0}  # anti-entropy did not help it
    wire = n["wire_bytes"]
    assert wire["node_to_node"] == wire["flat_lists"]["list_n1"] + wire["fetch"]
    assert wire["total"] > wire["bench_flat"] > wire["node_to_node"] > n["record_bytes"]
    assert n["converged"]["ok"] and n["converged"]["records_differing"] == 0


def test_comparison(bench: BenchRun) -> None:
    c = bench.doc["comparison"]
    assert c["bytes_ratio_node_to_node"] > 1 and c["comparison_bytes_ratio"] > 1  # even at 2,000 keys
    assert c["time_ratio"] is not None and c["time_ratio"] > 0


def test_cpu_windows(bench: BenchRun) -> None:
    cpu = bench.doc["cpu"]
    rows = {(r["aae"], r["load"]): r for r in cpu["rows"]}
    assert set(rows) == {("on", "idle"), ("on", "loaded"), ("off", "idle"), ("off", "loaded")}
    for row in rows.values():
        assert set(row["cpu_ms_per_s"]) == {"n1", "n2", "n3"}
        assert all(v >= 0 for v in row["cpu_ms_per_s"].values()) and row["window_s"] > 1.5
    for state in ("on", "off"):
        loaded = rows[(state, "loaded")]
        assert loaded["traffic"]["ok"] > 0 and loaded["traffic"]["errors"] == 0
        assert loaded["mean_cpu_ms_per_s"] > rows[(state, "idle")]["mean_cpu_ms_per_s"]
    assert rows[("off", "idle")]["aae_activity"]["exchanges"] == 0
    assert rows[("on", "idle")]["restart"]["tree_builds"] == {"n1": 0, "n2": 0, "n3": 0}  # loaded from trees.bin
    assert cpu["tree_update_us_per_write"] > 0
