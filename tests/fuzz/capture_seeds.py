"""Regenerate the seed corpus of the internode fuzz tests from a real cluster's traffic.

    python -m tests.fuzz.capture_seeds          # from the repository root, venv active

Three in-process nodes (real engines, transports, gossip, coordinators, anti-entropy and streaming on
loopback, `--insecure`) form a cluster (N=2, R=W=2, small Merkle trees, no tombstone grace). Every internode
handler of every node is wrapped to record the bodies it receives; the script then drives traffic that makes
each method go over the wire: writes (`coordinate` forwards, `replicate`), reads (`read`), a hint handed to
a fallback (`store_hint`, sent as the coordinator sends it), an anti-entropy repair of a diverged key
(`aae_hashes`, `aae_leaves`, `aae_fetch`, `aae_push`), the verification of a range (`aae_prepare`,
`aae_release`), a tombstone reap (`aae_reap_check`), a range stream (`stream_range`), a pull on behalf of a
removenode (`stream_pull`, sent as removenode sends it), a `ping` and the status page's `status`; gossip runs
by itself.

The smallest few distinct bodies of each method are written to `corpus/internode/requests/` as
`seed-<method>-<n>.msgpack` (the msgpack of `[method, body]`); older `seed-*` files are replaced, every other
corpus file is left alone. The fuzz tests replay them and mutate them.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack

from ringkv.cluster import versions
from ringkv.config import NodeConfig
from ringkv.net import status
from ringkv.net.node import ClusterNode
from ringkv.net.streaming import RangeProgress
from ringkv.storage.aio import AsyncEngine
from ringkv.storage.engine import EngineOptions
from ringkv.storage.wal import Durability

HOST = "127.0.0.1"
CLUSTER = "seed-capture"
PER_METHOD = 3
MAX_BYTES = 4096  # a seed file stays small
REQUESTS = Path(__file__).resolve().parent / "corpus" / "internode" / "requests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def started(root: Path, name: str, port: int, seed: int) -> AsyncIterator[ClusterNode]:
    cfg = NodeConfig(data_dir=str(root / name), node_id=f"seed-{name}", host=HOST, peer_port=port,
                     seeds=f"{HOST}:{seed}", cluster_name=CLUSTER, gossip_interval_s=0.05, num_tokens=2,
                     durability="off", replication_factor=2, read_quorum=2, write_quorum=2, aae_tree_leaves=16,
                     tombstone_grace_s=0, insecure=True)
    engine = await AsyncEngine.open(cfg.data_dir, EngineOptions(durability=Durability.OFF))
    node = ClusterNode(cfg, engine)
    try:
        await node.start()
        yield node
    finally:
        await node.stop()
        await engine.close()
        await node.finish()


async def until(condition: Any, what: str, timeout_s: float = 20.0) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not condition():  # noqa: ASYNC110 -- gossip offers no event to wait on
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise SystemExit(f"not within {timeout_s}s: {what}") from None


def record(captured: dict[str, list[Any]], node: ClusterNode) -> None:
    for method, handler in list(node.server.handlers.items()):
        async def wrapped(body: Any, peer: str, method: str = method, handler: Any = handler) -> Any:
            captured.setdefault(method, []).append(body)
            return await handler(body, peer)

        node.server.handlers[method] = wrapped


async def capture(root: Path) -> dict[str, list[Any]]:
    captured: dict[str, list[Any]] = {}
    ports = [free_port() for _ in range(3)]
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(started(root, "a", ports[0], ports[0]))
        b = await stack.enter_async_context(started(root, "b", ports[1], ports[0]))
        c = await stack.enter_async_context(started(root, "c", ports[2], ports[0]))
        nodes = [a, b, c]
        await until(lambda: all(n.ready and len(n.coordinator.ring) == 3 for n in nodes), "a ring of three")
        for node in nodes:
            record(captured, node)
        await until(lambda: "gossip" in captured, "gossip traffic")

        for i in range(12):  # some of these are forwarded (a is not a replica of every key)
            await a.coordinator.put(b"seed-key-%d" % i, b'{"n":%d}' % i, None, None)
        for i in range(4):
            await a.coordinator.get(b"seed-key-%d" % i, None)
        key = b"seed-hinted"
        written = await a.replica.write(key, b'"hinted"', None)
        encoded = versions.encode_record(written)
        await a.coordinator.call(b.node_id, "store_hint", {"target": c.node_id, "key": key, "record": encoded})
        await a.coordinator.call(b.node_id, "ping", {})
        await status.cluster_status(a)  # `status` to every member, as the status page's poll sends it

        # a key b holds and a lacks (among a's ranges that b replicates too), and a deleted one, then a repair
        assert a.antientropy is not None and b.antientropy is not None
        shared = [r for r in b.antientropy.ranges.values() if a.node_id in r.replicas]
        lo, hi = shared[0].lo, shared[0].hi
        for i in range(500):
            k = b"seed-diverged-%d" % i
            if b.coordinator.preference(k) and set(b.coordinator.preference(k)) == {a.node_id, b.node_id}:
                await b.replica.write(k, b'"only-on-b"', None)
                break
        await a.coordinator.put(b"seed-deleted", b'"gone"', None, None)
        await a.coordinator.put(b"seed-deleted", None, None, None)
        await asyncio.sleep(0.1)
        await until(lambda: all(t.ready for t in b.trees.trees.values()), "b's trees are built")
        await until(lambda: all(t.ready for t in a.trees.trees.values()), "a's trees are built")
        op = b.antientropy.start_repair()
        assert op.task is not None
        await asyncio.gather(op.task, return_exceptions=True)
        await b.antientropy.reap_once()
        await a.antientropy.reap_once()
        await b.antientropy.verify_range(lo, hi, a.node_id)
        await b.streamer.receive(RangeProgress(lo, hi, a.node_id))
        await a.coordinator.call(b.node_id, "stream_pull", {"lo": lo, "hi": hi, "sources": [c.node_id, a.node_id]},
                                 30.0)
    return captured


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="ringkv-seeds-"))
    try:
        captured = asyncio.run(capture(root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    REQUESTS.mkdir(parents=True, exist_ok=True)
    for old in REQUESTS.glob("seed-*.msgpack"):
        old.unlink()
    for method in sorted(captured):
        packed = sorted({msgpack.packb([method, body], use_bin_type=True) for body in captured[method]},
                        key=lambda p: (len(p), p))
        kept = [p for p in packed if len(p) <= MAX_BYTES][:PER_METHOD] or packed[:1]
        for n, data in enumerate(kept, 1):
            (REQUESTS / f"seed-{method}-{n}.msgpack").write_bytes(data)
        print(f"{method}: {len(captured[method])} captured, {len(kept)} kept", file=sys.stderr)


if __name__ == "__main__":
    main()
