"""Active anti-entropy on a local 3-node cluster: repairing a stale replica with the Merkle-tree exchange next to
a naive full comparison, in the same run, and the steady-state CPU cost of anti-entropy.

    python bench/antientropy.py [--keys 100000] [--value-size 1024] [--divergence 0.01] [--connections 64]
                                [--cpu-window 60] [--put-rate 300] [--cpu-aae-interval-s 10] [--skip-cpu]
                                [--durability batch|sync|off] [--json FILE | -] [--dir DIR] [--keep-data] [--quiet]
    make antientropy-bench

One cluster (3 nodes, RF 3, durability batch, hinted handoff off), everything on 127.0.0.1, data in a temporary
directory, every node stopped at the end whatever happens:

1. load: KEYS keys of VALUE_SIZE bytes, written once with w=3 (CONNECTIONS in flight, spread over the nodes).
   Anti-entropy is on with a 3600 s interval, so each node's background loop runs its first round soon after
   start and then stays quiet: the only exchanges during the measurements are the ones the bench asks for.
2. crash restart: n3 is killed (SIGKILL) and started again; it rebuilds its trees from a scan of its data
   (timed, `tree_build_seconds`), and its first background round must find every range in sync.
3. AAE: n3 is paused (SIGSTOP) until n1 and n2 see it down; DIVERGENCE of the keys are overwritten through n1
   and n2 (read, then written with the read's context, w=2: n3 is down, so the coordinators do not send it the
   write, and there are no hints); n3 resumes. Then `POST /admin/v1/repair` on n3, polled until done: wall time,
   records moved (the nodes' own counters), keys compared. The exchange protocol's other traffic (tree hashes,
   leaf key lists) is not counted by the nodes, so the bench measures it by replaying the exchange's descent
   read-only against the same two trees just before the repair (the same calls, chunking and constants as
   `ringkv.net.antientropy`), counting the msgpack frames to and from the peer (n1).
4. naive: the same divergence again on another DIVERGENCE of the keys, repaired by a full comparison run from
   the bench as an internode client: every key and record digest of n1 and of n3 listed (`aae_leaves` over
   every leaf, n1 and n3 concurrently), compared, the differing records fetched from n1 (`aae_fetch`) and
   merged into n3 (`aae_push`). Wire bytes are the msgpack frames of those calls. The node-to-node figure (what
   n3 pulling n1's list and the differing records would ship) is n1's list plus the fetches.
5. after 3 and after 4: converged when every node's root hash of every range is equal (the root is the XOR of
   every key's entry, whatever the leaf count) and each changed key's record on n3 equals n1's
   (`GET /admin/v1/local`).
6. CPU: the nodes restarted (clean stop, default gossip interval) with anti-entropy on at a CPU_AAE_INTERVAL_S
   interval, then with anti-entropy off; for each, an idle window and a window of PUT_RATE puts/s of new keys
   (open loop), CPU_WINDOW seconds each; utime+stime of each node process from /proc/PID/stat. Also measured in
   this process: the per-write cost of keeping a tree current (`TreeSet.observe`), which every node pays
   whether anti-entropy is on or off (the trees' observer is registered either way).

Why a pause and not a kill for the divergence: a restarted node's background loop runs its first round of
exchanges within seconds of start, which would race the repair (or the naive pass) being measured and repair
the same keys twice. A paused node keeps its schedule (nothing due for an hour) and its trees, and it still
misses the writes: a coordinator sends nothing to a replica its failure detector holds down. The crash restart
of step 2 measures what a kill costs anti-entropy (the tree rebuild).

Prints a table (AAE next to naive: time, bytes, ratio; CPU idle and loaded, AAE on and off) and writes every
figure to --json (default bench/results/antientropy-YYYYmmdd-HHMMSS.json; '-' for stdout only).
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
import random
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgpack
import orjson

from bench.common import Progress, machine, pick_base_port, wait_for
from ringkv import local
from ringkv.cluster import merkle
from ringkv.cluster.aae import ReplicaRange, parse_range
from ringkv.cluster.ids import NodeId
from ringkv.loadgen import keyspace
from ringkv.local import LocalCluster, LocalNode
from ringkv.net import antientropy as aae_net
from ringkv.net.transport import PeerClient
from ringkv.net.trees import TreeSet
from ringkv.replica import Change

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER_NAME = "ringkv"  # the nodes' default --cluster-name
BENCH_PEER = "bench"  # the node id this process uses on the peer ports
TREE_FANOUT = 16  # TreeSet's fanout (not a node flag); a node refuses a call naming another shape
CALL_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 30.0
LIST_LEAVES = aae_net.MAX_LEAVES  # leaves per aae_leaves call of the naive pass
LIST_MAX_KEYS = 100_000  # what a node's aae_leaves handler serves at most per call
NAIVE_CHUNK = aae_net.MAX_KEYS  # records per aae_fetch / aae_push call of the naive pass
QUIET_ARGS = ["--hints-enabled", "false", "--aae-enabled", "true", "--aae-interval-s", "3600",
              "--gossip-interval-s", "0.5"]


def log(message: str) -> None:
    print(f"antientropy: {message}", file=sys.stderr, flush=True)


def frame_bytes(obj: Any) -> int:
    """The size of one internode frame carrying `obj` (length prefix + msgpack, as `ringkv.net.transport`)."""
    return 4 + len(msgpack.packb(obj, use_bin_type=True))


def flat_list_bytes(pairs: Sequence[tuple[bytes, bytes]], chunk: int = NAIVE_CHUNK) -> int:
    """The frames of a plain listing of (key, digest) pairs, `chunk` a reply, each asked for by the last key of
    the previous one: what a naive full comparison built for the purpose would ship (no leaf numbers)."""
    total = 0
    for i in range(0, max(1, len(pairs)), chunk):
        after = pairs[i - 1][0] if i else None
        total += frame_bytes([0, 1, "list", {"after": after, "limit": chunk}])
        total += frame_bytes([1, 1, True, [[k, d] for k, d in pairs[i:i + chunk]]])
    return total


def mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


# -- the cluster ----------------------------------------------------------------------------------------------


def start_cluster(data_dir: str, durability: str, extra_args: list[str]) -> LocalCluster:
    for attempt in range(3):
        cluster = LocalCluster(data_dir, local.plan(data_dir, 3, pick_base_port(3), 3), 3, durability,
                               list(extra_args))
        try:
            for node in cluster.nodes:
                cluster.start(node)
            cluster.wait_ready(timeout_s=90)
            cluster.wait_converged(timeout_s=60)
            return cluster
        except RuntimeError as e:  # a port taken between the probe and the bind: another block
            stop_cluster(cluster)
            if attempt == 2 or "in use" not in str(e):
                raise
            shutil.rmtree(data_dir, ignore_errors=True)
    raise AssertionError("unreachable")


def stop_cluster(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        cluster.signal(node, signal.SIGCONT)  # a paused node cannot handle SIGTERM
        cluster.signal(node, signal.SIGTERM)
    for node in cluster.nodes:
        cluster.stop(node, timeout_s=30)


def restart_all(cluster: LocalCluster, extra_args: list[str]) -> None:
    """Clean stop of every node (their trees are saved), then start them all with `extra_args`."""
    for node in cluster.nodes:
        cluster.signal(node, signal.SIGTERM)
    for node in cluster.nodes:
        cluster.stop(node, timeout_s=30)
    cluster.extra_args = list(extra_args)
    for node in cluster.nodes:
        cluster.start(node)
    cluster.wait_ready(timeout_s=90)
    cluster.wait_converged(timeout_s=60)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- HTTP -----------------------------------------------------------------------------------------------------


class Http:
    def __init__(self, connections: int) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections + 16, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S), skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        await self.session.close()

    async def get(self, url: str, **params: str) -> tuple[int, Any]:
        assert url.startswith("http://127.0.0.1:"), url
        async with self.session.get(url, params=params or None) as response:
            raw = await response.read()
            return response.status, orjson.loads(raw) if raw else None

    async def post(self, url: str, body: Any = None, **params: str) -> tuple[int, Any]:
        assert url.startswith("http://127.0.0.1:"), url
        data = b"" if body is None else orjson.dumps(body)
        async with self.session.post(url, data=data, params=params or None,
                                     headers={"Content-Type": "application/json"}) as response:
            raw = await response.read()
            return response.status, orjson.loads(raw) if raw else None

    async def json(self, url: str, **params: str) -> Any:
        status, body = await self.get(url, **params)
        if status != 200:
            raise RuntimeError(f"GET {url}: {status} {body}")
        return body

    async def aae(self, node: LocalNode) -> dict[str, Any]:
        return dict(await self.json(node.url + "/admin/v1/antientropy"))

    async def local_record(self, node: LocalNode, key: str) -> dict[str, Any] | None:
        status, body = await self.get(node.url + "/admin/v1/local", key=key)
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError(f"{node.node_id} /admin/v1/local?key={key}: {status} {body}")
        return {"versions": body["versions"], "context": body["context"]}

    async def sees_down(self, observer: LocalNode, node_id: str) -> bool:
        doc = await self.json(observer.url + "/admin/v1/members")
        return any(m["node_id"] == node_id and not m["up"] for m in doc["members"])


async def put_all(http: Http, urls: Sequence[str], items: Sequence[tuple[str, str]], w: int, connections: int,
                  progress: Progress, read_first: bool = False) -> int:
    """Write every (key, value) with `w` (after a read for its context when `read_first`), `connections` in
    flight, the nodes in turn; each write is retried twice. Returns how many still failed."""
    todo = iter(enumerate(items))
    failed = done = 0

    async def one(i: int, key: str, value: str) -> None:
        url = urls[i % len(urls)]
        body: dict[str, Any] = {"key": key, "value": value}
        if read_first:
            status, doc = await http.get(url + "/api/v1/getValue", key=key)
            if status not in (200, 300):
                raise RuntimeError(f"read before overwrite: {status} {doc}")
            body["context"] = doc["context"]
        status, doc = await http.post(url + "/api/v1/put", body, w=str(w))
        if status != 200:
            raise RuntimeError(f"put: {status} {doc}")

    async def worker() -> None:
        nonlocal failed, done
        for i, (key, value) in todo:
            for attempt in range(3):
                try:
                    await one(i, key, value)
                    break
                except (RuntimeError, aiohttp.ClientError, TimeoutError) as e:
                    if attempt == 2:
                        failed += 1
                        log(f"write of {key} failed: {e}")
            done += 1
            progress.update(done)

    await asyncio.gather(*(worker() for _ in range(min(connections, max(1, len(items))))))
    progress.update(len(items))
    return failed


async def paced_puts(http: Http, urls: Sequence[str], rate: float, duration_s: float, prefix: str, value: str,
                     max_in_flight: int = 64) -> dict[str, Any]:
    """Open-loop load: one put of a new key every 1/rate s for `duration_s`, at most `max_in_flight` at once."""
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task[None]] = set()
    ok = errors = skipped = 0

    async def one(i: int) -> None:
        nonlocal ok, errors
        try:
            status, _ = await http.post(urls[i % len(urls)] + "/api/v1/put", {"key": f"{prefix}-{i}", "value": value})
            if status == 200:
                ok += 1
            else:
                errors += 1
        except (aiohttp.ClientError, TimeoutError):
            errors += 1
        finally:
            slots.release()

    start = loop.time()
    count = int(rate * duration_s)
    for i in range(count):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the open loop, not synchronisation
        if slots.locked():
            skipped += 1  # the cluster is not keeping up: the op is dropped, not queued (open loop)
            continue
        await slots.acquire()
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*list(tasks))
    elapsed = loop.time() - start
    return {"target_puts_per_s": rate, "ok": ok, "errors": errors, "dropped": skipped,
            "achieved_puts_per_s": round(ok / elapsed, 1)}


# -- the bench as an internode client -------------------------------------------------------------------------


@dataclass
class Meter:
    """Wire bytes (internode frames, both directions) and calls, by kind."""

    bytes: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, n: int) -> None:
        self.bytes[kind] = self.bytes.get(kind, 0) + n
        self.calls[kind] = self.calls.get(kind, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.bytes.values())


class Peer:
    """Internode calls to one node from this process (node id `bench`), optionally metered."""

    def __init__(self, node: LocalNode) -> None:
        self.node = node
        self.client = PeerClient(CLUSTER_NAME, BENCH_PEER, "127.0.0.1", node.peer_port, expect=node.node_id)

    async def call(self, method: str, body: Any, meter: Meter | None = None, kind: str = "") -> Any:
        reply = await self.client.call(method, body, CALL_TIMEOUT_S)
        if meter is not None:
            meter.add(kind or method, frame_bytes([0, 1, method, body]) + frame_bytes([1, 1, True, reply]))
        return reply

    async def close(self) -> None:
        await self.client.close()


def shape_body(shape: merkle.Shape) -> dict[str, int]:
    return {"lo": shape.lo, "hi": shape.hi, "leaves": shape.leaves, "fanout": shape.fanout}


def shapes_of(status: dict[str, Any]) -> dict[str, merkle.Shape]:
    """Range name -> tree shape, from a node's /admin/v1/antientropy."""
    out = {}
    for r in status["ranges"]:
        lo, hi = parse_range(r["range"])
        out[r["range"]] = merkle.Shape(lo, hi, int(r["leaves"]), TREE_FANOUT)
    return out


