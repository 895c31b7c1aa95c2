"""One cluster member: storage, replica, transport, gossip, coordinator and hint delivery, started and
stopped together.

Start-up: open storage and hints, bind the internode port, learn our tokens (flag, else `DATA_DIR/node.json`,
else allocate them against the ring seen through the seeds and keep them there), announce ourselves as
`normal` by gossip. Shutdown: stop gossip and hint delivery, wait for background replication, close the
transport, then storage (flush + fsync).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

from ringkv.cluster import ring as ringmod
from ringkv.cluster.ids import NodeId
from ringkv.cluster.membership import Membership, MemberState, Status
from ringkv.config import NodeConfig
from ringkv.net.coordinator import Coordinator, QuorumSettings
from ringkv.net.gossip import Gossiper
from ringkv.net.hints import HintStore
from ringkv.net.transport import Peers, TransportServer
from ringkv.replica import Replica
from ringkv.storage.aio import AsyncEngine
from ringkv.storage.engine import EngineOptions
from ringkv.storage.fsutil import write_atomically
from ringkv.storage.wal import Durability

log = logging.getLogger("ringkv.node")

NODE_FILE = "node.json"


def _load_json(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    return doc if isinstance(doc, dict) else {}


class ClusterNode:
    def __init__(self, config: NodeConfig, engine: AsyncEngine,
                 on_transition: Callable[[NodeId, bool], None] = lambda n, up: None,
                 on_refused: Callable[[str], None] = lambda n: None) -> None:
        self.config = config
        self.node_id = NodeId(config.effective_node_id())
        self.engine = engine
        self.replica = Replica(engine, self.node_id)
        self.peers = Peers(config.cluster_name, self.node_id)
        self._on_transition = on_transition
        self._on_refused = on_refused
        self.hints: HintStore
        self.membership: Membership
        self.gossiper: Gossiper
        self.coordinator: Coordinator
        self.server: TransportServer
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = False

    # -- start ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        hint_engine = await AsyncEngine.open(
            os.path.join(cfg.data_dir, "hints"),
            EngineOptions(durability=Durability.SYNC, memtable_bytes=4 * 1024 * 1024, tombstone_grace_s=0),
        )
        self.hints = HintStore(hint_engine, int(cfg.hints_max_mb * 1024 * 1024), cfg.hint_window_s)
        await self.hints.load()
        local = MemberState(
            node_id=self.node_id, generation=time.time_ns() // 1_000_000, version=0, status=Status.JOINING,
            host=cfg.effective_advertise_host(), http_port=cfg.port, peer_port=cfg.peer_port, tokens=(),
            datacenter=cfg.datacenter, rack=cfg.rack, capacity=cfg.capacity,
        )
        self.membership = Membership(local)
        self.gossiper = Gossiper(
            self.membership, self.peers, cfg.seed_addresses(), cfg.gossip_interval_s, cfg.phi_threshold,
            on_members_changed=self._rebuild_ring, on_transition=self._transition,
        )
        self.coordinator = Coordinator(
            self.node_id, self.replica, self.peers, self.hints,
            QuorumSettings(cfg.replication_factor, cfg.read_quorum, cfg.write_quorum, cfg.request_timeout_s),
            self.gossiper.is_up, self._peer_address, hints_enabled=cfg.hints_enabled,
        )
        self.server = TransportServer(cfg.cluster_name, self.node_id, {
            "gossip": self.gossiper.handle,
            "coordinate": self.coordinator.handle_coordinate,
            "replicate": self.coordinator.handle_replicate,
            "read": self.coordinator.handle_read,
            "store_hint": self.coordinator.handle_store_hint,
            "ping": self._ping,
        }, on_refused=self._on_refused)
        peer_port = await self.server.start(cfg.host, cfg.peer_port)
        self.membership.update_local(peer_port=peer_port)
        tokens = await self._tokens()
        if tokens is not None:  # a restart: back in the ring at once, never announced without tokens
            self.membership.update_local(tokens=tuple(tokens), status=Status.NORMAL)
        self._tasks.append(asyncio.create_task(self._gossip_forever()))
        if tokens is None:  # a first start: join through the seeds
            tokens = await self._allocate_tokens()
            self.membership.update_local(tokens=tuple(tokens), status=Status.NORMAL)
        self._rebuild_ring()
        self._tasks.append(asyncio.create_task(self._deliver_hints_forever()))
        self.ready = True
        log.info("node %s joined cluster %r with %d tokens (peer port %d)", self.node_id, cfg.cluster_name,
                 len(tokens), peer_port)

    def set_http_port(self, port: int) -> None:
        self.membership.update_local(http_port=port)

    async def _ping(self, body: Any, peer: str) -> Any:
        return {"node": self.node_id}

    def _peer_address(self, node: NodeId) -> tuple[str, int] | None:
        state = self.membership.members.get(node)
        return None if state is None else (state.host, state.peer_port)

    def _transition(self, node: NodeId, up: bool) -> None:
        self._on_transition(node, up)
        if up and self.hints.pending.get(node):
            asyncio.get_running_loop().create_task(self.coordinator.deliver_hints())

    def _rebuild_ring(self) -> None:
        assignments = {
            ringmod.NodeInfo(s.node_id, s.datacenter, s.rack, s.capacity): s.tokens
            for s in self.membership.members.values()
            if s.tokens and s.status in (Status.NORMAL, Status.LEAVING)
        }
        try:
            self.coordinator.ring = ringmod.Ring(assignments)
        except ValueError as e:  # e.g. two nodes claiming one token: keep the last good ring
            log.error("cannot build the ring from gossip: %s", e)

    async def _tokens(self) -> list[int] | None:
        """Our tokens when they are already decided: the flag, else those kept in `node.json`. Persisted."""
        path = os.path.join(self.config.data_dir, NODE_FILE)
        saved = await asyncio.to_thread(_load_json, path)
        tokens = self.config.token_list() or [int(t) for t in saved.get("tokens") or []]
        if tokens and (saved.get("tokens") != tokens or saved.get("node_id") != self.node_id):
            await self._save_tokens(tokens)
        return tokens or None

    async def _save_tokens(self, tokens: list[int]) -> None:
        doc = json.dumps({"node_id": self.node_id, "tokens": tokens}).encode()
        await asyncio.to_thread(write_atomically, os.path.join(self.config.data_dir, NODE_FILE), doc)

    async def _allocate_tokens(self) -> list[int]:
        """A first start: balance our tokens against the ring seen through the seeds; persisted before use."""
        await self._await_seeds()
        known = {
            ringmod.NodeInfo(s.node_id, s.datacenter, s.rack, s.capacity): s.tokens
            for s in self.membership.members.values() if s.tokens and s.node_id != self.node_id
        }
        info = ringmod.NodeInfo(self.node_id, self.config.datacenter, self.config.rack, self.config.capacity)
        count = ringmod.token_count(info, self.config.num_tokens)
        tokens: list[int] = list(await asyncio.to_thread(
            ringmod.allocate_tokens, ringmod.Ring(known), info, count, replication=self.config.replication_factor))
        if not known:
            # Alone: evenly spaced tokens, rotated by our id so two founders never collide.
            offset = ringmod.token_for(self.node_id.encode()) % (2**64 // count)
            tokens = sorted((t + offset + 2**63) % 2**64 - 2**63 for t in tokens)
        log.info("allocated %d tokens against a ring of %d nodes", len(tokens), len(known))
        await self._save_tokens(tokens)
        return tokens

    async def _await_seeds(self, timeout_s: float = 10.0) -> None:
        """Before allocating tokens, hear from a seed (unless we are alone), so the ring we balance against
        is the real one."""
        me = {(self.config.effective_advertise_host(), self.membership.local.peer_port),
              ("127.0.0.1", self.membership.local.peer_port), ("localhost", self.membership.local.peer_port)}
        seeds = self.config.seed_addresses()
        if not seeds or seeds[0] in me or all(seed in me for seed in seeds):
            return  # no seeds, or we are the founder (the first seed): nobody to wait for
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(s.tokens for n, s in self.membership.members.items() if n != self.node_id):
                return
            await asyncio.sleep(0.1)
        log.warning("no seed answered within %.0fs; allocating tokens against an empty ring", timeout_s)

    # -- background loops -----------------------------------------------------------------------------

    async def _gossip_forever(self) -> None:
        await self.gossiper.run()

    async def _deliver_hints_forever(self) -> None:
        rng = random.Random()
        while True:
            await asyncio.sleep(self.config.gossip_interval_s * rng.uniform(0.8, 1.2))
            if self.config.hints_enabled and self.hints.pending:
                try:
                    await self.coordinator.deliver_hints()
                except Exception:
                    log.exception("hint delivery failed")

    # -- stop -----------------------------------------------------------------------------------------

    async def stop(self) -> None:
        self.ready = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if hasattr(self, "gossiper"):
            await self.gossiper.stop()
        if hasattr(self, "coordinator"):
            await self.coordinator.stop()
        if hasattr(self, "server"):
            await self.server.stop()
        await self.peers.close()
        if hasattr(self, "hints"):
            await self.hints.engine.close()
