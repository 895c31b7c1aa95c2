"""Range streaming on a local cluster: a 4th node joins a loaded 3-node cluster (RF 3) and streams its ranges,
with the stream throttle off and on, in the same run, and what a steady client load sees while it does.

    python bench/streaming.py [--mb 200] [--value-size 1024] [--connections 64] [--throttle-mb-s 32]
                              [--rate 300] [--put-share 0.5] [--baseline-s 30] [--warmup-s 3]
                              [--gossip-interval-s 1] [--durability batch|sync|off] [--join-timeout-s 900]
                              [--json FILE | -] [--dir DIR] [--keep-data] [--quiet]
    make streaming-bench                                   (MB=, THROTTLE_MB_S=, RATE= override)
    python bench/streaming.py --mb 5 --baseline-s 5        (a smoke run: about a minute)

Everything on 127.0.0.1, data in a temporary directory, every node stopped at the end whatever happens:

1. load: a 3-node cluster (RF 3, durability batch, anti-entropy at a 3600 s interval) is written MB MiB of data:
   MB * 2^20 / VALUE_SIZE keys of VALUE_SIZE bytes, each once with w=3 (CONNECTIONS in flight, spread over the
   nodes) through `POST /api/v1/put`. The three nodes are then stopped cleanly and their data directories
   kept as a snapshot.
2. one trial per throttle setting, `--stream-mb-s 0` (unlimited) then `--stream-mb-s THROTTLE_MB_S` (the
   node's default is 32; the node's MB is 2^20 bytes), given to every node: the snapshot is copied to a fresh
   directory and n1-n3 started from it (same ports, same tokens, so both joins move exactly the same data), and
   each node's first anti-entropy round (everything in sync) is awaited, so no background exchange runs in
   the windows. Then a paced client load starts against n1-n3 (below); after WARMUP_S + BASELINE_S, n4 is
   started with no --tokens, so it joins by streaming (docs/topology.md). The join is timed from n4's process
   start to its `GET /admin/v1/node` answering mode normal (`/ready` too) and then every node's
   `GET /admin/v1/ring` holding n4, agreed, with no join in flight. n4's `/admin/v1/node` is polled every
   0.1 s meanwhile: when its tokens were taken (the ranges appear), how long a range was seen streaming and
   how long verifying (the Merkle check after each range), bytes over time. Streamed keys and bytes are n4's
   own figures (`/admin/v1/node` per range, and `ringkv_streaming_received_{keys,bytes}_total` on its
   /metrics), and checked against the keys of the load n4 replicates in the final ring (computed here from
   `/admin/v1/ring?tokens=1`). MiB/s is the bytes over the stream phase: from n4's ranges appearing (tokens
   taken) to n4 normal, as polled (ranges stream several at a time, each with its own `elapsed_s`).
   The trial's cluster is then stopped and its directory removed.
3. client load, each trial: RATE requests/s in an open loop (request i is due at start + i/RATE whatever
   happened to the ones before; when MAX_IN_FLIGHT are outstanding a due request is dropped and counted, not
   queued), PUT_SHARE puts of new keys (w=2) and the rest gets of loaded keys (r=2), to n1, n2, n3 in turn,
   in this one process (aiohttp). A request's latency counts from when it was due (so a stall of the client
   or of the cluster is not hidden), to its answer or its failure; a get answering 404 is an error (every
   loaded key was acknowledged by all three replicas). Requests are put in a window by when they were due:
   `baseline` (WARMUP_S after the load started until n4 is started), `join` (n4's start until the join is
   over), and `stream` (the part of `join` from n4 taking its tokens to n4 normal).

Prints a table (per throttle: the join's time, keys, MiB, MiB/s; the client's p50/p99/max and errors before
and during the join), the same as markdown for docs/benchmarks.md, and writes every figure to --json (default
bench/results/streaming-YYYYmmdd-HHMMSS.json; '-' for stdout only).
"""

from __future__ import annotations

import os
import sys

# Run as `python bench/NAME.py`, Python puts bench/ first on sys.path: put the repository root there instead
# (as `python -m bench.NAME` would), so `bench.common` imports.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = os.path.dirname(sys.path[0])

import argparse
import asyncio
import contextlib
import random
import shlex
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from bench.common import Progress, machine, pick_base_port, wait_for
from ringkv import local
from ringkv.cluster import ring as ringmod
from ringkv.cluster.ids import NodeId
from ringkv.loadgen import keyspace
from ringkv.loadgen.histogram import nearest_rank
from ringkv.local import LocalCluster, LocalNode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 2**20
NODES, REPLICATION = 3, 3
JOINER = "n4"
ADMIN_TIMEOUT_S = 5.0  # every admin call (status polls, metrics)
LOAD_TIMEOUT_S = 30.0  # each write of the initial load
POLL_S = 0.1  # the joiner's /admin/v1/node while it joins
SETTLE_TIMEOUT_S = 60.0  # n4 normal to every node's ring holding it, agreed
START_TIMEOUT_S = 120.0  # a cluster started from the snapshot: ready, converged, first anti-entropy round done
TIMELINE_EVERY_S = 1.0  # how often the bytes-so-far timeline is sampled (into the JSON)


def log(message: str) -> None:
    print(f"streaming: {message}", file=sys.stderr, flush=True)


def mib(n: float) -> float:
    return round(n / MIB, 2)


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


# -- the cluster ----------------------------------------------------------------------------------------------


STARTED: list[LocalCluster] = []  # every cluster this process started, for the last-resort kill in main()


def alive(node: LocalNode) -> bool:
    return local._alive(node.pid)  # LocalCluster's own notion of running (a reaped zombie is dead)


