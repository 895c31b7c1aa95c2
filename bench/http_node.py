"""Single-node HTTP benchmark: ringkv's public API next to a plain aiohttp hello-world, same machine, same run.

    python bench/http_node.py [--connections 32] [--duration 10] [--workers 1] [--keys 10000] [--no-off] [--json]
    python -m bench.http_node ...                      (the same, from the repository root)

Starts, one after the other (never two servers at once), each as its own process on 127.0.0.1:

- `bench/hello_server.py`: aiohttp answering `GET /` with a small JSON object, no middleware and no storage:
  the ceiling for a Python HTTP server on this machine;
- `ringkv node --durability sync` (data in a temporary directory): every put is fsynced before its answer
  (group commit: concurrent puts share an fsync);
- `ringkv node --durability off` (unless `--no-off`): the same without fsync, i.e. the HTTP and engine cost.

Workloads, each for `--duration` seconds with `--connections` keep-alive connections, each connection sending
its next request as soon as the answer to the last one is read (closed loop):
- `hello`: `GET /` on the hello server;
- `put`: `POST /api/v1/put`, a random new key, a 1 KB value (`--value-bytes`);
- `get`: `GET /api/v1/get` of a random key among `--keys` written beforehand (not timed).

The load comes from `--workers` client processes (asyncio + aiohttp; uvloop when installed), the connections
split between them. Client and server share this machine's cores, so the client's own CPU use is part of what is
measured: the table shows the CPU each side used, in cores and in microseconds per request. Latency is per
request, from sending it to having read the whole answer, p50/p99 in milliseconds. Non-2xx answers and failed
requests are counted as errors (and make the exit status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 30.0
PUT_PATH = "/api/v1/put"
GET_PATH = "/api/v1/get"


# -- servers ------------------------------------------------------------------------------------------------


class Server:
    """A server process that prints `... ready on http://HOST:PORT` on stdout when it listens."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RINGKV_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "node"), env.get("PYTHONPATH")) if p)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=log)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.url = self._wait_ready()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.put(raw.decode(errors="replace").strip())
        self._lines.put(None)

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            match = re.search(r"ready on (http://127\.0\.0\.1:\d+)$", line)
            if match:
                return match.group(1)
        self.stop()
        raise RuntimeError(f"{self.name} did not start; its log:\n{self.log_path.read_text(errors='replace')}")

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the process so far (all its threads), from /proc."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_hello(workdir: Path) -> Server:
    return Server("hello server", [sys.executable, "-m", "bench.hello_server", "--host", "127.0.0.1", "--port", "0"],
                  workdir / "hello.log")


def start_node(workdir: Path, durability: str) -> Server:
    data = workdir / f"data-{durability}"
    argv = [sys.executable, "-m", "ringkv.cli", "node", "--data-dir", str(data), "--host", "127.0.0.1",
            "--port", "0", "--node-id", "bench", "--durability", durability, "--log-level", "warning", "--insecure"]
    return Server(f"ringkv node (durability {durability})", argv, workdir / f"node-{durability}.log")


# -- the load generator (runs in worker processes) ----------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str  # hello | put | get
    base_url: str
    connections: int
    duration_s: float
    value_bytes: int
    keys: int  # for get: keys bench-00000000 ... written beforehand
    seed: int


@dataclass
class WorkerResult:
    ok: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    first_error: str = ""


def value_json(value_bytes: int) -> bytes:
    """A JSON string value of `value_bytes` bytes (quotes included), the same in every run."""
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return b'"' + "".join(rng.choice(alphabet) for _ in range(max(0, value_bytes - 2))).encode() + b'"'


def get_key(i: int) -> str:
    return f"bench-{i:08d}"


def put_body(key: str, value: bytes) -> bytes:
    return b'{"key":"' + key.encode() + b'","value":' + value + b"}"


def _request_maker(w: Workload) -> Callable[[aiohttp.ClientSession], Any]:
    """A function sending one request of the workload (an async context manager for the answer)."""
    rng = random.Random(w.seed)
    value = value_json(w.value_bytes)
    json_headers = {"Content-Type": "application/json"}
    if w.name == "hello":
        return lambda s: s.get("/")
    if w.name == "put":
        prefix = f"put-{w.seed}-"

        def put(s: aiohttp.ClientSession) -> Any:
            key = f"{prefix}{rng.getrandbits(64):016x}"
            return s.post(PUT_PATH, data=put_body(key, value), headers=json_headers)

        return put
    if w.name == "get":
        urls = [f"{GET_PATH}?key={get_key(i)}" for i in range(w.keys)]
        return lambda s: s.get(urls[rng.randrange(len(urls))])
    raise ValueError(f"unknown workload {w.name!r}")


