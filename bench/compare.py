"""ringkv next to etcd and Redis on this machine, in one run, with the same load generator (`ringkv.loadgen`).

    python bench/compare.py [--duration 30] [--warmup 5] [--connections 64] [--value-size 1024] [--keys 10000]
                            [--distribution uniform|zipfian] [--workers 1] [--systems ringkv,etcd,redis]
                            [--workloads put,get,mixed] [--no-install] [--out FILE.md] [--chart FILE.png]

Systems, one at a time (only one is running while it is measured), all on 127.0.0.1, data in one temporary
directory (so on the same disk), everything stopped at the end whatever happens:

- ringkv: a local 3-node cluster (`ringkv.local`): RF 3, W 2, R 2, durability sync (fsync before ack).
- etcd: a 3-member cluster of Debian's `etcd-server` (apt-get installed when `etcd` is missing, unless
  --no-install), loaded through its v3 JSON gateway; reads are linearizable (etcd's default).
- Redis: one `redis-server`, `--save ''`, no AOF: the single-node, in-memory floor.

Workloads (1 KB values, 64 connections, uniform keys unless --distribution zipfian): put (100% writes), get
(100% reads, after every key was written once), mixed (50/50). Each: `--warmup` seconds unrecorded, then
`--duration` seconds measured.

Prints one side-by-side table (with ratios ringkv/etcd), writes it with the machine's description and this
command to `--out` (docs/benchmarks-cluster.md) and a chart of the latency percentiles to `--chart`.
"""

from __future__ import annotations

import os
import sys

# Run as `python bench/compare.py`, Python puts bench/ first on sys.path: put the repository root there
# instead (as `python -m bench.compare` would), so `bench.charts` imports.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = os.path.dirname(sys.path[0])

import argparse
import contextlib
import functools
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from bench import charts, cpu, wrk
from ringkv import __version__, local
from ringkv.loadgen import driver, keyspace
from ringkv.loadgen.adapters import ETCD_PREFIXES
from ringkv.loadgen.plan import BenchPlan
from ringkv.loadgen.stats import PERCENTILES, RunResult, percentile_label
from ringkv.local import port_free