def start_nodes(cluster: LocalCluster) -> None:
    STARTED.append(cluster)
    for node in cluster.nodes:
        cluster.start(node)
    cluster.wait_ready(timeout_s=START_TIMEOUT_S)
    cluster.wait_converged(timeout_s=START_TIMEOUT_S)


def start_load_cluster(data_dir: str, durability: str, extra_args: list[str]) -> LocalCluster:
    """n1-n3 on a block of free ports with room for n4 (base + 3), started, ready, converged."""
    for attempt in range(3):
        base = pick_base_port(NODES + 1)
        cluster = LocalCluster(data_dir, local.plan(data_dir, NODES, base, REPLICATION), REPLICATION, durability,
                               list(extra_args))
        try:
            start_nodes(cluster)
            return cluster
        except RuntimeError as e:  # a port taken between the probe and the bind: another block
            stop_cluster(cluster)
            if attempt == 2 or "in use" not in str(e):
                raise
            shutil.rmtree(data_dir, ignore_errors=True)
    raise AssertionError("unreachable")


def stop_cluster(cluster: LocalCluster, timeout_s: float = 60.0) -> list[str]:
    """SIGTERM to every node, then wait for each (SIGKILL after `timeout_s`). Returns the nodes that had to be
    killed."""
    for node in cluster.nodes:
        cluster.signal(node, signal.SIGCONT)
        cluster.signal(node, signal.SIGTERM)
    killed = []
    deadline = time.monotonic() + timeout_s
    for node in cluster.nodes:
        while alive(node) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(node):
            killed.append(node.node_id)
            cluster.kill(node)
    return killed


def kill_everything() -> None:
    """The last resort (main's finally): SIGKILL whatever this process started that still runs."""
    for cluster in STARTED:
        for node in cluster.nodes:
            if alive(node):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.pid, signal.SIGKILL)


def copy_snapshot(src: str, dst: str) -> None:
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("node.log", local.STATE_FILE))


def dir_bytes(path: str) -> int:
    total = 0
    for top, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(top, name))
    return total


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (all its threads), from /proc; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- HTTP -----------------------------------------------------------------------------------------------------


class Http:
    """Admin calls and the initial load (one session; every call has a timeout; 127.0.0.1 only)."""

    def __init__(self, connections: int) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections + 16, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=ADMIN_TIMEOUT_S), skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        await self.session.close()

    async def get(self, url: str, **params: str) -> tuple[int, bytes]:
        assert url.startswith("http://127.0.0.1:"), url
        async with self.session.get(url, params=params or None) as response:  # the session's ADMIN_TIMEOUT_S
            return response.status, await response.read()

    async def post(self, url: str, body: Any, timeout_s: float, **params: str) -> tuple[int, Any]:
        assert url.startswith("http://127.0.0.1:"), url
        async with self.session.post(url, data=orjson.dumps(body), params=params or None,
                                     headers={"Content-Type": "application/json"},
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            raw = await response.read()
            return response.status, orjson.loads(raw) if raw else None

    async def json(self, url: str, **params: str) -> Any:
        status, raw = await self.get(url, **params)
        if status != 200:
            raise RuntimeError(f"GET {url}: {status} {raw[:300]!r}")
        return orjson.loads(raw)

    async def try_json(self, url: str, **params: str) -> Any:
        """The parsed 200 answer, or None (not listening yet, an error status, a timeout)."""
        try:
            status, raw = await self.get(url, **params)
        except (aiohttp.ClientError, TimeoutError):
            return None
        return orjson.loads(raw) if status == 200 and raw else None

    async def metrics(self, node: LocalNode) -> dict[str, float]:
        """The streaming counters of a node's /metrics."""
        status, raw = await self.get(node.url + "/metrics")
        if status != 200:
            raise RuntimeError(f"{node.node_id} /metrics: {status}")
        return parse_metrics(raw.decode(), STREAM_METRICS)


STREAM_METRICS = ("ringkv_streaming_received_keys_total", "ringkv_streaming_received_bytes_total",
                  "ringkv_streaming_sent_keys_total", "ringkv_streaming_sent_bytes_total",
                  "ringkv_streaming_ranges_total")


def parse_metrics(text: str, names: Iterable[str]) -> dict[str, float]:
    """Unlabelled samples `names` of a Prometheus text exposition (missing ones are 0)."""
    wanted = set(names)
    out = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[name] = float(value.split()[0])
    return out


async def put_all(http: Http, urls: Sequence[str], keys: Sequence[str], value: str, w: int, connections: int,
                  progress: Progress) -> int:
    """Write every key with `value` at `w`, `connections` in flight, the nodes in turn; each write is retried
    twice. Returns how many still failed."""
    todo = iter(enumerate(keys))
    failed = done = 0

    async def worker() -> None:
        nonlocal failed, done
        for i, key in todo:
            for attempt in range(3):
                try:
                    status, doc = await http.post(urls[i % len(urls)] + "/api/v1/put", {"key": key, "value": value},
                                                  LOAD_TIMEOUT_S, w=str(w))
                    if status == 200:
                        break
                    problem = f"{status} {doc}"
                except (aiohttp.ClientError, TimeoutError) as e:
                    problem = repr(e)
                if attempt == 2:
                    failed += 1
                    log(f"write of {key} failed: {problem}")
            done += 1
            progress.update(done)

    await asyncio.gather(*(worker() for _ in range(min(connections, max(1, len(keys))))))
    progress.update(len(keys))
    return failed


# -- the client load ------------------------------------------------------------------------------------------


@dataclass
class Sample:
    due: float  # when the request was due (monotonic)
    op: str  # put | get
    outcome: str  # ok | http_<status> | not_found | timeout | <exception name> | dropped
    target: str  # the node it went to
    latency_s: float = 0.0  # due to answer (or failure); 0 for a dropped request
    lag_s: float = 0.0  # due to sent: the client's own delay


class PacedLoad:
    """RATE requests/s, open loop, PUT_SHARE puts of new keys (w=2) and gets of loaded keys (r=2), to `urls` in
    turn, until `stop` is set; every request recorded as a `Sample`."""

    def __init__(self, targets: Sequence[LocalNode], keys: Sequence[str], value: str, args: argparse.Namespace,
                 prefix: str) -> None:
        self.urls, self.names = [n.url for n in targets], [n.node_id for n in targets]
        self.keys, self.value = keys, value
        self.rate, self.put_share = args.rate, args.put_share
        self.max_in_flight, self.timeout_s = args.max_in_flight, args.request_timeout_s
        self.rng = random.Random(f"{args.seed}-{prefix}")
        self.prefix = prefix
        self.samples: list[Sample] = []
        self.written: list[str] = []  # the keys of the puts that were acknowledged
        self.in_flight = 0
        self.started = 0.0
        self.running = asyncio.Event()  # set once the first request is due (`started`)

    async def _one(self, session: aiohttp.ClientSession, i: int, due: float, op: str) -> None:
        url = self.urls[i % len(self.urls)]
        sent = time.monotonic()
        try:
            if op == "put":
                key = f"{self.prefix}-{i}"
                async with session.post(url + "/api/v1/put", data=orjson.dumps({"key": key, "value": self.value}),
                                        headers={"Content-Type": "application/json"}) as response:
                    await response.read()
                    status = response.status
                if status == 200:
                    self.written.append(key)
            else:
                key = self.keys[self.rng.randrange(len(self.keys))]
                async with session.get(url + "/api/v1/getValue", params={"key": key}) as response:
                    await response.read()
                    status = response.status
            outcome = "ok" if status == 200 else "not_found" if status == 404 else f"http_{status}"
        except TimeoutError:
            outcome = "timeout"
        except aiohttp.ClientError as e:
            outcome = type(e).__name__
        finally:
            self.in_flight -= 1
        now = time.monotonic()
        self.samples.append(Sample(due, op, outcome, self.names[i % len(self.names)], now - due, sent - due))

    async def run(self, stop: asyncio.Event) -> None:
        assert all(u.startswith("http://127.0.0.1:") for u in self.urls), self.urls
        connector = aiohttp.TCPConnector(limit=self.max_in_flight + 16, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                         skip_auto_headers=("User-Agent",)) as session:
            self.started = time.monotonic()
            self.running.set()
            i = 0
            while not stop.is_set():
                due = self.started + i / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):  # pacing the open loop (and waking up for `stop`)
                        await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        break
                op = "put" if self.rng.random() < self.put_share else "get"
                if self.in_flight >= self.max_in_flight:
                    # not keeping up: dropped, not queued
                    self.samples.append(Sample(due, op, "dropped", self.names[i % len(self.names)]))
                else:
                    self.in_flight += 1
                    task = asyncio.create_task(self._one(session, i, due, op))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                i += 1
            await asyncio.gather(*list(tasks))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    return sorted_values[nearest_rank(len(sorted_values), q) - 1] if sorted_values else 0.0