async def root_hash(peer: Peer, shape: merkle.Shape) -> int:
    top = len(shape.level_sizes()) - 1
    raw = await peer.call("aae_hashes", {**shape_body(shape), "level": top, "nodes": [0]})
    return int.from_bytes(raw, "big")


async def hashes(peer: Peer, shape: merkle.Shape, level: int, nodes: list[int], meter: Meter | None) -> list[int]:
    out: list[int] = []
    for i in range(0, len(nodes), aae_net.MAX_NODES):
        raw = await peer.call("aae_hashes", {**shape_body(shape), "level": level,
                                             "nodes": nodes[i:i + aae_net.MAX_NODES]}, meter, "hashes")
        out.extend(int.from_bytes(raw[j:j + merkle.HASH_BYTES], "big") for j in range(0, len(raw), merkle.HASH_BYTES))
    return out


async def leaf_digests(peer: Peer, shape: merkle.Shape, leaves: list[int], max_keys: int,
                       meter: Meter | None, kind: str) -> dict[int, dict[bytes, bytes]]:
    """{leaf: {key: digest}} of every leaf in `leaves` (the node may cover a prefix per call: asked again)."""
    out: dict[int, dict[bytes, bytes]] = {}
    todo = list(leaves)
    while todo:
        reply = await peer.call("aae_leaves", {**shape_body(shape), "ids": todo, "max_keys": max_keys}, meter, kind)
        covered = {int(leaf): {bytes(k): bytes(d) for k, d in pairs} for leaf, pairs in reply}
        if not covered:
            raise RuntimeError(f"{peer.node.node_id} covered none of {len(todo)} leaves")
        out.update(covered)
        todo = [leaf for leaf in todo if leaf not in covered]
    return out


