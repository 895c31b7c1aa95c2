"""The anti-entropy, operation and expired-hint metrics, scraped from real in-process nodes (engine, transport
and gossip on loopback; no HTTP app: the registry is scraped directly): nothing for anti-entropy until it has
started; once it runs, every figure is the node's own, read when scraped; a repair moves the counters and
verifies every range; a running operation shows in `ringkv_operations_running`."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar, cast

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ringkv.api.metrics import AntiEntropyCollector, NodeMetrics
from ringkv.config import NodeConfig
from ringkv.net.antientropy import AaeStats, AntiEntropy
from ringkv.net.node import ClusterNode
from ringkv.net.operations import Operation
from ringkv.storage.aio import AsyncEngine
from ringkv.storage.engine import EngineOptions
from ringkv.storage.wal import Durability

T = TypeVar("T")
HOST = "127.0.0.1"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def run(coro: Coroutine[Any, Any, T], limit_s: float = 60.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit_s):
            return await coro

    return asyncio.run(bounded())


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


async def until(condition: Any, what: str, timeout_s: float = 20.0) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not condition():  # noqa: ASYNC110 -- node state offers no event to wait on
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s}s: {what}") from None


@asynccontextmanager
async def started(root: Path, name: str, port: int, seeds: list[int], tokens: str) -> AsyncIterator[ClusterNode]:
    cfg = NodeConfig(data_dir=str(root / name), node_id=name, host=HOST, peer_port=port,
                     seeds=",".join(f"{HOST}:{p}" for p in seeds), gossip_interval_s=0.05, tokens=tokens,
                     durability="sync", replication_factor=2, read_quorum=1, write_quorum=1,
                     aae_tree_leaves=256)
    engine = await AsyncEngine.open(cfg.data_dir, EngineOptions(durability=Durability(cfg.durability)))
    node = ClusterNode(cfg, engine)
    try:
        await node.start()
        yield node
    finally:
        await node.stop()
        await engine.close()
        await node.finish()


@asynccontextmanager
async def three_nodes(root: Path) -> AsyncIterator[list[ClusterNode]]:
    """Three nodes, RF 2, two tokens each: several replica ranges per node, each with one peer."""
    ports = [free_port() for _ in range(3)]
    tokens = ["-6000000000000000000,1000000000000000000", "-3000000000000000000,4000000000000000000",
              "-1000000000000000000,7000000000000000000"]
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(started(root, f"n{i + 1}", port, ports[:1] if i else [], t))
                 for i, (port, t) in enumerate(zip(ports, tokens, strict=True))]
        await until(lambda: all(len(n.coordinator.ring) == 3 for n in nodes), "a ring of three everywhere")
        yield nodes


def scrape(metrics: NodeMetrics) -> Samples:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def aae_names(samples: Samples) -> set[str]:
    return {name for name, _ in samples if name.startswith("ringkv_antientropy_")}


def test_nothing_for_anti_entropy_until_it_has_started() -> None:
    assert list(AntiEntropyCollector(lambda: None).collect()) == []
    idle = cast(ClusterNode, SimpleNamespace(antientropy=None))
    assert list(AntiEntropyCollector(lambda: idle).collect()) == []


def test_anti_entropy_figures_are_the_nodes_own_read_when_scraped(tmp_path: Path) -> None:
    async def main() -> None:
        async with three_nodes(tmp_path) as nodes:
            n1 = nodes[0]
            aae = n1.antientropy
            assert isinstance(aae, AntiEntropy)
            metrics = NodeMetrics()
            metrics.cluster.node = n1
            # A repair fails where a peer is down or has no ready tree yet: wait until neither is so.
            await until(lambda: all(n.antientropy and n.antientropy.ranges and n.trees.trees
                                    and all(t.ready for t in n.trees.trees.values())
                                    and all(n.gossiper.is_up(m.node_id) for m in nodes if m is not n)
                                    for n in nodes), "every node's trees built and every node up everywhere")

            # A key written to n1's storage alone (no replication): the repair must push it to its peer.
            key = next(k for k in (f"only-n1-{i}".encode() for i in range(1000))
                       if n1.node_id in n1.coordinator.preference(k))
            await n1.replica.write(key, b'"v"', None)
            op = aae.start_repair()
            assert op.task is not None
            await op.task
            assert op.state == "done", op.error

            samples = scrape(metrics)  # no await between the scrape and the reads: the figures cannot move
            s, trees = aae.stats, n1.trees

            def value(name: str, **labels: str) -> float:
                return samples[(name, tuple(sorted(labels.items())))]

            for result in ("in_sync", "repaired", "failed", "unavailable", "skipped"):
                assert value("ringkv_antientropy_exchanges_total", result=result) == s.exchanges.get(result, 0)
            assert value("ringkv_antientropy_hashes_compared_total") == s.hashes_compared > 0
            assert value("ringkv_antientropy_keys_compared_total") == s.keys_compared
            assert value("ringkv_antientropy_keys_repaired_total", direction="pushed") == s.keys_pushed
            assert value("ringkv_antientropy_keys_repaired_total", direction="pulled") == s.keys_pulled
            assert value("ringkv_antientropy_bytes_total") == s.bytes
            # n1's repair pushed the key, or a peer's background exchange pulled it first: either way it moved.
            peers = [n for n in nodes[1:] if n.node_id in n1.coordinator.preference(key)]
            assert s.keys_pushed + sum(p.antientropy.stats.keys_pulled for p in peers if p.antientropy) >= 1
            assert value("ringkv_antientropy_tree_builds_total") == trees.builds >= len(aae.ranges)
            assert value("ringkv_antientropy_tree_build_seconds_total") == trees.build_seconds_total
            assert value("ringkv_antientropy_tree_heals_total") == trees.heals
            assert value("ringkv_antientropy_trees", state="ready") == len(aae.ranges) > 1
            assert value("ringkv_antientropy_trees", state="building") == 0
            assert value("ringkv_antientropy_tree_keys") == sum(t.tree.count for t in trees.trees.values()) >= 1
            assert value("ringkv_antientropy_tombstones") == len(trees.tombstones)
            assert value("ringkv_antientropy_tombstones_reaped_total") == s.reaped
            assert value("ringkv_antientropy_reap_checks_total") == s.reap_checks
            ages = {labels[0][1]: v for (name, labels), v in samples.items()
                    if name == "ringkv_antientropy_range_verified_age_seconds"}
            assert sorted(ages) == sorted(r.name for r in aae.ranges.values())
            assert all(0 <= age < 30 for age in ages.values())  # every range was just verified by the repair
            assert value("ringkv_antientropy_oldest_unverified_seconds") == max(ages.values())
            assert abs(max(ages.values()) - aae.oldest_unverified_s()) < 1
            assert all([(await p.replica.read(key)).versions for p in peers])  # (awaits only after the checks)

            # Every figure is read when scraped: new values show at once.
            aae.stats = AaeStats(exchanges={"failed": 7}, hashes_compared=11, keys_compared=13, keys_pulled=17,
                                 keys_pushed=19, bytes=23, reap_checks=29, reaped=31)
            n1.hints.expired = 5
            samples = scrape(metrics)
            assert value("ringkv_antientropy_exchanges_total", result="failed") == 7
            assert value("ringkv_antientropy_exchanges_total", result="in_sync") == 0
            assert (value("ringkv_antientropy_hashes_compared_total"), value("ringkv_antientropy_keys_compared_total"),
                    value("ringkv_antientropy_keys_repaired_total", direction="pulled"),
                    value("ringkv_antientropy_keys_repaired_total", direction="pushed"),
                    value("ringkv_antientropy_bytes_total"), value("ringkv_antientropy_reap_checks_total"),
                    value("ringkv_antientropy_tombstones_reaped_total")) == (11, 13, 17, 19, 23, 29, 31)
            assert value("ringkv_hints_expired_total") == 5

            # Without anti-entropy (as before it starts), its metrics vanish; the rest stay.
            n1.antientropy = None
            try:
                samples = scrape(metrics)
                assert aae_names(samples) == set()
                assert value("ringkv_hints_expired_total") == 5
                assert value("ringkv_operations_running", kind="repair") == 0
            finally:
                n1.antientropy = aae

    run(main())


def test_running_operations_are_counted_by_kind(tmp_path: Path) -> None:
    async def main() -> None:
        async with three_nodes(tmp_path) as nodes:
            n1 = nodes[0]
            metrics = NodeMetrics()
            metrics.cluster.node = n1
            release = asyncio.Event()

            async def hold(op: Operation) -> None:
                await release.wait()

            ops = [n1.operations.start("repair", {}, hold), n1.operations.start("repair", {}, hold),
                   n1.operations.start("stream", {}, hold)]
            samples = scrape(metrics)
            assert samples[("ringkv_operations_running", (("kind", "repair"),))] == 2
            assert samples[("ringkv_operations_running", (("kind", "stream"),))] == 1
            release.set()
            await asyncio.gather(*(op.task for op in ops if op.task is not None))
            samples = scrape(metrics)
            assert samples[("ringkv_operations_running", (("kind", "repair"),))] == 0
            assert ("ringkv_operations_running", (("kind", "stream"),)) not in samples

    run(main())
