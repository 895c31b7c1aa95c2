"""One cluster member: storage, replica, transport, gossip, coordinator and hint delivery, started and
stopped together.

Start-up:
1. Open the hint store; read `DATA_DIR/node.json` (`identity`): decide the incarnation (the actor of the
   dots this node issues) and the gossip generation, and persist both, marked `running`, before anything.
2. Bind the internode port; restore the last ring this node saw (`peers` in node.json) so it never places
   keys on a ring of only itself; learn its tokens (flag, else node.json, else allocate them against the
   ring seen through the seeds — re-taking the tokens the cluster remembers for this node id if its data
   directory was wiped).
3. Gossip, and wait until a peer's state map has arrived (unless the node is alone by configuration: no
   seeds but itself). Until then it coordinates nothing (`not_ready`) and does not serve HTTP (so `/ready`
   fails). A restarted node stops waiting after `ring_wait_s` (a whole-cluster restart under OrderedReady
   would otherwise wait for peers that only start after it; a one-node cluster for a second seed that does
   not exist): quorums are never lowered, so on the ring it remembers it answers 503 rather than acknowledge
   alone. A first start keeps waiting.
   A node that decommissioned (`left` in node.json) stops here: it stays out of the ring and serves nothing
   until its data directory is wiped (a kubelet restarting its container must not make it rejoin).
4. Announce `normal`, deliver hints, take traffic. A first start into a ring that has members instead joins
   with data in the background (`net/join.py`: turn, tokens, stream, verify), HTTP up meanwhile.

Shutdown: stop coordinating; stop gossip and hint delivery; let owed replication finish or keep it as hints;
close the transport, then the hint store. `finish` (after the data engine is closed) clears `running`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

from ringkv.cluster import ids, ringview, topology
from ringkv.cluster.ids import NodeId
from ringkv.cluster.membership import Membership, MemberState, Status
from ringkv.cluster.ringview import ring_from_members
from ringkv.config import NodeConfig
from ringkv.net import identity, join, status
from ringkv.net.antientropy import AaeSettings, AntiEntropy
from ringkv.net.coordinator import Coordinator, QuorumSettings
from ringkv.net.gossip import Gossiper
from ringkv.net.hints import HintStore
from ringkv.net.identity import Identity
from ringkv.net.join import WAIT_LOG_INTERVAL_S
from ringkv.net.operations import Operations
from ringkv.net.recent import RecentRequests
from ringkv.net.streaming import RangeProgress, Streamer
from ringkv.net.throttle import RateLimiter
from ringkv.net.transport import Peers, TransportServer
from ringkv.net.trees import TreeSet
from ringkv.replica import QUARANTINE_DIR, Quarantine, Replica
from ringkv.security.tls import NodeTls
from ringkv.storage.aio import AsyncEngine
from ringkv.storage.engine import EngineOptions
from ringkv.storage.wal import Durability

log = logging.getLogger("ringkv.node")

NODE_FILE = identity.FILE_NAME
TREES_FILE = os.path.join("aae", "trees.bin")
UNHEARD_ROUNDS = 10  # gossip rounds after our start before a member of the ring never heard counts as dead


class ClusterNode:
    def __init__(self, config: NodeConfig, engine: AsyncEngine,
                 on_transition: Callable[[NodeId, bool], None] = lambda n, up: None,
                 on_refused: Callable[[str, str], None] = lambda peer, reason: None,
                 tls: NodeTls | None = None, recent: RecentRequests | None = None) -> None:
        self.config = config
        self.recent = recent if recent is not None else RecentRequests()  # filled by the HTTP layer
        self.node_id = NodeId(config.effective_node_id())
        self.engine = engine
        self.replica = Replica(engine, self.node_id, renew_actor=self._renew_actor,
                               quarantine=Quarantine(os.path.join(config.data_dir, QUARANTINE_DIR)))
        self.tls = tls
        self.peers = Peers(config.cluster_name, self.node_id, tls=tls)
        self.trees = TreeSet(self.replica, total_leaves=config.aae_tree_leaves, track=config.aae_enabled)
        self.operations = Operations()
        self.antientropy: AntiEntropy | None = None
        self._aae_tracking = False
        self._on_transition = on_transition
        self._on_refused = on_refused
        self.hints: HintStore
        self.membership: Membership
        self.gossiper: Gossiper
        self.coordinator: Coordinator
        self.server: TransportServer
        self.identity: Identity
        self._identity_path = identity.path_in(config.data_dir)
        self._identity_lock = asyncio.Lock()
        self._identity_dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = False
        self.mode = "starting"  # starting | joining | normal | leaving | left | drained | stopping
        self.join_progress: list[RangeProgress] = []
        self.view_digest = ""  # of the ring and of the future ring while a change is in flight
        self.ring_conflicts: tuple[str, ...] = ()
        self.ring_rebuild_failures = 0

    # -- identity -------------------------------------------------------------------------------------

    async def _open_identity(self) -> None:
        saved = await asyncio.to_thread(identity.load, self._identity_path)
        decision = identity.decide(saved, self.node_id, self.config.durability, time.time_ns() // 1_000_000,
                                   identity.new_incarnation(), self.engine.last_seq,
                                   len(self.engine.engine.lost_tables))
        self.identity = decision.identity
        await self.persist_identity()
        self.replica.actor = ids.actor(self.node_id, self.identity.incarnation)
        if decision.new_incarnation:
            log.warning("node %s takes a new incarnation %s (%s): its new dots are %s", self.node_id,
                        self.identity.incarnation, decision.reason, self.replica.actor)
        else:
            log.info("node %s keeps incarnation %s (%s)", self.node_id, self.identity.incarnation, decision.reason)

    async def persist_identity(self, **changes: Any) -> None:
        async with self._identity_lock:
            self.identity = self.identity.with_(**changes)
            write = asyncio.ensure_future(asyncio.to_thread(identity.save, self._identity_path, self.identity))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                await write  # never leave a half-written node.json.tmp behind for the next writer
                raise

    async def _renew_actor(self, old: NodeId) -> NodeId:
        """A new incarnation, persisted before its first dot (the replica's corrupt-record path)."""
        await self.persist_identity(incarnation=identity.new_incarnation())
        return ids.actor(self.node_id, self.identity.incarnation)

    def _remember_ring(self) -> None:
        self._identity_dirty.set()

    async def _save_ring_forever(self) -> None:
        """Keep node.json's remembered ring and generation current (coalesced: one write per burst)."""
        while True:
            await self._identity_dirty.wait()
            self._identity_dirty.clear()
            peers = tuple(s.to_wire() for n, s in self.membership.members.items()
                          if n != self.node_id and s.tokens and s.status in (Status.NORMAL, Status.LEAVING))
            try:
                await self.persist_identity(peers=peers, generation=self.membership.local.generation,
                                             data_seq=self.engine.last_seq)
            except OSError as e:
                log.error("could not save %s: %s", self._identity_path, e)
            await asyncio.sleep(1.0)  # a burst of gossip changes costs one write a second at most

    async def finish(self) -> None:
        """After the data engine is closed: record the clean stop."""
        if hasattr(self, "identity"):
            await self.persist_identity(running=False, data_seq=self.engine.last_seq)

    # -- start ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        hint_engine = await AsyncEngine.open(
            os.path.join(cfg.data_dir, "hints"),
            EngineOptions(durability=Durability.SYNC, memtable_bytes=4 * 1024 * 1024, tombstone_grace_s=0),
        )
        self.hints = HintStore(hint_engine, int(cfg.hints_max_mb * 1024 * 1024), cfg.hint_window_s,
                               max_age_s=cfg.tombstone_grace_s if cfg.aae_enabled else None)
        await self.hints.load()
        await self.replica.open_layout()
        await self._open_identity()
        local = MemberState(
            node_id=self.node_id, generation=self.identity.generation, version=0, status=Status.JOINING,
            host=cfg.effective_advertise_host(), http_port=cfg.port, peer_port=cfg.peer_port, tokens=(),
            datacenter=cfg.datacenter, rack=cfg.rack, capacity=cfg.capacity,
        )
        self.membership = Membership(local)
        remembered = self._remembered_peers()
        self.membership.restore(remembered)
        self.gossiper = Gossiper(
            self.membership, self.peers, self._seeds(cfg.peer_port), cfg.gossip_interval_s, cfg.phi_threshold,
            on_members_changed=self.rebuild_ring, on_transition=self._transition,
        )
        limiter = RateLimiter(cfg.hint_delivery_mb_s * 1024 * 1024 if cfg.hint_delivery_mb_s > 0 else None)
        self.coordinator = Coordinator(
            self.node_id, self.replica, self.peers, self.hints,
            QuorumSettings(cfg.replication_factor, cfg.read_quorum, cfg.write_quorum, cfg.request_timeout_s,
                           cfg.suspect_after_s, cfg.read_repair_chance, cfg.speculative_read_ms / 1000),
            self.gossiper.is_up, self._peer_address, hints_enabled=cfg.hints_enabled,
            down_for=self.gossiper.down_for, hint_limiter=limiter, departed=self._departed,
            leaving=self._leaving,
        )
        self.coordinator.accepting = False
        self.antientropy = AntiEntropy(
            self.node_id, self.replica, self.trees, self.coordinator.call,
            AaeSettings(enabled=cfg.aae_enabled, interval_s=cfg.aae_interval_s, ranges_per_s=cfg.aae_ranges_per_s,
                        mb_s=cfg.aae_mb_s, max_keys=cfg.aae_max_keys, tombstone_grace_s=cfg.tombstone_grace_s,
                        total_leaves=cfg.aae_tree_leaves),
            self._aae_eligible, self.operations)
        aae = self.antientropy
        self.streamer = Streamer(self.replica, self.coordinator.call,
                                 RateLimiter(cfg.stream_mb_s * 1024 * 1024 if cfg.stream_mb_s > 0 else None))
        if self.identity.left:
            self._stay_left()
            return
        self.server = TransportServer(cfg.cluster_name, self.node_id, {
            "gossip": self.gossiper.handle,
            "coordinate": self.coordinator.handle_coordinate,
            "replicate": self.coordinator.handle_replicate,
            "read": self.coordinator.handle_read,
            "store_hint": self.coordinator.handle_store_hint,
            "aae_hashes": aae.handle_hashes,
            "aae_leaves": aae.handle_leaves,
            "aae_fetch": aae.handle_fetch,
            "aae_push": aae.handle_push,
            "aae_reap_check": aae.handle_reap_check,
            "aae_prepare": aae.handle_prepare,
            "aae_release": aae.handle_release,
            "stream_range": self.streamer.handle_stream_range,
            "stream_pull": functools.partial(join.handle_stream_pull, self),
            "ping": self._ping,
            "status": functools.partial(status.handle_status, self),
        }, on_refused=self._on_refused, tls=self.tls)
        peer_port = await self.server.start(cfg.host, cfg.peer_port)
        self.membership.update_local(peer_port=peer_port)
        self.gossiper.seeds = self._seeds(peer_port)
        tokens = await self._tokens()
        resuming = tokens is not None and self.identity.joining  # killed mid-join: stream it all again
        if tokens is not None and not resuming:  # a restart: back in the ring, never announced without tokens
            self.membership.update_local(tokens=tuple(tokens), status=Status.NORMAL)
        self.rebuild_ring()
        self.gossiper.announce = tokens is not None and not resuming
        self._tasks.append(asyncio.create_task(self._gossip_forever()))
        self._tasks.append(asyncio.create_task(self._save_ring_forever()))
        if tokens is None or resuming:  # a first start (or a join to finish): join through the seeds
            await self._await_seeds()
            if resuming and join.cancelled(self):
                log.warning("the join of %s was cancelled while it was down (removenode): joining afresh",
                            self.node_id)
                await self.persist_identity(tokens=(), joining=False)
                tokens, resuming = None, False
            if resuming or join.must_stream(self):
                # A join streams for as long as the data takes: it goes on in the background, so that the HTTP
                # listener comes up and shows its progress (`/ready` only once it is normal).
                self.mode = "joining"
                self._tasks.append(asyncio.create_task(join.run(self, tokens)))
                return
            tokens = await join.allocate_tokens(self, stream=False)
            self.turn_normal(tokens, replaced=None)
        else:
            await self._await_ring()
        await self.serve(tokens)

    def _stay_left(self) -> None:
        """Started on the volume of a node that decommissioned: no gossip, no internode port, no requests;
        `/health` answers, `/ready` does not, `/admin/v1/node` says `left`."""
        self.membership.update_local(status=Status.LEFT, tokens=())
        self.mode = "left"
        log.warning("node %s decommissioned earlier: it stays out of the ring and serves nothing; wipe its data "
                    "directory (%s) to start it as a new member", self.node_id, self.config.data_dir)

    def turn_normal(self, tokens: list[int], replaced: NodeId | None) -> None:
        if replaced is not None and replaced in self.membership.members:
            # In the same step as we turn normal, so every state map gossip carries has both: the replaced
            # node leaves every ring exactly when we enter it with its tokens.
            self.membership.speak_for(replaced, status=Status.LEFT, tokens=())
        self.membership.update_local(tokens=tuple(tokens), status=Status.NORMAL, replaces="")
        self.gossiper.announce = True
        self.rebuild_ring()

    async def serve(self, tokens: list[int]) -> None:
        """Normal: deliver hints, run anti-entropy, take traffic."""
        self.mode = "normal"
        self._remember_ring()
        self._tasks.append(asyncio.create_task(self._deliver_hints_forever()))
        await self._start_antientropy()
        self.coordinator.accepting = True
        self.ready = True
        log.info("node %s joined cluster %r with %d tokens (peer port %d, ring of %d nodes, actor %s)",
                 self.node_id, self.config.cluster_name, len(tokens), self.membership.local.peer_port,
                 len(self.coordinator.ring), self.replica.actor)

    async def _start_antientropy(self) -> None:
        """Trees for the ranges of the current ring: the saved ones if they are current, else built in the
        background by the anti-entropy loop (which then starts exchanging)."""
        assert self.antientropy is not None
        self._aae_tracking = True  # from now on every ring change reaches anti-entropy
        self.antientropy.set_ring(self.coordinator.ring, self.config.replication_factor)
        path = os.path.join(self.config.data_dir, TREES_FILE)
        try:
            saved = await asyncio.to_thread(self.trees.read_saved, path)
        except OSError as e:
            log.warning("could not read %s: %s", path, e)
            saved = None
        if self.engine.engine.lost_tables:
            saved = None  # the saved trees describe data that is gone: rebuild them from what is left
        taken = self.trees.install(saved, self.engine.last_seq)
        if taken:
            log.info("loaded %d anti-entropy trees saved at the last clean stop", taken)
        if self.config.aae_enabled:
            self._tasks.append(asyncio.create_task(self.antientropy.run()))

    def _leaving(self, node: NodeId) -> bool:
        state = self.membership.members.get(node)
        return node != self.node_id and state is not None and state.status == Status.LEAVING

    def _departed(self, node: NodeId) -> bool:
        state = self.membership.members.get(node)
        return state is not None and state.status == Status.LEFT

    def _aae_eligible(self, node: NodeId) -> bool:
        """Anti-entropy runs only with peers that are up and hold their data (normal or leaving)."""
        state = self.membership.members.get(node)
        return (state is not None and state.status in (Status.NORMAL, Status.LEAVING)
                and self.gossiper.is_up(node))

    def _remembered_peers(self) -> list[MemberState]:
        out = []
        for doc in self.identity.peers:
            try:
                out.append(MemberState.from_wire(doc))
            except ValueError as e:
                log.warning("ignoring a remembered peer in %s: %s", self._identity_path, e)
        return out

    def _own_addresses(self, peer_port: int) -> set[tuple[str, int]]:
        host = self.config.effective_advertise_host()
        return {(host, peer_port), (self.config.host, peer_port), ("127.0.0.1", peer_port),
                ("localhost", peer_port)}

    def _seeds(self, peer_port: int) -> list[tuple[str, int]]:
        """The configured seeds but ourselves, then the peers of the remembered ring (a node never gossips
        with itself)."""
        me = self._own_addresses(peer_port)
        seeds = [s for s in self.config.seed_addresses() if s not in me]
        remembered = [(s.host, s.peer_port) for s in self._remembered_peers()]
        return seeds + [a for a in remembered if a not in me and a not in seeds]

    def alone(self) -> bool:
        """Alone by configuration: no seeds but ourselves (and no remembered peers)."""
        return not self.gossiper.seeds

    def set_http_port(self, port: int) -> None:
        self.membership.update_local(http_port=port)

    async def _ping(self, body: Any, peer: str) -> Any:
        return {"node": self.node_id}

    def _peer_address(self, node: NodeId) -> tuple[str, int] | None:
        state = self.membership.members.get(node)
        return None if state is None else (state.host, state.peer_port)

    def _transition(self, node: NodeId, up: bool) -> None:
        self._on_transition(node, up)
        if up and self.hints.pending.get(node) and self.coordinator.accepting:
            self.coordinator.spawn(self.coordinator.deliver_hints())  # tracked: a stop waits for or cancels it

    def rebuild_ring(self) -> None:
        try:
            view = ring_from_members(self.membership.members.values())
        except ValueError as e:  # a malformed state that passed gossip's checks: keep the last ring, loudly
            self.ring_rebuild_failures += 1
            log.error("cannot build the ring from gossip (%d failures): %s", self.ring_rebuild_failures, e)
            return
        if view.conflicts and view.conflicts != self.ring_conflicts:
            for line in view.conflicts:
                log.error("ring conflict: %s", line)
        self.ring_conflicts = view.conflicts
        self.coordinator.future = view.future
        combined = view.digest if view.future is None else f"{view.digest}+{ringview.digest(view.future)}"
        if combined != self.view_digest:
            self.view_digest = combined
            self.membership.update_local(ring=combined)  # gossiped: every node can tell whether all agree
        if view.digest != self.coordinator.ring_digest:
            self.coordinator.ring = view.ring
            self.coordinator.ring_digest = view.digest
            if hasattr(self, "identity"):
                self._remember_ring()
            if self._aae_tracking and self.antientropy is not None:
                self.antientropy.set_ring(view.ring, self.config.replication_factor)

    async def _tokens(self) -> list[int] | None:
        """Our tokens when they are already decided: the flag, else those kept in `node.json`. Persisted."""
        tokens = self.config.token_list() or list(self.identity.tokens)
        if tokens and tuple(tokens) != self.identity.tokens:
            await self.persist_identity(tokens=tuple(tokens))
        return tokens or None

    def topology_in_flight(self) -> tuple[list[str], list[tuple[NodeId, int]]]:
        """Changes live members have in flight (described): their own joins and decommissions, and removals a
        live member runs for a dead one (its state announced `by` the remover); and the live join candidates
        (with us). A dead member's own change is not in flight: it is stuck until it restarts or is removed."""
        busy: list[str] = []
        candidates: list[tuple[NodeId, int]] = [(self.node_id, self.membership.local.generation)]
        for node, state in self.membership.members.items():
            if state.by and state.status == Status.LEAVING and self.gossiper.is_up(NodeId(state.by)):
                busy.append(f"{state.by} is removing {node}")
                continue
            if node == self.node_id or not self.gossiper.is_up(node):
                continue
            if state.status == Status.JOINING and state.tokens:
                busy.append(f"{node} is joining")
            elif state.status == Status.LEAVING:
                busy.append(f"{node} is leaving")
            elif state.status == Status.JOINING:
                candidates.append((node, state.generation))
        return busy, candidates

    async def await_agreement(self, limit_s: float | None = None) -> None:
        """Until every live member gossips the same view (ring and future ring) as ours, or `limit_s`. A member
        of the ring not heard since we started counts as disagreeing for `UNHEARD_ROUNDS` gossip rounds
        (`topology.views_agree`)."""
        if limit_s is None:
            limit_s = 10 * self.config.gossip_interval_s + 5.0
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.agreed():
                return
            self.gossiper.heard.clear()
            await self.wait_heard(self.config.gossip_interval_s)
        log.warning("not every member showed our view of the ring within %.0fs; streaming anyway", limit_s)

    def agreed(self) -> bool:
        peers = (topology.PeerView(s.status in (Status.NORMAL, Status.LEAVING), self.gossiper.heard_from(n),
                                   self.gossiper.is_up(n), s.ring)
                 for n, s in self.membership.members.items() if n != self.node_id)
        return topology.views_agree(peers, self.view_digest, self.gossiper.rounds >= UNHEARD_ROUNDS)

    async def _await_seeds(self) -> None:
        """Before allocating tokens, hear from a seed (unless we are alone or the founder, the first seed), so
        the ring we balance against is the real one. With seeds configured this waits as long as it takes,
        saying so every few seconds: allocating against an empty ring would put us on top of the others."""
        seeds = self.config.seed_addresses()
        me = self._own_addresses(self.membership.local.peer_port)
        if not seeds or all(seed in me for seed in seeds):
            return  # alone by configuration
        if seeds[0] in me:
            # The founder (first seed) founds the ring unless another seed already holds one: a founder
            # whose data directory was wiped must rejoin (and take its tokens back), not found a second ring.
            await self.wait_heard(3 * self.config.gossip_interval_s)
            return
        started = time.monotonic()
        while not any(s.tokens for n, s in self.membership.members.items() if n != self.node_id):
            await self.wait_heard(WAIT_LOG_INTERVAL_S)
            if not any(s.tokens for n, s in self.membership.members.items() if n != self.node_id):
                errors = "; ".join(f"{h}:{p}: {e}" for (h, p), e in list(self.gossiper.last_errors.items())[:3])
                log.warning("no seed has answered with a ring for %.0fs (seeds %s%s); still waiting before "
                            "allocating tokens", time.monotonic() - started, self.config.seeds,
                            f"; last errors: {errors}" if errors else "")
                self.gossiper.heard.clear()
        # One seed's view may lag behind another's (a node that has just joined through the other): hear every
        # seed that answers within a few rounds, so that two nodes joining one after the other do not both
        # balance against the same ring and take the same tokens. (Concurrent joins: issue 12.)
        deadline = time.monotonic() + 5 * self.config.gossip_interval_s
        while time.monotonic() < deadline and not set(self.gossiper.seeds) <= self.gossiper.answered:
            self.gossiper.heard.clear()  # set again by the next exchange absorbed
            await self.wait_heard(max(0.0, deadline - time.monotonic()))

    async def wait_heard(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self.gossiper.heard.wait()
            return True
        except TimeoutError:
            return False

    async def _await_ring(self) -> None:
        """A restart: take no traffic until a peer's view of the ring has arrived (see the module docstring)."""
        if self.alone():
            return
        started = time.monotonic()
        # Remembered peers: wait for them, up to ring_wait_s. None (tokens, but no peer with tokens in node.json,
        # which is rewritten within a second of a change): it was alone in its ring, e.g. a one-node cluster
        # whose configured second seed does not exist; it waits as long, then serves as the ring it was.
        limit = self.config.ring_wait_s
        while True:
            step = WAIT_LOG_INTERVAL_S if limit is None else max(0.0, min(WAIT_LOG_INTERVAL_S,
                                                                          started + limit - time.monotonic()))
            if await self.wait_heard(step):
                return
            waited = time.monotonic() - started
            if limit is not None and waited >= limit:
                log.warning("no peer answered within %.0fs; serving on the remembered ring of %d nodes (quorums "
                            "are not lowered: writes needing absent replicas answer 503)", waited,
                            len(self.coordinator.ring))
                return
            log.warning("no peer has answered for %.0fs (seeds %s); not taking traffic yet", waited,
                        [f"{h}:{p}" for h, p in self.gossiper.seeds])

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
        self.mode = "stopping"
        if hasattr(self, "coordinator"):
            self.coordinator.accepting = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if hasattr(self, "gossiper"):
            await self.gossiper.stop()
        if hasattr(self, "coordinator"):
            await self.coordinator.stop(min(self.config.shutdown_timeout_s,
                                            self.coordinator.settings.write_budget_s))
        await self.operations.stop()
        if hasattr(self, "server"):
            await self.server.stop()
        await self.peers.close()
        if hasattr(self, "hints"):
            await self.hints.engine.close()
        if self.antientropy is not None and not self.trees.pending_builds and self.trees.trees:
            # Nothing writes any more: the trees are current, and the next start can skip the scans.
            path = os.path.join(self.config.data_dir, TREES_FILE)
            try:
                await asyncio.to_thread(self.trees.save, path, self.engine.last_seq)
            except OSError as e:
                log.warning("could not save the anti-entropy trees to %s: %s", path, e)