async def replay_exchange(a: Peer, b: Peer, shape: merkle.Shape, max_keys: int) -> dict[str, Any]:
    """What an exchange started by `a` with peer `b` over one range sends over the wire, replayed read-only:
    the descent (`aae_hashes` to b, level by level, children of the differing nodes only), the differing
    leaves' keys and digests (`aae_leaves` to b, LEAF_CHUNK leaves a call) and the fetch of b's records for
    the differing keys (`aae_fetch`, KEY_CHUNK keys a call), as `AntiEntropy.exchange` does them. `a`'s own
    hashes and digests are read here with calls to `a` (the node reads them locally: not counted)."""
    meter = Meter()
    t0 = time.monotonic()
    sizes = shape.level_sizes()
    level, frontier, compared = len(sizes) - 1, [0], 0
    while True:
        theirs = await hashes(b, shape, level, frontier, meter)
        mine = await hashes(a, shape, level, frontier, None)
        compared += len(frontier)
        frontier = [i for i, x, y in zip(frontier, mine, theirs, strict=True) if x != y]
        if not frontier or level == 0:
            break
        level -= 1
        frontier = [c for i in frontier for c in range(i * shape.fanout, min((i + 1) * shape.fanout, sizes[level]))]
    differing_leaves = frontier
    t1 = time.monotonic()
    keys_compared = 0
    differing: list[tuple[bytes, bytes | None, bytes | None]] = []
    for i in range(0, len(differing_leaves), aae_net.LEAF_CHUNK):
        chunk = differing_leaves[i:i + aae_net.LEAF_CHUNK]
        theirs_d = await leaf_digests(b, shape, chunk, max(aae_net.KEY_CHUNK, max_keys), meter, "leaves")
        mine_d = await leaf_digests(a, shape, chunk, LIST_MAX_KEYS, None, "")
        for leaf in chunk:
            x, y = mine_d.get(leaf, {}), theirs_d.get(leaf, {})
            keys_compared += len(x.keys() | y.keys())
            differing.extend((k, x.get(k), y.get(k)) for k in merkle.differing_keys(x, y))
    t2 = time.monotonic()
    fetch = [k for k, _, theirs_digest in differing if theirs_digest is not None]
    record_bytes = 0
    for i in range(0, len(fetch), aae_net.KEY_CHUNK):
        reply = await b.call("aae_fetch", {"keys": fetch[i:i + aae_net.KEY_CHUNK]}, meter, "fetch")
        record_bytes += sum(len(r) for r in reply if isinstance(r, bytes))
    return {"hashes_compared": compared, "leaves_compared": len(differing_leaves), "keys_compared": keys_compared,
            "differing_keys": sorted(k.decode() for k, _, _ in differing), "fetched_record_bytes": record_bytes,
            "wire_bytes": dict(meter.bytes), "calls": dict(meter.calls),
            "seconds": {"descent": round(t1 - t0, 3), "leaves": round(t2 - t1, 3),
                        "fetch": round(time.monotonic() - t2, 3)}}