def latency_stats(samples: Sequence[Sample], seconds: float) -> dict[str, Any]:
    sent = [s for s in samples if s.outcome != "dropped"]
    lat = sorted(s.latency_s for s in sent)
    lag = sorted(s.lag_s for s in sent)
    outcomes = Counter(s.outcome for s in samples)
    errors = {k: v for k, v in sorted(outcomes.items()) if k not in ("ok", "dropped")}
    return {"requests": len(samples), "sent": len(sent), "ok": outcomes["ok"], "errors": sum(errors.values()),
            "errors_by_kind": errors, "dropped": outcomes["dropped"],
            "achieved_ok_per_s": round(outcomes["ok"] / seconds, 1) if seconds > 0 else None,
            "p50_ms": round(percentile(lat, 50) * 1000, 2), "p90_ms": round(percentile(lat, 90) * 1000, 2),
            "p99_ms": round(percentile(lat, 99) * 1000, 2), "p999_ms": round(percentile(lat, 99.9) * 1000, 2),
            "max_ms": round(lat[-1] * 1000, 2) if lat else 0.0,
            "mean_ms": round(sum(lat) / len(lat) * 1000, 2) if lat else 0.0,
            "client_lag_p99_ms": round(percentile(lag, 99) * 1000, 2),
            "client_lag_max_ms": round(lag[-1] * 1000, 2) if lag else 0.0}


def window(samples: Sequence[Sample], lo: float, hi: float) -> dict[str, Any]:
    """Latency of the requests due in [lo, hi), all of them and by operation."""
    inside = [s for s in samples if lo <= s.due < hi]
    seconds = hi - lo
    out = {"seconds": round(seconds, 2), **latency_stats(inside, seconds)}
    out["by_op"] = {op: latency_stats([s for s in inside if s.op == op], seconds) for op in ("put", "get")}
    out["by_target"] = {n: latency_stats([s for s in inside if s.target == n], seconds)
                        for n in sorted({s.target for s in inside})}
    return out


# -- the join -------------------------------------------------------------------------------------------------


