"""bench/wrk.py: the Lua script wrk runs (checked by running it in a real wrk against a recording server), the
parsing of wrk's result line, and the merging of several wrk processes' latency percentiles."""

from __future__ import annotations

import base64
import json
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import wrk
from ringkv.loadgen.keyspace import make_value

KEY = re.compile(r"key\d{10}")


def test_the_script_refuses_values_it_cannot_embed_and_unknown_targets() -> None:
    with pytest.raises(ValueError):
        wrk.lua_script("ringkv", 10, 'a"b', 0.0)
    with pytest.raises(ValueError):
        wrk.lua_script("redis", 10, "abc", 0.0)
    with pytest.raises(ValueError):
        wrk.lua_script("etcd", 0, "abc", 0.5)


def test_parse_reads_the_result_line_and_counts_status_errors_as_failures() -> None:
    out = ("Running 1s test\n" + wrk.MARKER + '{"requests":100,"duration_us":2000000,"errors":{"connect":0,"read":0,'
           '"write":0,"status":4,"timeout":1},"percentiles":[[50,1200],[99,9000]]}\n  100 requests in 2.00s\n')
    r = wrk.parse(out)
    assert (r.requests, r.duration_s, r.ok, r.error_count) == (100, 2.0, 96, 5)
    assert r.percentiles == [(50.0, 1200.0), (99.0, 9000.0)]
    with pytest.raises(ValueError, match="no WRK-RESULT"):
        wrk.parse("PANIC: unprotected error in call to Lua API")


def _result(requests: int, scale: float) -> wrk.WrkResult:
    return wrk.WrkResult(requests, 1.0, {}, [(p, p * scale) for p in wrk.GRID])


def test_merging_identical_processes_changes_no_percentile() -> None:
    a, b = _result(1000, 10.0), _result(1000, 10.0)
    for q in (50.0, 99.0, 99.9):
        assert wrk.merged_percentile([a, b], q) == pytest.approx(q * 10.0)


def test_a_busier_process_weighs_more() -> None:
    fast, slow = _result(9000, 1.0), _result(1000, 100.0)  # 90% of requests from the fast one
    assert wrk.merged_percentile([fast, slow], 50.0) <= 100.0  # the median is the fast process's
    assert wrk.merged_percentile([fast, slow], 99.0) >= 9000.0  # the top 1% is the slow one's


@given(st.lists(st.tuples(st.integers(1, 10_000), st.floats(0.1, 1000.0)), min_size=1, max_size=4),
       st.sampled_from([50.0, 90.0, 99.0, 99.9]))
def test_the_merged_percentile_lies_between_the_processes_own(processes: list[tuple[int, float]], q: float) -> None:
    results = [_result(n, scale) for n, scale in processes]
    own = [scale * q for _, scale in processes]
    merged = wrk.merged_percentile(results, q)
    assert min(own) - 1e-6 <= merged <= max(own) + 1e-6


def test_combine_sums_requests_and_errors() -> None:
    a = wrk.WrkResult(100, 2.0, {"status": 3, "read": 0})
    b = wrk.WrkResult(50, 1.9, {"timeout": 1})
    c = wrk.combine([a, b])
    assert (c.requests, c.ok, c.errors, c.duration_s, c.processes) == (150, 147, {"status": 3, "timeout": 1}, 2.0, 2)
    assert c.ops_per_s == pytest.approx(73.5)


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, bytes]] = []
    lock = threading.Lock()

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.lock:
            self.seen.append((self.command, self.path, body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    finally:
        server.shutdown()
        server.server_close()


needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")


@needs_wrk
def test_wrk_sends_ringkv_puts_and_gets_of_the_bench_keys(recorder: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    url, seen = recorder
    value = make_value(64)
    results, _ = wrk.run_wrk(str(shutil.which("wrk")), [url], wrk.lua_script("ringkv", 50, value, 0.5), 2, 1)
    assert results[0].requests > 20 and results[0].error_count == 0
    puts = [json.loads(body) for method, path, body in seen if method == "POST"]
    gets = [path for method, path, _ in seen if method == "GET"]
    assert puts and gets and {p for m, p, _ in seen if m == "POST"} == {"/api/v1/put"}
    assert all(KEY.fullmatch(p["key"]) and int(p["key"][3:]) < 50 and p["value"] == value for p in puts)
    assert all(re.fullmatch(r"/api/v1/getValue\?key=key\d{10}", g) for g in gets)


@needs_wrk
def test_wrk_sends_etcd_requests_with_base64_keys_and_values(
        recorder: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    url, seen = recorder
    value = make_value(100)
    wrk.run_wrk(str(shutil.which("wrk")), [url], wrk.lua_script("etcd", 1000, value, 0.3, "/v3"), 2, 1)
    puts = [json.loads(b) for m, p, b in seen if p == "/v3/kv/put"]
    ranges = [json.loads(b) for m, p, b in seen if p == "/v3/kv/range"]
    assert puts and ranges and all(m == "POST" for m, _, _ in seen)
    for doc in puts + ranges:
        assert KEY.fullmatch(base64.b64decode(doc["key"]).decode())
    assert {base64.b64decode(p["value"]).decode() for p in puts} == {value}
    assert 0.1 < len(ranges) / len(seen) < 0.5