# -- status helpers -------------------------------------------------------------------------------------------


COUNTERS = ("keys_compared", "keys_pulled", "keys_pushed", "bytes", "tree_builds", "tree_heals")


def counters(status: dict[str, Any]) -> dict[str, int]:
    out = {name: int(status[name]) for name in COUNTERS}
    out["exchanges"] = sum(int(v) for v in status["exchanges"].values())
    return out


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def trees_ready(status: dict[str, Any]) -> bool:
    return bool(status["ranges"]) and all(r["tree"] == "ready" for r in status["ranges"])


def round_done(status: dict[str, Any]) -> bool:
    """Every range's tree ready and compared with every other replica since the node started."""
    return trees_ready(status) and all(v is not None for r in status["ranges"] for v in r["peers"].values())


class Bench:
    def __init__(self, args: argparse.Namespace, cluster: LocalCluster, http: Http) -> None:
        self.args = args
        self.cluster = cluster
        self.http = http
        self.n1, self.n2, self.n3 = cluster.nodes
        self.peers = {n.node_id: Peer(n) for n in cluster.nodes}
        self.urls = [n.url for n in cluster.nodes]
        self.rng = random.Random(args.seed)
        self.value = keyspace.make_value(args.value_size, args.seed)
        self.keys = [f"aae{i:09d}" for i in range(args.keys)]
        count = max(1, round(args.keys * args.divergence))
        picked = self.rng.sample(self.keys, 2 * count)
        self.stale_sets = (sorted(picked[:count]), sorted(picked[count:]))

    async def close(self) -> None:
        for peer in self.peers.values():
            await peer.close()

    async def statuses(self) -> dict[str, dict[str, Any]]:
        docs = await asyncio.gather(*(self.http.aae(n) for n in self.cluster.nodes))
        return {n.node_id: d for n, d in zip(self.cluster.nodes, docs, strict=True)}

    async def all_counters(self) -> dict[str, dict[str, int]]:
        return {nid: counters(s) for nid, s in (await self.statuses()).items()}

    async def wait_rounds_done(self, nodes: Iterable[LocalNode], timeout_s: float) -> None:
        for node in nodes:
            async def done(node: LocalNode = node) -> bool:
                return round_done(await self.http.aae(node))
            await wait_for(done, f"{node.node_id}'s trees are ready and its first round is done", timeout_s, 0.2)

    # -- 1. load --------------------------------------------------------------------------------------------

    async def load(self) -> dict[str, Any]:
        log(f"writing {len(self.keys):,} keys of {self.args.value_size} bytes with w=3, "
            f"{self.args.connections} in flight")
        started = time.monotonic()
        failed = await put_all(self.http, self.urls, [(k, self.value) for k in self.keys], 3, self.args.connections,
                               Progress("load (w=3)", len(self.keys), not self.args.quiet))
        seconds = time.monotonic() - started
        if failed:
            raise RuntimeError(f"{failed} writes of the initial load failed")
        log(f"loaded in {seconds:.1f} s ({len(self.keys) / seconds:,.0f} puts/s)")
        await self.wait_rounds_done(self.cluster.nodes, 60)
        return {"keys": len(self.keys), "seconds": round(seconds, 2), "puts_per_s": round(len(self.keys) / seconds, 1)}

    # -- 2. crash restart -----------------------------------------------------------------------------------

    async def crash_restart(self) -> dict[str, Any]:
        n3 = self.n3
        log("crash restart: SIGKILL n3, start it again, time its tree rebuild")
        await asyncio.to_thread(self.cluster.kill, n3)
        started = time.monotonic()
        await asyncio.to_thread(self.cluster.start, n3)
        await asyncio.to_thread(self.cluster.wait_ready, [n3], 120)
        ready_s = time.monotonic() - started

        async def built() -> dict[str, Any] | None:
            status = await self.http.aae(n3)
            return status if trees_ready(status) else None

        status = await wait_for(built, "n3 rebuilt its trees", 600, 0.05)
        trees_s = time.monotonic() - started
        await asyncio.to_thread(self.cluster.wait_converged, 60)
        await self.wait_rounds_done([n3], 60)
        after = await self.http.aae(n3)
        c = counters(after)
        log(f"n3 ready after {ready_s:.1f} s, trees rebuilt over {sum(r['keys'] for r in status['ranges']):,} keys "
            f"in {status['tree_build_seconds']:.2f} s; first round: {after['exchanges']}")
        return {"ready_s": round(ready_s, 2), "trees_ready_s": round(trees_s, 2),
                "tree_build_seconds": status["tree_build_seconds"], "tree_builds": status["tree_builds"],
                "tree_keys": sum(r["keys"] for r in status["ranges"]), "first_round_exchanges": after["exchanges"],
                "first_round_keys_repaired": c["keys_pulled"] + c["keys_pushed"]}

    # -- divergence ---------------------------------------------------------------------------------------------

    async def diverge(self, stale: list[str], label: str) -> dict[str, Any]:
        """Pause n3 until n1 and n2 hold it down, overwrite `stale` through them (w=2), resume n3."""
        n3 = self.n3
        started = time.monotonic()
        self.cluster.signal(n3, signal.SIGSTOP)
        try:
            async def held_down() -> bool:
                return all(await asyncio.gather(*(self.http.sees_down(o, n3.node_id) for o in (self.n1, self.n2))))
            await wait_for(held_down, "n1 and n2 see n3 down", 60, 0.1)
            down_s = time.monotonic() - started
            value = keyspace.make_value(self.args.value_size, self.args.seed + 1 + len(label))
            failed = await put_all(self.http, [self.n1.url, self.n2.url], [(k, value) for k in stale], 2,
                                   min(self.args.connections, 32), Progress(f"overwrite ({label}, w=2)", len(stale),
                                                                            not self.args.quiet), read_first=True)
            if failed:
                raise RuntimeError(f"{failed} overwrites failed")
        finally:
            self.cluster.signal(n3, signal.SIGCONT)
        await asyncio.to_thread(self.cluster.wait_converged, 60)
        return {"keys": len(stale), "detected_down_s": round(down_s, 2),
                "paused_s": round(time.monotonic() - started, 2)}

    async def converged(self, stale: list[str]) -> dict[str, Any]:
        """Root hashes of every range equal on every node, and n3's record of every key in `stale` equal to n1's."""
        statuses = await self.statuses()
        roots: dict[str, dict[str, str]] = {}
        for node in self.cluster.nodes:
            shapes = shapes_of(statuses[node.node_id])
            roots[node.node_id] = {name: f"{await root_hash(self.peers[node.node_id], s):032x}"
                                   for name, s in shapes.items()}
        names = set().union(*(r.keys() for r in roots.values()))
        roots_equal = all(len({roots[n].get(name) for n in roots}) == 1 for name in names)
        slots = asyncio.Semaphore(32)
        mismatched: list[str] = []

        async def check(key: str) -> None:
            async with slots:
                a, b = await asyncio.gather(self.http.local_record(self.n3, key), self.http.local_record(self.n1, key))
                if a != b or a is None:
                    mismatched.append(key)

        await asyncio.gather(*(check(k) for k in stale))
        return {"roots_equal": roots_equal, "records_checked": len(stale), "records_differing": len(mismatched),
                "ok": roots_equal and not mismatched}

    # -- 3. anti-entropy ------------------------------------------------------------------------------------

    async def aae(self) -> dict[str, Any]:
        stale = self.stale_sets[0]
        log(f"AAE: {len(stale):,} keys go stale on n3 (paused), then POST /admin/v1/repair on n3")
        divergence = await self.diverge(stale, "AAE")
        status3 = await self.http.aae(self.n3)
        replays = []
        for r_name, r_shape in shapes_of(status3).items():
            first = sorted(p for p in next(r for r in status3["ranges"] if r["range"] == r_name)["peers"])[0]
            replays.append(await replay_exchange(self.peers["n3"], self.peers[first], r_shape,
                                                 self.args.aae_max_keys))
        found = sorted({k for r in replays for k in r["differing_keys"]})
        before = await self.all_counters()
        started = time.monotonic()
        status, op = await self.http.post(self.n3.url + "/admin/v1/repair")
        if status != 202:
            raise RuntimeError(f"POST /admin/v1/repair: {status} {op}")

        async def finished() -> dict[str, Any] | None:
            doc = await self.http.json(f"{self.n3.url}/admin/v1/repair/{op['id']}")
            return doc if doc["state"] != "running" else None

        op = await wait_for(finished, "the repair on n3 is done", 600, 0.05)
        seconds = time.monotonic() - started
        after = await self.all_counters()
        moved = {nid: delta(after[nid], before[nid]) for nid in after}
        # the pairs the repair found in sync (every pair but the first of each range): one root call each
        in_sync = Meter()
        for r_name, r_shape in shapes_of(status3).items():
            peers = sorted(next(r for r in status3["ranges"] if r["range"] == r_name)["peers"])
            for peer in peers[1:]:
                await replay_in_sync(self.peers["n3"], self.peers[peer], r_shape, in_sync)
        check = await self.converged(stale)
        wire = {"hashes": sum(r["wire_bytes"].get("hashes", 0) for r in replays),
                "leaves": sum(r["wire_bytes"].get("leaves", 0) for r in replays),
                "fetch": sum(r["wire_bytes"].get("fetch", 0) for r in replays),
                "push": max(0, sum(m["bytes"] for m in moved.values())
                            - sum(r["fetched_record_bytes"] for r in replays)),
                "in_sync_checks": in_sync.total}
        wire["total"] = sum(wire.values())
        total = {k: sum(m[k] for m in moved.values()) for k in ("keys_compared", "keys_pulled", "keys_pushed",
                                                                 "bytes", "exchanges")}
        others = {nid: m["exchanges"] for nid, m in moved.items() if nid != "n3" and m["exchanges"]}
        if others:
            log(f"warning: exchanges started by other nodes during the repair: {others}")
        log(f"AAE repair: {seconds:.2f} s, {total['keys_pulled']:,} records pulled / {total['keys_pushed']:,} pushed "
            f"({mib(total['bytes'])} of records), {mib(wire['total'])} on the wire; converged: {check['ok']}")
        return {"divergence": divergence, "stale_keys": len(stale), "differing_found": len(found),
                "differing_match": found == stale, "seconds": round(seconds, 3),
                "repair": {"elapsed_s": op["elapsed_s"], "state": op["state"], "error": op["error"],
                           "progress": op["progress"]},
                "counters": total, "counters_by_node": moved, "other_nodes_exchanges": others,
                "hashes_compared": sum(r["hashes_compared"] for r in replays),
                "leaves_compared": sum(r["leaves_compared"] for r in replays),
                "replay_keys_compared": sum(r["keys_compared"] for r in replays),
                "record_bytes": total["bytes"], "wire_bytes": wire,
                "calls": {k: sum(r["calls"].get(k, 0) for r in replays) for k in ("hashes", "leaves", "fetch")},
                "replay_seconds": {k: round(sum(r["seconds"][k] for r in replays), 3)
                                   for k in ("descent", "leaves", "fetch")},
                "converged": check}

    # -- 4. naive -------------------------------------------------------------------------------------------

    async def naive(self) -> dict[str, Any]:
        stale = self.stale_sets[1]
        log(f"naive: {len(stale):,} keys go stale on n3 (paused), then a full comparison from the bench")
        divergence = await self.diverge(stale, "naive")
        statuses = await self.statuses()
        before = await self.all_counters()
        src, dst = self.peers["n1"], self.peers["n3"]
        meter = Meter()
        started = time.monotonic()

        async def listing(peer: Peer, kind: str) -> dict[bytes, bytes]:
            out: dict[bytes, bytes] = {}  # in ring order (leaf by leaf)
            for shape in shapes_of(statuses[peer.node.node_id]).values():
                if self.n3.node_id not in next(r for r in statuses[peer.node.node_id]["ranges"]
                                               if r["range"] == f"{shape.lo}:{shape.hi}")["replicas"]:
                    continue
                for i in range(0, shape.leaves, LIST_LEAVES):
                    leaves = await leaf_digests(peer, shape, list(range(i, min(i + LIST_LEAVES, shape.leaves))),
                                                LIST_MAX_KEYS, meter, kind)
                    for digests in leaves.values():
                        out.update(digests)
            return out

        theirs, mine = await asyncio.gather(listing(src, "list_n1"), listing(dst, "list_n3"))
        listed_s = time.monotonic() - started
        differing = sorted(k for k, d in theirs.items() if mine.get(k) != d)
        missing_on_n1 = sum(1 for k in mine if k not in theirs)
        record_bytes = 0
        fetch_s = push_s = 0.0
        for i in range(0, len(differing), NAIVE_CHUNK):
            chunk = differing[i:i + NAIVE_CHUNK]
            t0 = time.monotonic()
            records = await src.call("aae_fetch", {"keys": chunk}, meter, "fetch")
            push = [[k, r] for k, r in zip(chunk, records, strict=True) if isinstance(r, bytes)]
            record_bytes += sum(len(r) for _, r in push)
            t1 = time.monotonic()
            await dst.call("aae_push", {"records": push}, meter, "push")  # n3 merges them one by one
            fetch_s, push_s = fetch_s + t1 - t0, push_s + time.monotonic() - t1
        seconds = time.monotonic() - started
        after = await self.all_counters()
        check = await self.converged(stale)
        found = sorted(k.decode() for k in differing)
        flat = {"list_n1": flat_list_bytes(list(theirs.items())), "list_n3": flat_list_bytes(list(mine.items()))}
        wire: dict[str, Any] = {**meter.bytes, "total": meter.total, "flat_lists": flat,
                "node_to_node": flat["list_n1"] + meter.bytes.get("fetch", 0),
                "bench_flat": flat["list_n1"] + flat["list_n3"] + meter.bytes.get("fetch", 0)
                + meter.bytes.get("push", 0)}
        background = {nid: delta(after[nid], before[nid])["exchanges"] for nid in after}
        log(f"naive repair: {seconds:.2f} s ({listed_s:.2f} s listing {len(theirs):,} + {len(mine):,} keys), "
            f"{len(differing):,} records moved, {mib(meter.total)} on the wire through aae_leaves "
            f"({mib(wire['node_to_node'])} node to node with a flat key list); converged: {check['ok']}")
        return {"divergence": divergence, "stale_keys": len(stale), "differing_found": len(found),
                "differing_match": found == stale, "missing_on_n1": missing_on_n1, "seconds": round(seconds, 3),
                "listing_s": round(listed_s, 3), "fetch_s": round(fetch_s, 3), "push_s": round(push_s, 3),
                "merge_ms_per_record": round(push_s * 1000 / max(1, len(differing)), 2),
                "keys_listed": {"n1": len(theirs), "n3": len(mine)},
                "records_moved": len(differing), "record_bytes": record_bytes, "wire_bytes": wire,
                "calls": dict(meter.calls), "background_exchanges": background, "converged": check}

    # -- 6. CPU -----------------------------------------------------------------------------------------------

    async def cpu(self) -> dict[str, Any]:
        args = self.args
        rows = []
        settings = [("on", ["--hints-enabled", "false", "--aae-enabled", "true",
                            "--aae-interval-s", f"{args.cpu_aae_interval_s:g}"]),
                    ("off", ["--hints-enabled", "false", "--aae-enabled", "false"])]
        for aae_state, extra in settings:
            log(f"CPU: restarting the nodes with anti-entropy {aae_state} ({' '.join(extra)})")
            started = time.monotonic()
            await asyncio.to_thread(restart_all, self.cluster, extra)
            for peer in self.peers.values():
                await peer.close()  # their connections died with the nodes; the next call reconnects
            restart: dict[str, Any] = {"seconds": round(time.monotonic() - started, 2)}
            if aae_state == "on":
                await self.wait_rounds_done(self.cluster.nodes, 120)
                st = await self.statuses()
                restart["tree_builds"] = {nid: s["tree_builds"] for nid, s in st.items()}  # 0: loaded from trees.bin
            for load in ("idle", "loaded"):
                before = await self.all_counters()
                cpu0 = {n.node_id: cpu_seconds(n.pid) for n in self.cluster.nodes}
                t0 = time.monotonic()
                traffic: dict[str, Any] = {}
                if load == "idle":
                    await asyncio.sleep(args.cpu_window)  # the measuring window
                else:
                    traffic = await paced_puts(self.http, self.urls, args.put_rate, args.cpu_window,
                                               f"cpu-{aae_state}", self.value)
                wall = time.monotonic() - t0
                cpu1 = {n.node_id: cpu_seconds(n.pid) for n in self.cluster.nodes}
                after = await self.all_counters()
                per_node = {nid: round((cpu1[nid] - cpu0[nid]) * 1000 / wall, 1) for nid in cpu1}
                moved = {k: sum(delta(after[n], before[n])[k] for n in after)
                         for k in ("exchanges", "keys_compared", "keys_pulled", "keys_pushed", "bytes")}
                row = {"aae": aae_state, "load": load, "window_s": round(wall, 2), "cpu_ms_per_s": per_node,
                       "mean_cpu_ms_per_s": round(sum(per_node.values()) / len(per_node), 1), "aae_activity": moved,
                       **({"traffic": traffic} if traffic else {}), "restart": restart}
                rows.append(row)
                log(f"CPU aae {aae_state}, {load}: {row['mean_cpu_ms_per_s']} ms/s per node {per_node}; "
                    f"exchanges {moved['exchanges']}, keys repaired {moved['keys_pulled'] + moved['keys_pushed']}"
                    + (f"; {traffic['achieved_puts_per_s']} puts/s" if traffic else ""))
        return {"window_s": args.cpu_window, "put_rate": args.put_rate, "aae_interval_s": args.cpu_aae_interval_s,
                "rows": rows, "tree_update_us_per_write": tree_update_cost(args.value_size)}