SYSTEMS = ("ringkv", "etcd", "redis")
WORKLOADS = {"put": 0.0, "get": 1.0, "mixed": 0.5}  # workload -> read fraction
PACKAGES = {"etcd": "etcd-server", "redis-server": "redis-server", "wrk": "wrk"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(message: str) -> None:
    print(f"compare: {message}", file=sys.stderr, flush=True)


# -- ports, processes, binaries -------------------------------------------------------------------------------


def free_ports(count: int, taken: set[int]) -> list[int]:
    """`count` distinct free ports (none in `taken`, which they are added to)."""
    out: list[int] = []
    while len(out) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken and port + local.PEER_PORT_OFFSET not in taken:
            taken.add(port)
            out.append(port)
    return out


def ringkv_base_port(nodes: int, taken: set[int]) -> int:
    """A base port with base..base+nodes-1 and their peer ports (+1000) all free."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 30_000)
        ports = [base + i for i in range(nodes)] + [base + local.PEER_PORT_OFFSET + i for i in range(nodes)]
        if not taken.intersection(ports) and all(port_free(p) for p in ports):
            taken.update(ports)
            return base
    raise RuntimeError("no free block of ports for the ringkv cluster")


def ensure_binary(binary: str, install: bool) -> str | None:
    """The binary's path; installs its Debian package when missing and allowed (root, apt-get). None if absent."""
    path = shutil.which(binary)
    if path or not install:
        return path
    package = PACKAGES[binary]
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        log(f"{binary} is missing and cannot be installed here (needs root and apt-get): apt-get install {package}")
        return None
    log(f"{binary} is missing: apt-get install -y {package}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for attempt in range(2):
        if attempt == 1:
            subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        done = subprocess.run(["apt-get", "install", "-y", "-qq", package], check=False, env=env,
                              stdout=subprocess.DEVNULL)
        if done.returncode == 0 and shutil.which(binary):
            return shutil.which(binary)
    log(f"could not install {package}")
    return None


def version_of(name: str, argv: list[str]) -> str:
    """'etcd 3.4.23' from 'etcd Version: 3.4.23', 'redis 7.0.15' from 'Redis server v=7.0.15 sha=...'."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
    except OSError:
        return f"{name} (version unknown)"
    found = re.search(r"(?:Version: |v=)(\d+\.\d+\.\d+)", out)
    return f"{name} {found.group(1)}" if found else f"{name} (version unknown)"


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def etcd_prefix(url: str) -> str:
    """The v3 JSON gateway's prefix: /v3 on etcd 3.4+, /v3beta on 3.3, /v3alpha on 3.2."""
    for prefix in ETCD_PREFIXES:
        request = urllib.request.Request(url + prefix + "/kv/range", data=b'{"key":"a2V5"}',
                                         headers={"Content-Type": "application/json"})
        with contextlib.suppress(urllib.error.URLError, OSError), \
                urllib.request.urlopen(request, timeout=2.0) as response:
            if response.status == 200:
                return prefix
    return ETCD_PREFIXES[0]


def wait_until(check: Callable[[], bool], what: str, timeout_s: float,
               processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        for p in processes:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: process {p.pid} exited with {p.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout_s:.0f} s")
        time.sleep(0.1)


def stop_processes(processes: list[subprocess.Popen[bytes]], timeout_s: float = 15.0) -> None:
    for p in processes:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    for p in processes:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


# -- the systems ----------------------------------------------------------------------------------------------


@dataclass
class Running:
    name: str
    target: str  # loadgen target
    urls: tuple[str, ...]
    setup: str  # one line for the doc
    pids: tuple[int, ...] = ()  # the server processes, whose CPU is measured
    names: dict[int, str] = field(default_factory=dict)  # pid -> node or member name
    etcd_prefix: str = "/v3"  # the v3 JSON gateway's path prefix (etcd only)


@contextlib.contextmanager
def ringkv_cluster(root: str, taken: set[int], node_args: Sequence[str] = (),
                   code: str | None = None) -> Iterator[Running]:
    """A local 3-node cluster; `code`: a checkout whose `node/` the nodes run instead (A/B against a commit)."""
    data_dir = os.path.join(root, "ringkv")
    saved = os.environ.get("PYTHONPATH")
    if code is not None:
        os.environ["PYTHONPATH"] = os.path.join(os.path.abspath(code), "node")
    base = ringkv_base_port(3, taken)
    log(f"starting ringkv: 3 nodes on ports {base}-{base + 2}, data in {data_dir}")
    try:
        try:
            cluster = local.up(data_dir, nodes=3, base_port=base, replication=3, durability="sync",
                               extra_args=["--write-quorum", "2", "--read-quorum", "2", "--log-level", "warning",
                                           *node_args])
        finally:
            if code is not None:
                if saved is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = saved
        yield Running("ringkv", "ringkv", tuple(n.url for n in cluster.nodes),
                      f"ringkv {__version__}: 3 nodes, RF 3, W 2, R 2, durability sync"
                      + ("" if code is None else f" (the nodes run the code in {code})"),
                      tuple(n.pid for n in cluster.nodes), {n.pid: n.node_id for n in cluster.nodes})
    finally:
        log("stopping ringkv")
        local.down(data_dir)


@contextlib.contextmanager
def etcd_cluster(root: str, binary: str, taken: set[int]) -> Iterator[Running]:
    client, peer = free_ports(3, taken), free_ports(3, taken)
    names = [f"e{i + 1}" for i in range(3)]
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, peer, strict=True))
    processes: list[subprocess.Popen[bytes]] = []
    log(f"starting etcd: 3 members, client ports {', '.join(map(str, client))}")
    try:
        for name, c, p in zip(names, client, peer, strict=True):
            data_dir = os.path.join(root, "etcd", name)
            os.makedirs(data_dir, exist_ok=True)
            argv = [binary, "--name", name, "--data-dir", data_dir,
                    "--listen-client-urls", f"http://127.0.0.1:{c}", "--advertise-client-urls", f"http://127.0.0.1:{c}",
                    "--listen-peer-urls", f"http://127.0.0.1:{p}", "--initial-advertise-peer-urls",
                    f"http://127.0.0.1:{p}", "--initial-cluster", initial, "--initial-cluster-state", "new",
                    "--initial-cluster-token", "ringkv-bench", "--logger", "zap", "--log-level", "warn"]
            with open(os.path.join(root, "etcd", f"{name}.log"), "ab") as out:
                processes.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, start_new_session=True))
        for c in client:
            wait_until(functools.partial(http_ok, f"http://127.0.0.1:{c}/health"), f"etcd on port {c}", 60, processes)
        urls = tuple(f"http://127.0.0.1:{c}" for c in client)
        yield Running("etcd", "etcd", urls,
                      f"{version_of('etcd', [binary, '--version'])}: 3 members, linearizable reads, v3 JSON gateway",
                      tuple(p.pid for p in processes), {p.pid: n for p, n in zip(processes, names, strict=True)},
                      etcd_prefix(urls[0]))
    finally:
        log("stopping etcd")
        stop_processes(processes)