async def _drive(w: Workload, ready: Any, go: Any, counter: Synchronized[int]) -> WorkerResult:
    send = _request_maker(w)
    result = WorkerResult()
    connector = aiohttp.TCPConnector(limit=w.connections, limit_per_host=w.connections)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(w.base_url, connector=connector, timeout=timeout) as session:

        async def one() -> int:
            async with send(session) as response:
                await response.read()
                return int(response.status)

        await asyncio.gather(*(one() for _ in range(w.connections)))  # open every connection before timing
        ready.set()
        await asyncio.to_thread(go.wait)  # a multiprocessing.Event: wait for it off the event loop
        latencies = result.latencies_ns
        perf_ns = time.perf_counter_ns
        cpu0, start = time.process_time(), time.perf_counter()
        deadline = start + w.duration_s

        async def connection() -> None:
            while time.perf_counter() < deadline:
                t0 = perf_ns()
                try:
                    status = await one()
                except (aiohttp.ClientError, TimeoutError) as e:
                    status, result.first_error = 0, result.first_error or repr(e)
                latencies.append(perf_ns() - t0)
                if 200 <= status < 300:
                    result.ok += 1
                else:
                    result.errors += 1
                    result.first_error = result.first_error or f"HTTP {status}"
                counter.value += 1

        await asyncio.gather(*(connection() for _ in range(w.connections)))
        result.elapsed_s = time.perf_counter() - start
        result.cpu_s = time.process_time() - cpu0
    return result


def _worker(w: Workload, ready: Any, go: Any, counter: Synchronized[int], out: Any) -> None:
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        out.put(runner.run(_drive(w, ready, go, counter)))


# -- one measured workload ----------------------------------------------------------------------------------


@dataclass
class Result:
    target: str
    workload: str
    ops: int
    errors: int
    seconds: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_pct: float
    client_cpu_pct: float
    server_cpu_us_per_op: float
    client_cpu_us_per_op: float
    first_error: str = ""


def percentile_ms(sorted_ns: Sequence[int], q: float) -> float:
    if not sorted_ns:
        return 0.0
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e6


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def measure(server: Server, target: str, name: str, args: argparse.Namespace) -> Result:
    ctx = multiprocessing.get_context("spawn")
    workers = max(1, min(args.workers, args.connections))
    ready = [ctx.Event() for _ in range(workers)]
    go = ctx.Event()
    counters = [ctx.Value("q", 0, lock=False) for _ in range(workers)]
    out = ctx.Queue()
    procs = []
    for i, conns in enumerate(split(args.connections, workers)):
        w = Workload(name, server.url, conns, args.duration, args.value_bytes, args.keys, seed=1000 * args.seed + i)
        p = ctx.Process(target=_worker, args=(w, ready[i], go, counters[i], out), daemon=True)
        p.start()
        procs.append(p)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for event in ready:
            if not event.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"{target} {name}: the client workers did not connect in time")
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        go.set()
        label = f"{target} {name}"
        while (elapsed := time.monotonic() - t0) < args.duration:
            done = sum(c.value for c in counters)
            status(f"{label:<32} {elapsed:5.1f}/{args.duration:.0f} s  {done:>9,} requests  "
                    f"{done / max(elapsed, 1e-9):>8,.0f}/s")
            time.sleep(0.25 if sys.stderr.isatty() else 2.0)
        results: list[WorkerResult] = [out.get(timeout=args.duration + REQUEST_TIMEOUT_S + 10) for _ in procs]
        server_cpu = server.cpu_seconds() - cpu0
        wall = time.monotonic() - t0
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    status("")
    latencies = sorted(x for r in results for x in r.latencies_ns)
    ok = sum(r.ok for r in results)
    errors = sum(r.errors for r in results)
    seconds = max(r.elapsed_s for r in results)
    return Result(
        target=target, workload=name, ops=ok, errors=errors, seconds=round(seconds, 3),
        ops_per_s=round(ok / seconds, 1) if seconds else 0.0,
        p50_ms=round(percentile_ms(latencies, 0.50), 3), p99_ms=round(percentile_ms(latencies, 0.99), 3),
        server_cpu_pct=round(100 * server_cpu / wall, 1),
        client_cpu_pct=round(100 * sum(r.cpu_s for r in results) / seconds, 1) if seconds else 0.0,
        server_cpu_us_per_op=round(1e6 * server_cpu / max(1, ok + errors), 1),
        client_cpu_us_per_op=round(1e6 * sum(r.cpu_s for r in results) / max(1, ok + errors), 1),
        first_error=next((r.first_error for r in results if r.first_error), ""),
    )