async def replay_in_sync(a: Peer, b: Peer, shape: merkle.Shape, meter: Meter) -> None:
    """An exchange of two trees already equal: one root call to the peer."""
    top = len(shape.level_sizes()) - 1
    ours = await hashes(a, shape, top, [0], None)
    theirs = await hashes(b, shape, top, [0], meter)
    if ours != theirs:
        log(f"warning: {a.node.node_id} and {b.node.node_id} still differ after the repair")


def tree_update_cost(value_size: int, n: int = 20_000) -> float:
    """Microseconds a node spends per local change keeping its tree current (`TreeSet.observe`: both records'
    digests, the leaf's entry, the path to the root), measured here on a whole-ring tree of 65,536 leaves."""

    class NoReplica:
        observers: list[Callable[[Change], None]] = []

    trees = TreeSet(NoReplica())  # type: ignore[arg-type]
    trees.set_ranges([ReplicaRange(0, 0, (NodeId("n1"), NodeId("n2"), NodeId("n3")))])
    rng = random.Random(7)
    old, new = rng.randbytes(value_size + 100), rng.randbytes(value_size + 100)
    changes = [Change(b"key%09d" % i, old, new, i + 1) for i in range(n)]
    started = time.perf_counter()
    for change in changes:
        trees.observe(change)
    return round((time.perf_counter() - started) * 1e6 / n, 2)