@dataclass
class JoinWatch:
    """What n4's /admin/v1/node showed while it joined (polled every POLL_S from its process start)."""

    started: float
    first_answer: float = 0.0  # its HTTP listener answered
    tokens_taken: float = 0.0  # its ranges appeared (tokens taken, agreement reached: the stream phase begins)
    normal: float = 0.0  # mode normal (and /ready 200)
    settled: float = 0.0  # every node's ring holds it, agreed, nothing in flight
    polls: int = 0
    modes: Counter[str] | None = None
    state_s: dict[str, float] | None = None  # seconds the range in progress was seen in each state
    final: dict[str, Any] | None = None  # /admin/v1/node once normal
    timeline: list[tuple[float, int]] | None = None  # (s since start, bytes received so far)

    def since(self, t: float) -> float | None:
        return round(t - self.started, 2) if t else None


def range_state(doc: dict[str, Any]) -> str:
    """The state of the first range n4 is working on (several stream at once: an approximation)."""
    for r in doc["streaming"]:
        if r["state"] in ("streaming", "verifying", "failed"):
            return str(r["state"])
    states = {r["state"] for r in doc["streaming"]}
    return "done" if states == {"done"} else "pending" if states else "no ranges yet"


def ring_of(doc: dict[str, Any]) -> ringmod.Ring:
    """A node's ring from its `/admin/v1/ring?tokens=1`."""
    infos = {n["node_id"]: ringmod.NodeInfo(NodeId(n["node_id"]), n["datacenter"], n["rack"], float(n["capacity"]))
             for n in doc["nodes"]}
    tokens: dict[str, list[int]] = {n: [] for n in infos}
    for token, owner in doc["tokens"]:
        tokens[owner].append(int(token))
    return ringmod.Ring({infos[n]: tokens[n] for n in infos})


def replicated_by(ring: ringmod.Ring, keys: Sequence[str], node_id: str, replication: int) -> int:
    nid = NodeId(node_id)
    return sum(nid in ring.preference_list(ringmod.token_for(k.encode()), replication) for k in keys)


