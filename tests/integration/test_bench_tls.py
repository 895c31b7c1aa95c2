"""`bench/tls.py` end to end in a tiny configuration (one round, 1 s per workload, 300 keys), so that it cannot
rot: every variant's cluster starts (plaintext, mutual TLS + tokens, + HTTPS), takes its load without an error
and stops, and the table lands between its markers in the output file, replacing the previous one. The figures
themselves are not checked."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_the_tls_bench_runs_every_variant_and_replaces_its_table(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- tls-bench -->\nan old table\n<!-- /tls-bench -->\n\nafter\n")
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "tls.py"), "--duration", "1", "--warmup", "0", "--rounds", "1",
         "--keys", "300", "--connections", "8", "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=220, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\n<!-- tls-bench -->\n## The cost of TLS") and text.endswith("\n\nafter\n")
    assert "an old table" not in text and text.count("<!-- tls-bench -->") == 1
    rows = re.findall(r"^\| (plaintext|mTLS \+ tokens|mTLS \+ tokens \+ HTTPS) \| (.*) \|$", text, re.MULTILINE)
    assert [name for name, _ in rows] == ["plaintext", "mTLS + tokens", "mTLS + tokens + HTTPS"]
    for name, cells in rows:
        put_rate = cells.split(" | ")[0]
        assert re.match(r"^[\d,]+( \*\*\d+\.\d\dx\*\*)?$", put_rate), (name, cells)