# -- report ---------------------------------------------------------------------------------------------------


def compare(a: dict[str, Any], n: dict[str, Any]) -> dict[str, Any]:
    """naive / AAE: time, wire bytes (node to node, and as the bench ran it), and the bytes beyond the records
    themselves (what the comparison costs: AAE's hashes and leaf lists, the naive pass's key list)."""
    aae_bytes, naive_bytes = a["wire_bytes"]["total"], n["wire_bytes"]["node_to_node"]
    aae_overhead = aae_bytes - a["record_bytes"]
    naive_overhead = naive_bytes - n["record_bytes"]
    return {"time_ratio": ratio(n["seconds"], a["seconds"]),
            "bytes_ratio_node_to_node": ratio(naive_bytes, aae_bytes),
            "bytes_ratio_bench": ratio(n["wire_bytes"]["bench_flat"], aae_bytes),
            "aae_comparison_bytes": aae_overhead, "naive_comparison_bytes": naive_overhead,
            "comparison_bytes_ratio": ratio(naive_overhead, aae_overhead)}


def table(doc: dict[str, Any]) -> str:
    a, n, c = doc["aae"], doc["naive"], doc["comparison"]
    cfg = doc["config"]
    aw, nw = a["wire_bytes"], n["wire_bytes"]
    lines = [f"Repair of n3 after {a['stale_keys']:,} of {cfg['keys']:,} keys ({cfg['divergence']:.1%}) went stale "
             f"on it ({cfg['value_size']}-byte values, 3 nodes, RF 3):", "",
             "| repair | time s | wire bytes | of which records | records moved | keys compared |",
             "|---|---:|---:|---:|---:|---:|",
             f"| AAE (POST /admin/v1/repair on n3) | {a['seconds']:.2f} | {mib(aw['total'])} | "
             f"{mib(a['record_bytes'])} | {a['counters']['keys_pulled'] + a['counters']['keys_pushed']:,} | "
             f"{a['counters']['keys_compared']:,} |",
             f"| naive (all n1's keys+digests shipped, then the differing records) | {n['seconds']:.2f} | "
             f"{mib(nw['node_to_node'])} | {mib(n['record_bytes'])} | {n['records_moved']:,} | "
             f"{n['keys_listed']['n1']:,} |",
             f"| naive / AAE | {c['time_ratio']}x | {c['bytes_ratio_node_to_node']}x | | | |", "",
             f"Bytes beyond the records: AAE {mib(c['aae_comparison_bytes'])} (hashes {mib(aw['hashes'])} for "
             f"{a['hashes_compared']:,} tree nodes, leaf key lists {mib(aw['leaves'])} for {a['leaves_compared']:,} "
             f"leaves, in-sync checks {mib(aw['in_sync_checks'])}, framing), naive {mib(c['naive_comparison_bytes'])}: "
             f"{c['comparison_bytes_ratio']}x. The naive pass as the bench ran it (both lists, fetch and push) "
             f"shipped {mib(nw['bench_flat'])} as flat lists, {mib(nw['total'])} through aae_leaves. "
             f"Converged: AAE {a['converged']['ok']}, naive {n['converged']['ok']}.", "",
             f"Where the naive pass's time went: listing {n['listing_s']:.2f} s, fetching {n['fetch_s']:.2f} s, "
             f"n3 merging the records {n['push_s']:.2f} s ({n['merge_ms_per_record']} ms each). The AAE exchange "
             f"replayed read-only: descent {a['replay_seconds']['descent']:.2f} s, leaves "
             f"{a['replay_seconds']['leaves']:.2f} s, fetch {a['replay_seconds']['fetch']:.2f} s.", ""]
    if doc.get("crash_restart"):
        cr = doc["crash_restart"]
        lines += [f"Crash restart of n3: ready after {cr['ready_s']:.1f} s, trees rebuilt over {cr['tree_keys']:,} "
                  f"keys in {cr['tree_build_seconds']:.2f} s (status tree_build_seconds).", ""]
    if "cpu" not in doc:
        return "\n".join(lines)
    cpu = doc["cpu"]
    by = {(r["aae"], r["load"]): r for r in cpu["rows"]}
    lines += [f"CPU, ms per second per node (mean of n1-n3; {cpu['window_s']:g} s windows; AAE interval "
              f"{cpu['aae_interval_s']:g} s when on):", "",
              f"| AAE | idle | {cpu['put_rate']:g} puts/s |", "|---|---:|---:|"]
    for state in ("on", "off"):
        idle, loaded = by.get((state, "idle")), by.get((state, "loaded"))
        lines.append(f"| {state} | {idle['mean_cpu_ms_per_s'] if idle else '-'} | "
                     f"{loaded['mean_cpu_ms_per_s'] if loaded else '-'} |")
    lines += ["", "Tree upkeep per local write (TreeSet.observe, in this process): "
                  f"{cpu['tree_update_us_per_write']} µs"]
    return "\n".join(lines)