# -- the bench ------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, root: str, http: Http) -> None:
        self.args = args
        self.root = root
        self.http = http
        self.value = keyspace.make_value(args.value_size, args.seed)
        self.keys = [f"st{i:09d}" for i in range(args.keys)]
        self.snapshot = os.path.join(root, "loaded")
        self.base: list[LocalNode] = []  # n1-n3 as loaded (ports, tokens)
        self.joiner_ports = (0, 0)

    def node_args(self, stream_mb_s: float | None) -> list[str]:
        out = ["--aae-interval-s", "3600", "--gossip-interval-s", f"{self.args.gossip_interval_s:g}"]
        return out if stream_mb_s is None else [*out, "--stream-mb-s", f"{stream_mb_s:g}"]

    async def wait_first_rounds(self, nodes: Iterable[LocalNode]) -> None:
        """Each node's trees ready and compared once with every other replica since it started (its first
        background round; the next is an hour away)."""
        for node in nodes:
            async def done(node: LocalNode = node) -> bool:
                status = await self.http.try_json(node.url + "/admin/v1/antientropy")
                return bool(status and status["ranges"] and all(
                    r["tree"] == "ready" and all(v is not None for v in r["peers"].values())
                    for r in status["ranges"]))
            await wait_for(done, f"{node.node_id}'s first anti-entropy round is done", START_TIMEOUT_S, 0.2)

    # -- 1. load --------------------------------------------------------------------------------------------

    async def load(self) -> dict[str, Any]:
        args = self.args
        log(f"starting {NODES} nodes (RF {REPLICATION}, durability {args.durability}), data in {self.snapshot}")
        cluster = await asyncio.to_thread(start_load_cluster, self.snapshot, args.durability, self.node_args(None))
        self.base = [LocalNode(n.node_id, n.http_port, n.peer_port, n.data_dir, list(n.tokens)) for n in cluster.nodes]
        base_port = cluster.nodes[0].http_port
        self.joiner_ports = (base_port + NODES, base_port + local.PEER_PORT_OFFSET + NODES)
        killed: list[str] = []
        try:
            log(f"writing {len(self.keys):,} keys of {args.value_size} bytes ({args.mb:g} MiB) with w=3, "
                f"{args.connections} in flight")
            started = time.monotonic()
            failed = await put_all(self.http, [n.url for n in cluster.nodes], self.keys, self.value, 3,
                                   args.connections, Progress("load (w=3)", len(self.keys), not args.quiet))
            seconds = time.monotonic() - started
            if failed:
                raise RuntimeError(f"{failed} writes of the initial load failed")
            log(f"loaded in {seconds:.1f} s ({len(self.keys) / seconds:,.0f} puts/s); stopping the nodes cleanly "
                "(their directories are the snapshot every trial starts from)")
        finally:
            killed = await asyncio.to_thread(stop_cluster, cluster)
        if killed:
            log(f"warning: {killed} did not stop within 60 s and were killed (they replay their commit logs)")
        disk = {n.node_id: dir_bytes(n.data_dir) for n in cluster.nodes}
        return {"keys": len(self.keys), "value_size": args.value_size,
                "value_mib": mib(len(self.keys) * args.value_size),
                "seconds": round(seconds, 2), "puts_per_s": round(len(self.keys) / seconds, 1),
                "disk_mib_per_node": {k: mib(v) for k, v in disk.items()}, "killed_at_stop": killed}

    # -- 2. one join ----------------------------------------------------------------------------------------

    async def trial(self, name: str, stream_mb_s: float) -> dict[str, Any]:
        args = self.args
        tdir = os.path.join(self.root, f"trial-{name}")
        t_copy = time.monotonic()
        await asyncio.to_thread(copy_snapshot, self.snapshot, tdir)
        copy_s = time.monotonic() - t_copy
        node_args = self.node_args(stream_mb_s)
        cluster = LocalCluster(tdir, [LocalNode(n.node_id, n.http_port, n.peer_port, os.path.join(tdir, n.node_id),
                                                list(n.tokens)) for n in self.base],
                               REPLICATION, args.durability, node_args)
        founders = list(cluster.nodes)
        n4 = LocalNode(JOINER, self.joiner_ports[0], self.joiner_ports[1], os.path.join(tdir, JOINER), [])
        stop = asyncio.Event()
        load_task: asyncio.Task[None] | None = None
        label = "off (unlimited)" if stream_mb_s == 0 else f"{stream_mb_s:g} MiB/s"
        try:
            log(f"[throttle {label}] copied the snapshot in {copy_s:.1f} s; starting n1-n3 with {' '.join(node_args)}")
            t_start = time.monotonic()
            await asyncio.to_thread(start_nodes, cluster)
            await self.wait_first_rounds(founders)
            start_s = time.monotonic() - t_start
            sent_before = {n.node_id: await self.http.metrics(n) for n in founders}

            loadavg = {"baseline_start": round(os.getloadavg()[0], 2)}
            load = PacedLoad(founders, self.keys, self.value, args, f"live-{name}")
            load_task = asyncio.create_task(load.run(stop))
            log(f"[throttle {label}] cluster up in {start_s:.1f} s; client load {args.rate:g} req/s "
                f"({args.put_share:.0%} puts) for {args.warmup_s + args.baseline_s:g} s before the join")
            await asyncio.wait_for(load.running.wait(), ADMIN_TIMEOUT_S)
            await self.measure_for(load_task, args.warmup_s)
            baseline_lo = load.started + args.warmup_s
            cpu_base = {n.node_id: cpu_seconds(n.pid) for n in founders}
            t_base = time.monotonic()
            await self.measure_for(load_task, baseline_lo + args.baseline_s - time.monotonic())  # the baseline

            loadavg["join_start"] = round(os.getloadavg()[0], 2)
            cpu0 = {n.node_id: cpu_seconds(n.pid) for n in founders}
            bench_cpu0 = time.process_time()
            t0 = time.monotonic()
            baseline_cpu = {k: round((cpu0[k] - cpu_base[k]) * 1000 / (t0 - t_base)) for k in cpu0}
            cluster.nodes.append(n4)  # from now on stopped with the others
            cluster.start(n4)
            log(f"[throttle {label}] started {JOINER} (no --tokens: it joins by streaming)")
            watch = await self.watch_join(cluster, n4, t0, load_task)
            cpu = {n.node_id: round(cpu_seconds(n.pid) - cpu0.get(n.node_id, 0.0), 1) for n in cluster.nodes}
            bench_cpu = round(time.process_time() - bench_cpu0, 1)
            loadavg["join_end"] = round(os.getloadavg()[0], 2)
            stop.set()
            await load_task
            load_task = None

            received = await self.http.metrics(n4)
            sent_after = {n.node_id: await self.http.metrics(n) for n in founders}
            ring_doc = await self.http.json(founders[0].url + "/admin/v1/ring", tokens="1")
        finally:
            stop.set()
            if load_task is not None:
                load_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await load_task
            log(f"[throttle {label}] stopping the cluster")
            await asyncio.to_thread(stop_cluster, cluster)
            if args.keep_data:
                log(f"data kept in {tdir}")
            else:
                shutil.rmtree(tdir, ignore_errors=True)

        final_ring = ring_of(ring_doc)
        expected = await asyncio.to_thread(replicated_by, final_ring, self.keys, JOINER, REPLICATION)
        live = await asyncio.to_thread(replicated_by, final_ring, load.written, JOINER, REPLICATION)
        doc = self.join_report(watch, received, sent_before, sent_after, expected, live)
        doc["cpu_s_during_join"] = {**cpu, "bench": bench_cpu}
        doc["cpu_ms_per_s"] = {"baseline": baseline_cpu,
                               "join": {k: round(v * 1000 / doc["seconds"])
                                        for k, v in doc["cpu_s_during_join"].items()}}
        samples = load.samples
        outcomes = Counter(f"{s.op} {s.outcome}" for s in samples)  # every request of the trial, warm-up included
        doc = {"name": name, "stream_mb_s": stream_mb_s, "node_args": node_args, "start_s": round(start_s, 1),
               "load_average": loadavg, "join": doc, "client_outcomes": dict(sorted(outcomes.items())), "latency": {
                   "baseline": window(samples, baseline_lo, t0),
                   "join": window(samples, t0, watch.settled),
                   "stream": window(samples, watch.tokens_taken or t0, watch.normal)}}
        j, lat = doc["join"], doc["latency"]
        log(f"[throttle {label}] join {j['seconds']:.1f} s, {j['keys']:,} keys / {j['mib']:.1f} MiB streamed in "
            f"{j['stream_phase_s']:.1f} s ({j['mib_per_s']} MiB/s); client p99 {lat['baseline']['p99_ms']} ms "
            f"before, {lat['join']['p99_ms']} ms during ({lat['join']['errors']} errors, "
            f"{lat['join']['dropped']} dropped)")
        return doc

    async def measure_for(self, load_task: asyncio.Task[None], seconds: float) -> None:
        """The baseline window: `seconds` of the load running on its own (it must not end meanwhile)."""
        done, _ = await asyncio.wait([load_task], timeout=max(0.0, seconds))
        if done:
            load_task.result()
            raise RuntimeError("the client load stopped by itself")

    async def watch_join(self, cluster: LocalCluster, n4: LocalNode, t0: float,
                         load_task: asyncio.Task[None]) -> JoinWatch:
        """Poll n4's /admin/v1/node until it is normal (and /ready), then every node's ring until it holds n4."""
        args = self.args
        watch = JoinWatch(t0, modes=Counter(), state_s={}, timeline=[])
        assert watch.modes is not None and watch.state_s is not None and watch.timeline is not None
        deadline = t0 + args.join_timeout_s
        last_poll, last_state, last_log, last_sample = t0, "not answering", t0, -TIMELINE_EVERY_S
        doc: dict[str, Any] | None = None
        while True:
            if load_task.done():
                load_task.result()
                raise RuntimeError("the client load stopped by itself")
            if not alive(n4):
                raise RuntimeError(f"{JOINER} exited while joining; see {n4.log_path}")
            doc = await self.http.try_json(n4.url + "/admin/v1/node")
            now = time.monotonic()
            watch.polls += 1
            # the time since the last poll, to what it showed then
            watch.state_s[last_state] = watch.state_s.get(last_state, 0.0) + now - last_poll
            last_poll = now
            if doc is None:
                last_state = "not answering"
            else:
                watch.first_answer = watch.first_answer or now
                watch.modes[doc["mode"]] += 1
                if doc["streaming"] and not watch.tokens_taken:
                    watch.tokens_taken = now
                last_state = range_state(doc) if doc["mode"] == "joining" else doc["mode"]
                got = sum(int(r["bytes"]) for r in doc["streaming"])
                if now - t0 - last_sample >= TIMELINE_EVERY_S:
                    last_sample = now - t0
                    watch.timeline.append((round(last_sample, 2), got))
                if doc["mode"] == "normal" and await self.ready(n4):
                    watch.normal, watch.final = now, doc
                    break
                if not args.quiet and now - last_log >= 5.0:
                    last_log = now
                    ranges = doc["streaming"]
                    log(f"  {JOINER} +{now - t0:.0f} s: {doc['mode']}, {last_state}, "
                        f"{sum(r['state'] == 'done' for r in ranges)}/{len(ranges)} ranges done, "
                        f"{got / MIB:.1f} MiB, {sum(int(r['keys']) for r in ranges):,} keys")
            if now > deadline:
                raise TimeoutError(f"{JOINER} not normal within {args.join_timeout_s:.0f} s of its start (last "
                                   f"/admin/v1/node: {None if doc is None else {k: doc[k] for k in ('mode', 'agreed')}}"
                                   f", range state {last_state}); see {n4.log_path}")
            await asyncio.sleep(POLL_S)

        async def settled() -> bool:
            for node in cluster.nodes:
                body = await self.http.try_json(node.url + "/admin/v1/ring")
                if not body or not body["agreed"] or body["joining"] \
                        or JOINER not in {m["node_id"] for m in body["nodes"]}:
                    return False
            return True

        await wait_for(settled, f"every node's ring holds {JOINER}, agreed, with no join in flight",
                       SETTLE_TIMEOUT_S, POLL_S)
        watch.settled = time.monotonic()
        return watch

    async def ready(self, node: LocalNode) -> bool:
        try:
            status, _ = await self.http.get(node.url + "/ready")
        except (aiohttp.ClientError, TimeoutError):
            return False
        return status == 200

    def join_report(self, watch: JoinWatch, received: dict[str, float], sent_before: dict[str, dict[str, float]],
                    sent_after: dict[str, dict[str, float]], expected_keys: int, live_keys: int) -> dict[str, Any]:
        assert watch.final is not None and watch.state_s is not None and watch.modes is not None
        ranges = watch.final["streaming"]
        keys = sum(int(r["keys"]) for r in ranges)
        size = sum(int(r["bytes"]) for r in ranges)
        # from its ranges appearing (tokens taken, agreement reached) to n4 normal, as polled (every POLL_S):
        # ranges are streamed several at a time, each with its own elapsed_s
        phase = max(0.0, watch.normal - watch.tokens_taken) if watch.tokens_taken and watch.normal else 0.0
        sent = {n: {"keys": int(sent_after[n]["ringkv_streaming_sent_keys_total"]
                                - sent_before[n]["ringkv_streaming_sent_keys_total"]),
                    "bytes": int(sent_after[n]["ringkv_streaming_sent_bytes_total"]
                                 - sent_before[n]["ringkv_streaming_sent_bytes_total"])} for n in sent_after}
        return {
            "seconds": round(watch.settled - watch.started, 2),
            "timeline_s": {"http_up": watch.since(watch.first_answer), "tokens_taken": watch.since(watch.tokens_taken),
                           "normal": watch.since(watch.normal), "rings_agreed": watch.since(watch.settled)},
            "stream_phase_s": round(phase, 2),
            "seen_s": {k: round(v, 2) for k, v in sorted(watch.state_s.items())},
            "ranges": len(ranges), "ranges_not_done": sum(r["state"] != "done" for r in ranges),
            "sources": dict(Counter(r["source"] for r in ranges)),
            "keys": keys, "bytes": size, "mib": mib(size),
            "mib_per_s": round(size / MIB / phase, 2) if phase > 0 else None,
            "mib_per_s_whole_join": round(size / MIB / (watch.settled - watch.started), 2),
            "verify_repaired": sum(int(r["verify_repaired"]) for r in ranges),
            "metrics": {"received_keys": int(received["ringkv_streaming_received_keys_total"]),
                        "received_bytes": int(received["ringkv_streaming_received_bytes_total"]),
                        "ranges": int(received["ringkv_streaming_ranges_total"])},
            "sent_by_source": sent,
            # what n4 streams: every loaded key it replicates, and those of the client's new keys that were
            # written before the stream reached their place (the others reached n4 as a pending replica)
            "loaded_keys_replicated_by_joiner": expected_keys,
            "client_keys_replicated_by_joiner": live_keys,
            "keys_as_expected": expected_keys <= keys <= expected_keys + live_keys,
            "modes_seen": dict(watch.modes), "polls": watch.polls,
            "bytes_timeline": watch.timeline,
        }