async def _preload(base_url: str, keys: int, value_bytes: int, connections: int) -> None:
    """Write keys bench-00000000 ... so that the get workload reads keys that exist."""
    value = value_json(value_bytes)
    headers = {"Content-Type": "application/json"}
    next_key = iter(range(keys))
    async with aiohttp.ClientSession(base_url, connector=aiohttp.TCPConnector(limit=connections)) as session:

        async def writer() -> None:
            for i in next_key:
                async with session.post(PUT_PATH, data=put_body(get_key(i), value), headers=headers) as r:
                    body = await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"preload put {get_key(i)}: HTTP {r.status} {body[:200]!r}")
                if i % 500 == 0:
                    status(f"preloading {keys:,} keys: {i:,}")

        await asyncio.gather(*(writer() for _ in range(connections)))
    status("")


# -- output -------------------------------------------------------------------------------------------------


def status(line: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + line)
    elif line:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def machine() -> dict[str, Any]:
    try:
        import uvloop

        uv = str(getattr(uvloop, "__version__", "yes"))
    except ImportError:
        uv = "no"
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "aiohttp": aiohttp.__version__,
            "uvloop": uv, "platform": platform.platform(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def table(results: Sequence[Result], args: argparse.Namespace, before: dict[str, Any],
          load_after: Sequence[float]) -> str:
    lines = [
        f"ringkv single-node HTTP benchmark: {args.connections} keep-alive connections, {args.duration:g} s per "
        f"workload, {args.value_bytes} B values, {args.workers} client process(es)",
        f"machine: {before['cpus']} CPUs shared by the client and the server; Python {before['python']}, aiohttp "
        f"{before['aiohttp']}, uvloop {before['uvloop']}; load average {before['load_average'][0]:.2f} before, "
        f"{load_after[0]:.2f} after (other work on the machine skews the figures)",
        "",
        f"{'':<24} {'':<8} {'':>9} {'':>8} {'':>8} {'':>9} {'':>6} {'--- server CPU ---':>18} "
        f"{'--- client CPU ---':>18}",
        f"{'target':<24} {'workload':<8} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9} {'errors':>6} "
        f"{'cores':>8} {'us/req':>9} {'cores':>8} {'us/req':>9}",
    ]
    for r in results:
        lines.append(f"{r.target:<24} {r.workload:<8} {r.ops_per_s:>9,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
                     f"{r.ops:>9,} {r.errors:>6} {r.server_cpu_pct / 100:>8.2f} {r.server_cpu_us_per_op:>9.0f} "
                     f"{r.client_cpu_pct / 100:>8.2f} {r.client_cpu_us_per_op:>9.0f}")
    errors = [r for r in results if r.first_error]
    for r in errors:
        lines.append(f"  {r.target} {r.workload}: first error: {r.first_error}")
    lines.append("cores: CPU time / wall time (1.00 = one core busy); us/req: CPU microseconds per request, which\n"
                 "depends less on what else the machine runs than ops/s does. put: random new keys; get: keys that\n"
                 "exist; hello: GET / on plain aiohttp. The node runs with its default replication settings, alone.")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="ringkv single-node HTTP benchmark (see the module docstring)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections (default 32)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per workload (default 10)")
    parser.add_argument("--workers", type=int, default=1, help="client processes sharing the connections")
    parser.add_argument("--value-bytes", type=int, default=1024, help="JSON size of each value (default 1024)")
    parser.add_argument("--keys", type=int, default=10_000, help="keys written before the get workload")
    parser.add_argument("--seed", type=int, default=1, help="seed of the keys each worker puts and gets")
    parser.add_argument("--no-off", action="store_true", help="skip the run with durability off")
    parser.add_argument("--no-hello", action="store_true", help="skip the aiohttp hello-world baseline")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.duration <= 0 or args.workers < 1 or args.value_bytes < 2 or args.keys < 1:
        parser.error("--connections, --workers, --keys must be >= 1, --duration > 0, --value-bytes >= 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    before = machine()
    results: list[Result] = []
    workdir = Path(tempfile.mkdtemp(prefix="ringkv-bench-http-"))
    try:
        if not args.no_hello:
            hello = start_hello(workdir)
            try:
                results.append(measure(hello, "aiohttp hello world", "hello", args))
            finally:
                hello.stop()
        for durability in ("sync",) if args.no_off else ("sync", "off"):
            node = start_node(workdir, durability)
            try:
                target = f"ringkv durability={durability}"
                results.append(measure(node, target, "put", args))
                asyncio.run(_preload(node.url, args.keys, args.value_bytes, args.connections))
                results.append(measure(node, target, "get", args))
            finally:
                node.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    if args.json:
        doc = {"config": {k: v for k, v in vars(args).items() if k != "json"}, "machine": before,
               "load_average_after": [round(x, 2) for x in load_after], "results": [asdict(r) for r in results]}
        print(json.dumps(doc, indent=2))
    else:
        print(table(results, args, before, load_after))
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
