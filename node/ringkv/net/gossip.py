"""Gossip: spread membership state and judge peers' liveness.

Every `interval_s` (1 s) this node bumps its heartbeat and exchanges its whole state map (push-pull) with
1-3 random peers it believes up, now and then a seed (so partitions heal and restarted nodes are found) and
now and then a peer it believes down (so recoveries are noticed even without a third party). A new version
of a peer's state, however it arrived, counts as a heartbeat of that peer for the phi accrual failure
detector (a new generation, i.e. a restart, starts a fresh history); a peer is down while its phi is over
the threshold (8). The detector's model (`PhiConfig`: first interval estimate, acceptable pause...) may be
passed in; its defaults suit the 1 s interval.

A node never gossips with itself: seeds naming its own address are dropped by the caller, and the
transport refuses a connection from a node with its own id. `heard` is set once a peer's state map has
been absorbed (the start-up waits for it before taking traffic); `down_for` says how long a peer has been
judged down without a break (hinted handoff drops hints only for targets down longer than its window).
A node that stops gracefully announces it (`announce_shutdown`: its state with `stopping`, pushed to every
live peer at once): peers judge it down on receipt, until a new generation (its restart) says otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from ringkv.cluster.failure_detector import PhiAccrualFailureDetector, PhiConfig
from ringkv.cluster.ids import NodeId
from ringkv.cluster.membership import Membership, MemberState
from ringkv.errors import RequestError
from ringkv.net.transport import SEED_PREFIX, PeerClient, Peers, RemoteError, TransportError

log = logging.getLogger("ringkv.gossip")


class Gossiper:
    def __init__(
        self,
        membership: Membership,
        peers: Peers,
        seeds: Sequence[tuple[str, int]],
        interval_s: float = 1.0,
        phi_threshold: float = 8.0,
        on_members_changed: Callable[[], None] = lambda: None,
        on_transition: Callable[[NodeId, bool], None] = lambda node, up: None,
        rng: random.Random | None = None,
        phi_config: PhiConfig | None = None,
    ) -> None:
        self.membership = membership
        self.peers = peers
        self.seeds = list(seeds)
        self.interval_s = interval_s
        self.phi_threshold = phi_threshold
        self.detector = PhiAccrualFailureDetector(phi_config)
        self._on_members_changed = on_members_changed
        self._on_transition = on_transition
        self._rng = rng or random.Random()
        self._up: dict[NodeId, bool] = {}
        self._down_since: dict[NodeId, float] = {}
        self.heard = asyncio.Event()  # a peer's state map has been absorbed
        # False: listen without telling peers about ourselves (a first start deciding its tokens: our new,
        # token-less state must not overwrite what peers remember of our previous life before we read it)
        self.announce = True  # (and while False, every round asks every seed)
        self.answered: set[tuple[str, int]] = set()  # addresses that have answered an exchange
        self.last_errors: dict[tuple[str, int], str] = {}  # address -> why its last exchange failed
        self._exchanges: set[asyncio.Task[bool]] = set()
        self.rounds = 0

    # -- liveness -------------------------------------------------------------------------------------

    def is_up(self, node: NodeId) -> bool:
        if node == self.membership.local_id:
            return True
        return self._up.get(node, False)

    def heard_from(self, node: NodeId) -> bool:
        """Whether a heartbeat of `node` has arrived since we started (the failure detector judges it)."""
        return node == self.membership.local_id or self.detector.is_monitoring(node)

    def down_for(self, node: NodeId, now: float | None = None) -> float:
        """Seconds `node` has been judged down without a break (0 while up or not yet judged)."""
        since = self._down_since.get(node)
        if since is None or self.is_up(node):
            return 0.0
        return (time.monotonic() if now is None else now) - since

    def phi(self, node: NodeId) -> float:
        if not self.detector.is_monitoring(node):
            return 0.0
        return self.detector.phi(node, time.monotonic())

    def _judge(self) -> None:
        now = time.monotonic()
        for node in self.membership.members:
            if node == self.membership.local_id or not self.detector.is_monitoring(node):
                continue
            stopping = self.membership.members[node].stopping
            up = not stopping and self.detector.is_available(node, now, self.phi_threshold)
            if self._up.get(node) != up:
                self._up[node] = up
                if up:
                    self._down_since.pop(node, None)
                else:
                    self._down_since[node] = now
                log.warning("node %s is now %s (%s)", node, "UP" if up else "DOWN",
                            "it announced its shutdown" if stopping else f"phi {self.detector.phi(node, now):.1f}")
                self._on_transition(node, up)

    # -- exchanging state -----------------------------------------------------------------------------

    def absorb(self, states: Any) -> None:
        """Merge a peer's state list; every state that was news counts as a heartbeat of its node, unless
        another node announced it on the node's behalf (`MemberState.by`)."""
        if not isinstance(states, list):
            raise ValueError("gossip body must be a list of member states")
        parsed = [MemberState.from_wire(doc) for doc in states]
        before = {n: (s.status, s.tokens, s.host, s.http_port, s.peer_port) for n, s in self.membership.members.items()}
        generations = {n: s.generation for n, s in self.membership.members.items()}
        news = self.membership.apply(parsed)
        now = time.monotonic()
        for state in news:
            if state.by:
                continue  # announced on a dead node's behalf (removenode): no sign of life of that node
            if state.generation > generations.get(state.node_id, state.generation):
                self.detector.remove(state.node_id)  # restarted: the downtime is no heartbeat interval
            self.detector.heartbeat(state.node_id, now)
        changed = any(
            before.get(s.node_id) != (s.status, s.tokens, s.host, s.http_port, s.peer_port) for s in news
        )
        if news:
            self._judge()
        if changed:
            self._on_members_changed()
        if parsed:
            self.heard.set()

    async def handle(self, body: Any, peer: str) -> Any:
        """Transport handler for `gossip`: absorb their states, answer with ours (push-pull). A malformed body
        is refused whole (`bad_request`), nothing of it absorbed."""
        try:
            self.absorb(body)
        except ValueError as e:
            raise RequestError("bad_request", str(e)) from None
        return self.membership.to_wire(self.announce)

    async def _exchange(self, client: PeerClient) -> bool:
        try:
            reply = await client.call("gossip", self.membership.to_wire(self.announce),
                                      timeout_s=max(1.0, self.interval_s))
            self.absorb(reply)
            self.answered.add((client.host, client.port))
            self.last_errors.pop((client.host, client.port), None)
            return True
        except (TransportError, RemoteError, ValueError) as e:
            log.debug("gossip with %s:%s failed: %s", client.host, client.port, e)
            if len(self.last_errors) < 256:
                self.last_errors[(client.host, client.port)] = str(e)[:300]
            return False

    def _targets(self) -> list[PeerClient]:
        local = self.membership.local_id
        members = [s for n, s in self.membership.members.items() if n != local]
        live = [s for s in members if self.is_up(s.node_id)]
        down = [s for s in members if not self.is_up(s.node_id)]
        chosen = self._rng.sample(live, min(len(live), self._rng.randint(1, 3)))
        if down and self._rng.random() < 0.5:
            chosen.append(self._rng.choice(down))
        clients = [self.peers.get(s.node_id, s.host, s.peer_port) for s in chosen]
        if self.seeds and not self.announce:
            clients.extend(self.peers.get(f"{SEED_PREFIX}{host}:{port}", host, port) for host, port in self.seeds)
        elif self.seeds and (not live or self._rng.random() < 0.25):
            host, port = self._rng.choice(self.seeds)
            clients.append(self.peers.get(f"{SEED_PREFIX}{host}:{port}", host, port))
        return clients

    async def round(self) -> None:
        self.membership.beat()
        for client in self._targets():
            task = asyncio.create_task(self._exchange(client))
            self._exchanges.add(task)
            task.add_done_callback(self._exchanges.discard)
        self._judge()
        self.rounds += 1

    async def run(self) -> None:
        while True:
            await self.round()
            await asyncio.sleep(self.interval_s * self._rng.uniform(0.9, 1.1))

    async def announce_shutdown(self, timeout_s: float = 1.0) -> int:
        """Tell every peer we believe up, at once, that we are stopping (our state with `stopping`): they judge
        us down on receipt instead of after phi rises, and route requests and hints elsewhere. Returns how many
        peers took it within `timeout_s`; the rest hear it from them by gossip, or notice by phi."""
        self.membership.update_local(stopping=True)
        local = self.membership.local_id
        targets = [self.peers.get(n, s.host, s.peer_port) for n, s in self.membership.members.items()
                   if n != local and self.is_up(n)]
        if not targets:
            return 0
        done, pending = await asyncio.wait([asyncio.ensure_future(self._exchange(c)) for c in targets],
                                           timeout=timeout_s)
        for task in pending:
            task.cancel()
        took = sum(1 for task in done if task.result())
        log.info("announced shutdown to %d of %d peers", took, len(targets))
        return took

    async def stop(self) -> None:
        for task in list(self._exchanges):
            task.cancel()
        await asyncio.gather(*self._exchanges, return_exceptions=True)