async def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="ringkv-aae-bench-", dir=args.dir)
    data_dir = os.path.join(root, "cluster")
    load_before = round(os.getloadavg()[0], 2)
    started = time.monotonic()
    node_args = [*QUIET_ARGS, "--aae-max-keys", str(args.aae_max_keys)]
    log(f"starting 3 nodes (RF 3, durability {args.durability}, {' '.join(node_args)}), data in {data_dir}")
    cluster = await asyncio.to_thread(start_cluster, data_dir, args.durability, node_args)
    http = Http(args.connections)
    bench = Bench(args, cluster, http)
    doc: dict[str, Any] = {
        "bench": "antientropy", "command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "config": {"keys": args.keys, "value_size": args.value_size, "divergence": args.divergence,
                   "stale_keys": len(bench.stale_sets[0]), "nodes": 3, "replication": 3,
                   "durability": args.durability, "node_args": node_args, "connections": args.connections,
                   "cpu_window_s": args.cpu_window, "put_rate": args.put_rate,
                   "cpu_aae_interval_s": args.cpu_aae_interval_s, "seed": args.seed},
    }
    phases: dict[str, float] = {}
    doc["phase_seconds"] = phases

    async def phase(name: str, step: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        t0 = time.monotonic()
        doc[name] = await step()
        phases[name] = round(time.monotonic() - t0, 1)

    try:
        phases["start"] = round(time.monotonic() - started, 1)
        await phase("load", bench.load)
        await phase("crash_restart", bench.crash_restart)
        await phase("aae", bench.aae)
        await phase("naive", bench.naive)
        doc["comparison"] = compare(doc["aae"], doc["naive"])
        if not args.skip_cpu:
            await phase("cpu", bench.cpu)
    finally:
        await bench.close()
        await http.close()
        log("stopping the cluster")
        await asyncio.to_thread(stop_cluster, cluster)
        if args.keep_data:
            log(f"data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    doc["load_average"] = {"before": load_before, "after": round(os.getloadavg()[0], 2)}
    doc["wall_s"] = round(time.monotonic() - started, 1)
    return doc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--value-size", type=int, default=1024)
    p.add_argument("--divergence", type=float, default=0.01, help="fraction of the keys made stale on n3, per pass")
    p.add_argument("--connections", type=int, default=64, help="writes in flight during the load")
    p.add_argument("--durability", choices=["sync", "batch", "off"], default="batch")
    p.add_argument("--aae-max-keys", type=int, default=10_000, help="the nodes' --aae-max-keys (their default)")
    p.add_argument("--cpu-window", type=float, default=60.0, help="seconds per CPU window (four windows)")
    p.add_argument("--put-rate", type=float, default=300.0, help="puts/s of the loaded CPU windows")
    p.add_argument("--cpu-aae-interval-s", type=float, default=10.0, help="--aae-interval-s of the CPU windows")
    p.add_argument("--skip-cpu", action="store_true", help="no CPU windows (the repairs only)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", default=None,
                   help="where the JSON results go (default bench/results/antientropy-TIME.json; '-': stdout)")
    p.add_argument("--dir", default=None, help="where the temporary data directory goes (default: system temp)")
    p.add_argument("--keep-data", action="store_true", help="keep the data directory (and the nodes' logs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.keys < 100 or not 0 < args.divergence <= 0.25:
        p.error("need --keys >= 100 and 0 < --divergence <= 0.25")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/antientropy.py" + ("" if not sys.argv[1:] else " " + shlex.join(sys.argv[1:]))
    doc = asyncio.run(run(args, command))
    text = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"
    if args.json == "-":
        print(text, end="")
    else:
        path = args.json or os.path.join(REPO, "bench", "results", f"antientropy-{time.strftime('%Y%m%d-%H%M%S')}.json")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        log(f"wrote {path}")
        print()
        print(table(doc))
        print(f"\n({doc['wall_s']:.0f} s in all)")
    ok = doc["aae"]["converged"]["ok"] and doc["naive"]["converged"]["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