# -- report ---------------------------------------------------------------------------------------------------


def throttle_label(t: dict[str, Any]) -> str:
    return "off" if t["stream_mb_s"] == 0 else f"{t['stream_mb_s']:g} MiB/s"


JOIN_COLUMNS = ("throttle", "join s", "stream from s", "stream phase s", "keys streamed", "MiB streamed",
                "MiB/s", "ranges", "verify repaired")
LATENCY_COLUMNS = ("throttle", "window", "s", "requests", "ok/s", "p50 ms", "p99 ms", "max ms", "errors",
                   "dropped")


def join_rows(doc: dict[str, Any]) -> list[list[str]]:
    rows = []
    for t in doc["trials"]:
        j = t["join"]
        rows.append([throttle_label(t), f"{j['seconds']:.1f}", f"{j['timeline_s']['tokens_taken']:.1f}",
                     f"{j['stream_phase_s']:.1f}", f"{j['keys']:,}", f"{j['mib']:.1f}", f"{j['mib_per_s']}",
                     str(j["ranges"]), f"{j['verify_repaired']:,}"])
    return rows


def latency_rows(doc: dict[str, Any]) -> list[list[str]]:
    rows = []
    names = {"baseline": "before the join", "join": "during the join", "stream": "  of which streaming"}
    for t in doc["trials"]:
        for key, title in names.items():
            w = t["latency"][key]
            rows.append([throttle_label(t), title, f"{w['seconds']:.1f}", f"{w['requests']:,}",
                         f"{w['achieved_ok_per_s']}", f"{w['p50_ms']:.1f}", f"{w['p99_ms']:.1f}",
                         f"{w['max_ms']:.1f}", f"{w['errors']:,}", f"{w['dropped']:,}"])
    return rows


