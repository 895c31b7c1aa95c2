"""A node's start-up in process (real engine, transport and gossip on loopback): it takes no traffic before
it has heard the ring, never gossips with itself, never allocates tokens against an empty ring, and a node
whose data directory was wiped takes back its place under a new incarnation (issue 9, defects 0, 1, 10)."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ringkv.config import NodeConfig
from ringkv.errors import NotReadyError
from ringkv.net.node import ClusterNode
from ringkv.storage.aio import AsyncEngine
from ringkv.storage.engine import EngineOptions
from ringkv.storage.wal import Durability

T = TypeVar("T")
HOST = "127.0.0.1"


def run(coro: Coroutine[Any, Any, T], limit_s: float = 30.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit_s):
            return await coro

    return asyncio.run(bounded())


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


async def until(condition: Any, what: str, timeout_s: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not condition():  # noqa: ASYNC110 -- gossip rounds offer no event to wait on
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s}s: {what}") from None


def config(root: Path, name: str, peer_port: int, seeds: list[int], **extra: Any) -> NodeConfig:
    return NodeConfig(data_dir=str(root / name), node_id=name, host=HOST, peer_port=peer_port,
                      seeds=",".join(f"{HOST}:{p}" for p in seeds), gossip_interval_s=0.05, num_tokens=4,
                      durability="sync", **extra)


@asynccontextmanager
async def started(cfg: NodeConfig, wait: bool = True) -> AsyncIterator[tuple[ClusterNode, asyncio.Task[None]]]:
    engine = await AsyncEngine.open(cfg.data_dir, EngineOptions(durability=Durability(cfg.durability)))
    node = ClusterNode(cfg, engine)
    task = asyncio.create_task(node.start())
    try:
        if wait:
            await task
        yield node, task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await node.stop()
        await engine.close()
        await node.finish()


def test_a_restarted_node_takes_no_traffic_until_it_has_heard_a_peer(tmp_path: Path) -> None:
    # Defect 0: on a restart the node served at once with a ring of only itself.
    async def main() -> None:
        a_port, b_port = free_port(), free_port()
        a_cfg = config(tmp_path, "a", a_port, [b_port], tokens="-100,100")
        b_cfg = config(tmp_path, "b", b_port, [a_port], tokens="-50,50")
        async with started(a_cfg, wait=False) as (a, a_start):
            await until(lambda: hasattr(a, "gossiper") and a.gossiper.rounds >= 5, "a gossips (to nobody)")
            assert not a_start.done() and not a.ready
            with pytest.raises(NotReadyError):
                await a.coordinator.handle_coordinate({"key": b"k", "value": b"v", "w": 1, "context": None}, "x")
            async with started(b_cfg) as (b, _):
                await asyncio.wait_for(a_start, 10)
                assert a.ready and a.coordinator.accepting
                assert sorted(a.coordinator.ring.nodes) == ["a", "b"]
                assert sorted(b.coordinator.ring.nodes) == ["a", "b"]

    run(main())


def test_a_node_never_gossips_with_itself(tmp_path: Path) -> None:
    # A seed list naming the node itself made it gossip with itself (and count that as hearing the ring).
    async def main() -> None:
        port = free_port()
        async with started(config(tmp_path, "solo", port, [port], tokens="1,2")) as (node, _):
            assert node.gossiper.seeds == []
            assert node.alone() and node.ready
            await until(lambda: node.gossiper.rounds >= 5, "a few gossip rounds")
            assert list(node.membership.members) == ["solo"]

    run(main())


@pytest.mark.slow
def test_a_first_start_with_seeds_waits_rather_than_allocate_against_an_empty_ring(tmp_path: Path) -> None:
    # Defect 10: after 10 s without a seed the node allocated tokens against an empty ring and served.
    async def main() -> None:
        dead, port = free_port(), free_port()
        async with started(config(tmp_path, "late", port, [dead]), wait=False) as (node, start):
            done, _ = await asyncio.wait([start], timeout=11.0)  # the old give-up time was 10 s
            assert not done, "the node started without ever hearing a seed"
            assert not node.ready and node.membership.local.tokens == ()

    run(main())


def test_a_wiped_node_takes_back_its_tokens_under_a_new_incarnation(tmp_path: Path) -> None:
    # Defect 1: a node wiped and restarted under its old name reissued dots its peers had already seen; and it
    # allocated new tokens against today's ring (which differs from the one it joined) instead of its own.
    async def main() -> None:
        a_port, b_port, c_port = free_port(), free_port(), free_port()
        seeds = [a_port, b_port]
        a_cfg, b_cfg, c_cfg = (config(tmp_path, n, p, seeds) for n, p in (("a", a_port), ("b", b_port),
                                                                           ("c", c_port)))
        async with started(a_cfg) as (a, _), started(b_cfg) as (b, _):
            await until(lambda: len(a.coordinator.ring) == 2, "a ring of two")
            old_tokens, old_actor, old_generation = b.membership.local.tokens, b.replica.actor, b.identity.generation
            async with started(c_cfg) as (c, _):  # the ring b would allocate against now is another one
                await until(lambda: len(a.coordinator.ring) == 3 and len(c.coordinator.ring) == 3, "three")
                await b.stop()
                shutil.rmtree(b_cfg.data_dir)  # the volume is lost; the pod comes back under its old name
                async with started(b_cfg) as (again, _):
                    assert again.membership.local.tokens == old_tokens  # its place in the ring, not a new one
                    assert again.replica.actor != old_actor  # its dots cannot repeat the old ones
                    assert again.replica.actor.startswith("b#")
                    assert again.membership.local.generation > old_generation
                    await until(lambda: a.membership.members["b"].generation == again.membership.local.generation,
                                "a takes the new generation")

    run(main())