@contextlib.contextmanager
def redis_server(root: str, binary: str, taken: set[int]) -> Iterator[Running]:
    (port,) = free_ports(1, taken)
    data_dir = os.path.join(root, "redis")
    os.makedirs(data_dir, exist_ok=True)
    log(f"starting redis-server on port {port}")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", data_dir, "--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning"]
        with open(os.path.join(data_dir, "redis.log"), "ab") as out:
            processes.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              start_new_session=True))
        wait_until(lambda: redis_ping(port), "redis-server", 30, processes)
        yield Running("redis", "redis", (f"redis://127.0.0.1:{port}",),
                      f"{version_of('redis', [binary, '--version'])}: one server, in memory, no persistence",
                      (processes[0].pid,), {processes[0].pid: "redis"})
    finally:
        log("stopping redis-server")
        stop_processes(processes)


# -- measuring ------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One workload on one system with one load generator: throughput, latency, and the CPU it cost."""

    driver: str  # "wrk" | "bench"
    ok: int
    elapsed_s: float
    errors: dict[str, int]
    latency_ms: dict[str, float]  # percentile label ("p50"...) -> ms
    server_cpu_us: dict[str, float]  # server process (node / member name) -> CPU µs per successful operation
    client_cpu_us: float  # the load generator's CPU µs per operation
    machine_busy: float  # share of all cores busy during the run (0..1)
    stolen: float = 0.0  # share of all cores' time the hypervisor gave to other guests during the run (0..1)
    run: RunResult | None = None  # `ringkv bench` only: per-operation detail

    @property
    def ops_per_s(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        """CPU µs per operation summed over every server process (the figure issue 17 drives down)."""
        return sum(self.server_cpu_us.values())


@dataclass
class Measured:
    systems: dict[str, str] = field(default_factory=dict)  # name -> setup line
    results: dict[tuple[str, str, str], Outcome] = field(default_factory=dict)  # (system, workload, driver)
    skipped: dict[str, str] = field(default_factory=dict)  # system -> why
    failed: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (system, workload, driver) -> why


def _per_op(used: cpu.Used, names: dict[int, str], ok: int) -> dict[str, float]:
    return {names[pid]: seconds * 1e6 / ok if ok else 0.0 for pid, seconds in sorted(used.processes.items(),
                                                                                      key=lambda kv: names[kv[0]])}


def _plan(system: Running, args: argparse.Namespace, mix: float, duration_s: float, warmup_s: float,
          preload: bool = False) -> BenchPlan:
    return BenchPlan(target=system.target, endpoints=system.urls, connections=args.connections,
                     duration_s=duration_s, value_size=args.value_size, mix=mix, keys=args.keys,
                     distribution=args.distribution, warmup_s=warmup_s, preload=preload, workers=args.workers,
                     seed=args.seed)


def measure_bench(system: Running, args: argparse.Namespace, workload: str) -> Outcome:
    """`ringkv bench` (this package's Python load generator): a warm-up run, then the measured one."""
    mix = WORKLOADS[workload]
    label = f"{system.name} {workload} (ringkv bench)"
    if args.warmup > 0:
        driver.run(_plan(system, args, mix, args.warmup, 0.0), label=label + " warm-up", show_progress=not args.quiet)
    me = os.getpid()
    before = cpu.sample([*system.pids, me])
    result = driver.run(_plan(system, args, mix, args.duration, 0.0), label=label, show_progress=not args.quiet)
    used = cpu.since(before)
    client_s = used.processes.pop(me, 0.0) + used.children_s
    ok = sum(s.ok for s in result.ops.values())
    percentiles = result.overall().latency_us.percentiles(PERCENTILES)
    errors: dict[str, int] = {}
    for stats in result.ops.values():
        for kind, n in stats.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    latency = {percentile_label(q): percentiles[q] / 1000 for q in PERCENTILES}
    return Outcome("bench", ok, result.elapsed_s, errors, latency, _per_op(used, system.names, ok),
                   client_s * 1e6 / ok if ok else 0.0, used.machine_busy, used.stolen, result)


def measure_wrk(system: Running, args: argparse.Namespace, workload: str, binary: str) -> Outcome:
    """wrk: one process per endpoint, `--wrk-connections` each; a warm-up run, then the measured one."""
    script = wrk.lua_script(system.target, args.keys, keyspace.make_value(args.value_size), WORKLOADS[workload],
                            system.etcd_prefix)
    if args.warmup > 0:
        wrk.run_wrk(binary, system.urls, script, args.wrk_connections, args.warmup, seed=args.seed + 7)
    before = cpu.sample(system.pids)
    results, _ = wrk.run_wrk(binary, system.urls, script, args.wrk_connections, args.duration, seed=args.seed)
    used = cpu.since(before)
    combined = wrk.combine(results)
    latency = {percentile_label(q): wrk.merged_percentile(results, q) / 1000 for q in PERCENTILES}
    ok = combined.ok
    return Outcome("wrk", ok, combined.duration_s, combined.errors, latency, _per_op(used, system.names, ok),
                   used.children_s * 1e6 / ok if ok else 0.0, used.machine_busy, used.stolen)


def measure(system: Running, args: argparse.Namespace, out: Measured, wrk_binary: str | None) -> None:
    out.systems[system.name] = system.setup
    preloaded = False
    for workload in args.workloads:
        if WORKLOADS[workload] > 0 and not preloaded:
            try:
                driver.preload(_plan(system, args, 0.0, 1.0, 0.0, preload=True), label=f"{system.name} preload",
                               show_progress=not args.quiet)
                preloaded = True
            except Exception as e:
                log(f"{system.name}: preload failed: {e}")
        for name in args.drivers:
            if name == "wrk" and (wrk_binary is None or system.name not in wrk.TARGETS):
                continue
            try:
                outcome = measure_bench(system, args, workload) if name == "bench" else \
                    measure_wrk(system, args, workload, str(wrk_binary))
            except Exception as e:  # one workload failing (a store unreachable...) must not lose the others
                out.failed[(system.name, workload, name)] = str(e)
                log(f"{system.name} {workload} ({name}) failed: {e}")
                continue
            out.results[(system.name, workload, name)] = outcome
            nodes = ", ".join(f"{n} {us:,.0f}" for n, us in outcome.server_cpu_us.items())
            log(f"{system.name} {workload} ({name}): {outcome.ops_per_s:,.0f} ops/s, p99 "
                f"{outcome.latency_ms['p99']:.2f} ms, {sum(outcome.errors.values())} errors; CPU µs/op "
                f"{outcome.cpu_us:,.0f} ({nodes}), client {outcome.client_cpu_us:,.0f}, machine "
                f"{outcome.machine_busy:.0%} busy, {outcome.stolen:.0%} stolen by the hypervisor")


def run(args: argparse.Namespace) -> Measured:
    out = Measured()
    root = tempfile.mkdtemp(prefix="ringkv-compare-", dir=args.dir)
    taken: set[int] = set()
    wrk_binary = ensure_binary("wrk", args.install) if "wrk" in args.drivers else None
    if "wrk" in args.drivers and wrk_binary is None:
        log("wrk is not available: only `ringkv bench` runs")
    try:
        for name in args.systems:
            if name == "ringkv":
                with ringkv_cluster(root, taken, shlex.split(args.ringkv_args), args.ringkv_code) as running:
                    measure(running, args, out, wrk_binary)
                continue
            binary_name = "etcd" if name == "etcd" else "redis-server"
            binary = ensure_binary(binary_name, args.install)
            if binary is None:
                out.skipped[name] = f"`{binary_name}` not found" + ("" if args.install else " (--no-install)")
                log(f"skipping {name}: {out.skipped[name]}")
                continue
            starter = etcd_cluster if name == "etcd" else redis_server
            with starter(root, binary, taken) as running:
                measure(running, args, out, wrk_binary)
    finally:
        if args.keep_data:
            log(f"data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return out


# -- the report -----------------------------------------------------------------------------------------------

DRIVER_NAMES = {"wrk": "wrk", "bench": "ringkv bench"}


def ms(result: RunResult, q: float) -> float:
    """The q-th latency percentile of a `ringkv bench` result, in ms (bench/tls.py uses it too)."""
    return result.overall().latency_us.percentile(q) / 1000


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def summary_table(m: Measured, workloads: list[str], drivers: list[str]) -> str:
    systems = [s for s in SYSTEMS if s in m.systems]
    heads = ["workload", "load generator"]
    for s in systems:
        heads += [f"{s} ops/s", f"{s} p50 / p99 ms", f"{s} CPU µs/op"]
    both = "ringkv" in systems and "etcd" in systems
    if both:
        heads += ["ringkv/etcd ops/s", "ringkv/etcd p99", "ringkv/etcd CPU/op"]
    lines = ["| " + " | ".join(heads) + " |", "|---|---" + "|---:" * (len(heads) - 2) + "|"]
    for w in workloads:
        for d in drivers:
            if not any((s, w, d) in m.results for s in systems):
                continue
            cells = [w, DRIVER_NAMES[d]]
            for s in systems:
                r = m.results.get((s, w, d))
                cells += [f"{r.ops_per_s:,.0f}", f"{r.latency_ms['p50']:.2f} / {r.latency_ms['p99']:.2f}",
                          f"{r.cpu_us:,.0f}"] if r else ["-", "-", "-"]
            if both:
                a, b = m.results.get(("ringkv", w, d)), m.results.get(("etcd", w, d))
                cells += [ratio(a.ops_per_s, b.ops_per_s), ratio(a.latency_ms["p99"], b.latency_ms["p99"]),
                          ratio(a.cpu_us, b.cpu_us)] if a and b else ["-", "-", "-"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_table(m: Measured, workloads: list[str], drivers: list[str]) -> str:
    """CPU µs per operation of every server process, the load generator's, and how busy the machine was."""
    heads = ["workload", "load generator", "system", "ops/s", "server processes: CPU µs/op", "sum",
             "load generator µs/op", "machine busy", "stolen", "errors"]
    lines = ["| " + " | ".join(heads) + " |", "|---|---|---|---:|---|---:|---:|---:|---:|---|"]
    for w in workloads:
        for d in drivers:
            for s in SYSTEMS:
                r = m.results.get((s, w, d))
                if r is None:
                    continue
                nodes = ", ".join(f"{n} {us:,.0f}" for n, us in r.server_cpu_us.items())
                errors = ", ".join(f"{n} {kind}" for kind, n in sorted(r.errors.items())) or "0"
                lines.append("| " + " | ".join([w, DRIVER_NAMES[d], s, f"{r.ops_per_s:,.0f}", nodes, f"{r.cpu_us:,.0f}",
                                                f"{r.client_cpu_us:,.0f}", f"{r.machine_busy:.0%}",
                                                f"{r.stolen:.0%}", errors]) + " |")
    return "\n".join(lines)


def detail_table(m: Measured, workloads: list[str]) -> str:
    heads = ["workload", "system", "op", "ok", "ops/s", *(f"{percentile_label(q)} ms" for q in PERCENTILES),
             "max ms", "errors"]
    lines = ["| " + " | ".join(heads) + " |", "|---|---|---" + "|---:" * (len(heads) - 3) + "|"]
    for w in workloads:
        for s in SYSTEMS:
            outcome = m.results.get((s, w, "bench"))
            if outcome is None or outcome.run is None:
                continue
            r = outcome.run
            for op, stats in r.ops.items():
                if not stats.ok and not stats.errors:
                    continue
                p = stats.latency_us.percentiles(PERCENTILES)
                errors = ", ".join(f"{n} {kind}" for kind, n in sorted(stats.errors.items())) or "0"
                lines.append("| " + " | ".join([
                    w, s, op, f"{stats.ok:,}", f"{stats.ok / r.elapsed_s:,.0f}",
                    *(f"{p[q] / 1000:.2f}" for q in PERCENTILES), f"{stats.latency_us.max / 1000:.2f}", errors,
                ]) + " |")
    return "\n".join(lines)


def goal(m: Measured) -> str:
    """The issue's goal: ringkv put and get throughput >= 2x etcd's, with p99 < 10 ms (judged with wrk when it
    ran: the Python load generator spends a core of its own)."""
    parts = []
    for w in ("put", "get"):
        for d in ("wrk", "bench"):
            a, b = m.results.get(("ringkv", w, d)), m.results.get(("etcd", w, d))
            if a is None or b is None:
                continue
            x, p99 = a.ops_per_s / b.ops_per_s if b.ops_per_s else 0.0, a.latency_ms["p99"]
            verdict = "met" if x >= 2.0 and p99 < 10.0 else "not met"
            parts.append(f"{w} ({DRIVER_NAMES[d]}): {x:.2f}x etcd, p99 {p99:.1f} ms, {a.cpu_us:,.0f} CPU µs/op "
                         f"(etcd {b.cpu_us:,.0f}) — {verdict}")
            break
    if not parts:
        return "Goal (ringkv put and get >= 2x etcd with p99 < 10 ms): not measured in this run (etcd skipped)."
    return "Goal (ringkv put and get >= 2x etcd with p99 < 10 ms): " + "; ".join(parts) + "."


def conditions_warning(args: argparse.Namespace, load: tuple[str, str]) -> str:
    """A sentence saying why these numbers are only indicative, if they are (short run, busy machine)."""
    why = []
    if args.duration < 30:
        why.append(f"a short run ({args.duration:g} s per workload instead of 30 s)")
    busiest = max(float(x) for x in load)
    if busiest > 1.5:
        why.append(f"a busy machine (load average up to {busiest:.1f} on {os.cpu_count()} cores from other work)")
    if not why:
        return ""
    return "These numbers are indicative only: " + " and ".join(why) + "."


def machine() -> list[str]:
    cpu_model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        kib = next((int(line.split()[1]) for line in f if line.startswith("MemTotal")), 0)
        mem = f"{kib / 2**20:.0f} GiB"
    return [f"{platform.system()} {platform.release()} ({platform.platform()})",
            f"{os.cpu_count()} cores ({cpu_model}), {mem} memory",
            f"Python {platform.python_version()}, ringkv {__version__}"]


def chart_data(m: Measured, workloads: list[str], drivers: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    data: dict[str, dict[str, dict[str, float]]] = {}
    for w in workloads:
        for d in drivers:
            for s in SYSTEMS:
                r = m.results.get((s, w, d))
                if r is not None and r.ok:
                    label = f"{s} ({DRIVER_NAMES[d]})"
                    data.setdefault(w, {})[label] = {k: max(v, 0.001) for k, v in r.latency_ms.items()}
    return data


def document(m: Measured, args: argparse.Namespace, command: str, load: tuple[str, str], chart: str | None) -> str:
    workloads, drivers = list(args.workloads), list(args.drivers)
    lines = [
        "# ringkv next to etcd and Redis",
        "",
        "Generated by `bench/compare.py`; every number below comes from the one run described here. Two load "
        "generators drive the systems in turn: **wrk** (C; one process per node or member, one thread, "
        f"{args.wrk_connections} connections each; ringkv and etcd) and **ringkv bench** (this project's Python "
        "load generator, `ringkv.loadgen`; every system). CPU µs per operation is each server process's user + "
        "system CPU time over the measured seconds (from `/proc/PID/stat`), divided by the successful operations.",
        "",
        "## How it was run",
        "",
        "```sh",
        command,
        "```",
        "",
        *(f"- {line}" for line in machine()),
        f"- load average (1 min) before / after the run: {load[0]} / {load[1]}; the load generators share the "
        "cores with the servers",
        *(f"- {name}: {setup}" for name, setup in m.systems.items()),
        *(f"- {name}: skipped, {why}" for name, why in m.skipped.items()),
        *(f"- {name} {w} ({DRIVER_NAMES[d]}): failed, {why}" for (name, w, d), why in m.failed.items()),
        f"- workloads: {', '.join(f'{w} ({WORKLOADS[w]:.0%} reads)' for w in workloads)}; {args.value_size}-byte "
        f"values, {args.keys:,} keys (uniform for wrk; {args.distribution} for ringkv bench), "
        f"ringkv bench with {args.connections} connections and {args.workers} process(es); "
        f"{args.warmup:g} s warm-up then {args.duration:g} s measured, per workload and load generator; reads "
        "run after every key was written once",
        "- latency: from sending a request to having read its full answer, closed loop (each connection waits for "
        "its answer before the next request), successful operations only (wrk: all answered requests); wrk's "
        "percentiles merge its processes' (0.1% grid), ringkv bench's come from a log-bucketed histogram",
        "",
        "## Results",
        "",
        summary_table(m, workloads, drivers),
        "",
        "CPU per operation, per server process:",
        "",
        cpu_table(m, workloads, drivers),
        "",
        "Per operation (ringkv bench):",
        "",
        detail_table(m, workloads),
        "",
    ]
    if chart:
        lines += [f"![latency percentiles per system]({chart})", ""]
    lines += [
        "## Closing note",
        "",
        goal(m),
        "",
        *([conditions_warning(args, load), ""] if conditions_warning(args, load) else []),
        "Caveats: everything runs on one machine, so the load generator, the three ringkv nodes and the three etcd "
        "members compete for the same cores (on two shared cores throughput is about 2 cores / the CPU per "
        "operation of everything running); Redis is a single in-memory server without persistence (a floor, not a "
        "peer); ringkv acknowledges a write after two replicas fsynced it, etcd after a majority of members did.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds per workload (default 30)")
    p.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds per workload (default 5)")
    p.add_argument("--connections", type=int, default=64, help="ringkv bench's connections (default 64)")
    p.add_argument("--wrk-connections", type=int, default=11, help="connections per wrk process (default 11)")
    p.add_argument("--drivers", default="wrk,bench", help="load generators, comma-separated: wrk,bench")
    p.add_argument("--value-size", type=int, default=1024)
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--distribution", choices=["uniform", "zipfian"], default="uniform", help="key choice")
    p.add_argument("--workers", type=int, default=1, help="load generator processes (default 1)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ringkv-args", default="", help="extra `ringkv node` flags for the ringkv nodes (experiments)")
    p.add_argument("--ringkv-code", default=None,
                   help="a checkout (git worktree) whose node/ the ringkv nodes run: A/B against another commit")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of ringkv,etcd,redis")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of put,get,mixed")
    p.add_argument("--no-install", dest="install", action="store_false",
                   help="skip etcd / redis when missing instead of apt-get installing them")
    p.add_argument("--dir", default=None, help="where the temporary data directory goes (default: system temp)")
    p.add_argument("--keep-data", action="store_true", help="keep the data directory (and the servers' logs)")
    p.add_argument("--out", default=os.path.join(REPO, "docs", "benchmarks-cluster.md"),
                   help="markdown file to write (default docs/benchmarks-cluster.md); '-' for none")
    p.add_argument("--chart", default=os.path.join(REPO, "docs", "img", "latency-percentiles.png"),
                   help="PNG chart to write (default docs/img/latency-percentiles.png); '-' for none")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    args = p.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.drivers = [d.strip() for d in args.drivers.split(",") if d.strip()]
    bad = [s for s in args.systems if s not in SYSTEMS] + [w for w in args.workloads if w not in WORKLOADS] + \
        [d for d in args.drivers if d not in DRIVER_NAMES]
    if bad:
        p.error(f"unknown system or workload: {', '.join(bad)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/compare.py" + ("" if not sys.argv[1:] else " " + shlex.join(sys.argv[1:]))
    load_before = f"{os.getloadavg()[0]:.2f}"
    measured = run(args)
    load_after = f"{os.getloadavg()[0]:.2f}"
    if not measured.results:
        log("nothing was measured")
        return 1
    chart_link = None
    if args.chart != "-":
        if charts.available():
            data = chart_data(measured, list(args.workloads), list(args.drivers))
            charts.latency_percentiles(data, args.chart, f"latency percentiles: wrk {args.wrk_connections} "
                                       f"connections per node, ringkv bench {args.connections}; "
                                       f"{args.value_size}-byte values (log scale)")
            log(f"wrote {args.chart}")
            base = os.path.dirname(os.path.abspath(args.out)) if args.out != "-" else os.getcwd()
            chart_link = os.path.relpath(os.path.abspath(args.chart), base)
        else:
            log("matplotlib is not installed (pip install -e '.[bench]'): no chart")
    print()
    print(summary_table(measured, list(args.workloads), list(args.drivers)))
    print()
    print(cpu_table(measured, list(args.workloads), list(args.drivers)))
    print()
    print(goal(measured))
    for name, why in measured.skipped.items():
        print(f"{name}: skipped, {why}")
    for (name, w, d), why in measured.failed.items():
        print(f"{name} {w} ({DRIVER_NAMES[d]}): failed, {why}")
    if args.out != "-":
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(document(measured, args, command, (load_before, load_after), chart_link))
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