def text_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths, strict=True)))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(v.ljust(w) if i < 2 else v.rjust(w)
                             for i, (v, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(out)


def md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    align = "|".join("---" if i < 2 else "---:" for i in range(len(columns)))
    out = ["| " + " | ".join(columns) + " |", f"|{align}|"]
    out += ["| " + " | ".join(v.strip() for v in r) + " |" for r in rows]
    return "\n".join(out)


def describe(doc: dict[str, Any]) -> str:
    cfg, ld = doc["config"], doc["load"]
    return (f"{ld['keys']:,} keys of {cfg['value_size']} bytes ({ld['value_mib']:.0f} MiB of values) written with "
            f"w=3 to a local 3-node cluster (RF 3, durability `{cfg['durability']}`, gossip every "
            f"{cfg['gossip_interval_s']:g} s), then a 4th node joins with no --tokens and streams its ranges; once "
            f"with `--stream-mb-s 0` (unlimited) and once with `--stream-mb-s {cfg['throttle_mb_s']:g}` on every "
            f"node, each on a fresh copy of the same loaded cluster. Client load meanwhile: {cfg['rate']:g} "
            f"requests/s, open loop, {cfg['put_share']:.0%} puts of new keys (w=2) and gets of loaded keys (r=2), "
            f"to the three original nodes; latency from when each request was due. Join s: the joiner's process "
            f"start to it being normal and every node's ring agreeing; MiB/s over the stream phase (tokens taken "
            f"to the last range streamed and verified).")


def notes(doc: dict[str, Any]) -> list[str]:
    out = []
    for t in doc["trials"]:
        j, la = t["join"], t["load_average"]
        seen = j["seen_s"]
        base, during = j["cpu_ms_per_s"]["baseline"], j["cpu_ms_per_s"]["join"]
        cpu = ", ".join(f"{k} {base.get(k, '-')} → {v}" for k, v in during.items())
        out.append(f"- throttle {throttle_label(t)}: {j['keys']:,} keys streamed, the "
                   f"{j['loaded_keys_replicated_by_joiner']:,} loaded keys {JOINER} replicates and "
                   f"{j['keys'] - j['loaded_keys_replicated_by_joiner']:,} of the client's new ones (of "
                   f"{j['client_keys_replicated_by_joiner']:,} it replicates); {j['ranges']} ranges from "
                   f"{', '.join(f'{k} ({v})' for k, v in j['sources'].items())}; seen streaming "
                   f"{seen.get('streaming', 0):.1f} s, verifying {seen.get('verifying', 0):.1f} s; CPU ms/s before → "
                   f"during the join: {cpu}; load average {la['baseline_start']:g} / {la['join_start']:g} / "
                   f"{la['join_end']:g} (baseline start / join start / join end).")
    return out


def tables(doc: dict[str, Any]) -> tuple[str, str]:
    jr, lr = join_rows(doc), latency_rows(doc)
    text = "\n".join([describe(doc), "", text_table(JOIN_COLUMNS, jr), "", text_table(LATENCY_COLUMNS, lr), "",
                      *notes(doc)])
    md = "\n".join([f"## Streaming (join 3 → 4) — `{doc['command']}` (`make streaming-bench`)", "", describe(doc),
                    "", md_table(JOIN_COLUMNS, jr), "", md_table(LATENCY_COLUMNS, lr), "", *notes(doc)])
    return text, md


async def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="ringkv-streaming-bench-", dir=args.dir)
    load_before = round(os.getloadavg()[0], 2)
    started = time.monotonic()
    http = Http(args.connections)
    bench = Bench(args, root, http)
    doc: dict[str, Any] = {
        "bench": "streaming", "command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "config": {"mb": args.mb, "keys": args.keys, "value_size": args.value_size, "nodes": NODES,
                   "replication": REPLICATION, "durability": args.durability,
                   "gossip_interval_s": args.gossip_interval_s, "connections": args.connections,
                   "throttle_mb_s": args.throttle_mb_s, "rate": args.rate, "put_share": args.put_share,
                   "baseline_s": args.baseline_s, "warmup_s": args.warmup_s,
                   "request_timeout_s": args.request_timeout_s, "max_in_flight": args.max_in_flight,
                   "join_timeout_s": args.join_timeout_s, "seed": args.seed},
    }
    phases: dict[str, float] = {}
    doc["phase_seconds"] = phases
    try:
        t = time.monotonic()
        doc["load"] = await bench.load()
        phases["load"] = round(time.monotonic() - t, 1)
        doc["trials"] = []
        for name, rate in (("unthrottled", 0.0), ("throttled", args.throttle_mb_s)):
            t = time.monotonic()
            doc["trials"].append(await bench.trial(name, rate))
            phases[name] = round(time.monotonic() - t, 1)
    finally:
        await http.close()
        if args.keep_data:
            log(f"data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    doc["load_average"] = {"before": load_before, "after": round(os.getloadavg()[0], 2)}
    doc["wall_s"] = round(time.monotonic() - started, 1)
    return doc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=200.0, help="MiB of values loaded (keys = MB * 2^20 / VALUE_SIZE)")
    p.add_argument("--value-size", type=int, default=1024)
    p.add_argument("--connections", type=int, default=64, help="writes in flight during the load")
    p.add_argument("--throttle-mb-s", type=float, default=32.0,
                   help="--stream-mb-s of the throttled join (the node's default; MiB/s per receiving node)")
    p.add_argument("--rate", type=float, default=300.0, help="client requests/s during the joins (open loop)")
    p.add_argument("--put-share", type=float, default=0.5, help="fraction of the client requests that are puts")
    p.add_argument("--baseline-s", type=float, default=30.0, help="seconds of client load measured before each join")
    p.add_argument("--warmup-s", type=float, default=3.0, help="seconds of client load not measured, before that")
    p.add_argument("--request-timeout-s", type=float, default=10.0, help="timeout of one client request")
    p.add_argument("--max-in-flight", type=int, default=512, help="client requests outstanding at most (then dropped)")
    p.add_argument("--gossip-interval-s", type=float, default=1.0, help="the nodes' --gossip-interval-s")
    p.add_argument("--durability", choices=["sync", "batch", "off"], default="batch")
    p.add_argument("--join-timeout-s", type=float, default=900.0, help="the joiner's start to normal, at most")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", default=None,
                   help="where the JSON results go (default bench/results/streaming-TIME.json; '-': stdout)")
    p.add_argument("--dir", default=None, help="where the temporary data directory goes (default: system temp)")
    p.add_argument("--keep-data", action="store_true", help="keep the data directories (and the nodes' logs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or join progress lines")
    args = p.parse_args(argv)
    args.keys = round(args.mb * MIB / args.value_size) if args.value_size > 0 else 0
    if args.keys < 100 or args.value_size < 1:
        p.error("need --value-size >= 1 and --mb large enough for 100 keys")
    if args.rate <= 0 or not 0 <= args.put_share <= 1 or args.throttle_mb_s <= 0:
        p.error("need --rate > 0, 0 <= --put-share <= 1 and --throttle-mb-s > 0 (the unthrottled join always runs)")
    if args.baseline_s <= 0 or args.warmup_s < 0:
        p.error("need --baseline-s > 0 and --warmup-s >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/streaming.py" + ("" if not sys.argv[1:] else " " + shlex.join(sys.argv[1:]))
    try:
        doc = asyncio.run(run(args, command))
    finally:
        kill_everything()
    text = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"
    if args.json == "-":
        print(text, end="")
    else:
        path = args.json or os.path.join(REPO, "bench", "results", f"streaming-{time.strftime('%Y%m%d-%H%M%S')}.json")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        log(f"wrote {path}")
        plain, md = tables(doc)
        print()
        print(plain)
        print("\nMarkdown for docs/benchmarks.md:\n")
        print(md)
        print(f"\n({doc['wall_s']:.0f} s in all)")
    problems = check(doc)
    for problem in problems:
        log(f"problem: {problem}")
    return 1 if problems else 0


def check(doc: dict[str, Any]) -> list[str]:
    """What would make the figures meaningless, or is a product bug: no keys streamed, a range not done, a
    streamed key count outside what the joiner replicates, a loaded key read as not found."""
    out = []
    for t in doc["trials"]:
        j, name = t["join"], t["name"]
        if j["keys"] <= 0 or j["ranges_not_done"]:
            out.append(f"{name}: {j['keys']} keys streamed, {j['ranges_not_done']} of {j['ranges']} ranges not done")
        if not j["keys_as_expected"]:
            out.append(f"{name}: {j['keys']:,} keys streamed, but the joiner replicates "
                       f"{j['loaded_keys_replicated_by_joiner']:,} loaded keys and "
                       f"{j['client_keys_replicated_by_joiner']:,} of the client's")
        lost = t["client_outcomes"].get("get not_found", 0)
        if lost:
            out.append(f"{name}: {lost} gets of loaded keys answered 404")
    return out


if __name__ == "__main__":
    sys.exit(main())
