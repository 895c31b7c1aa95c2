"""The coordinator: turns one client request into replica requests and quorum decisions.

Writes: a replica of the key coordinates: the node that received the request when it is one, else the first
healthy replica in preference-list order, to which it forwards the request (Dynamo has the first live node
coordinate; letting any replica do it costs at most N actors in a key's context and saves most forwards and
every wait on a sick first replica). "Healthy" is up by gossip and not *silent*: a peer whose oldest call in
flight has waited `suspect_after_s` (0.3 s) with nothing heard from it since is tried last, so a paused or
cut-off node stops receiving forwards long before the failure detector convicts it. The coordinator applies
the write to its own record (creating the new version from its local state and the request's context), then
sends the resulting record to the other replicas, which merge
it. A replica that is down, or that fails, is replaced by the next healthy node past the preference list,
which stores the record as a durable hint for it (sloppy quorum: hints count toward W). With no such node
free, the coordinator keeps the hint itself (delivered just the same, but not counted toward W). No hint is
taken for a target down longer than the hint window. With hints disabled (`--hints-enabled false`) a failed
replica is simply missed. The answer comes after W durable acknowledgements; the rest go on in the
background, and a stopping node finishes them within its drain deadline or keeps them as hints.

While a topology change is in flight (a node joining with pending tokens, one leaving), a write also goes
to the *pending* replicas — those that will replicate its key once the change is done but do not yet — and
the coordinator waits for one more acknowledgement per pending replica (W + P of the N + P targets, as
Cassandra does), so the write is on W replicas of the future ring as well. Reads use the current ring.

Quorums are never lowered: W (or R) is what the client asked for, or the default; when the ring cannot offer
that many replicas the answer is 503 `quorum_unavailable`, never a smaller quorum.

Forwarding is at most once: a forwarded write goes to the next replica only when the previous one certainly
did not act on it (no connection, or it answered `not_replica`/`not_ready`). A forward that may have been
delivered and then timed out is answered 503 (the write may or may not have been applied), never sent to
a second coordinator, which would apply it again as a separate sibling. Deadlines nest: the coordinator
waits at most `write_budget_s` for W (the budget travels with the request), and the forwarder waits that plus
one request timeout, so a slow quorum is a 503 from the coordinator, not a timeout at the forwarder.

A node coordinates only once it has heard the ring (`accepting`), and only keys it is a replica of in its own
view: a forwarded write for another key is refused with `not_replica`. Internode requests carry the sender's
ring digest; a mismatch is counted and logged (the views have diverged, usually briefly during gossip).

Reads: any node coordinates. It asks R of the preference list's replicas (itself first when it is one, then
the healthy ones in ring order; `quorum.read_plan`), and one more whenever an answer fails or R answers have
not come within `speculate_after_s` (50 ms: speculative retry); a sampled `read_repair_chance` (10%) of reads
asks all N. It answers after R replies with their merge (value or siblings), and in the background waits for
the stragglers and sends the merged record to every replica asked and found stale (read repair). Asking R,
not N, saves a read one internode round trip and one replica read in three at N=3, R=2.

Note: with a sloppy quorum R + W > N no longer guarantees that a read sees the latest write (a hint
holder is not read); anti-entropy and hinted handoff close the gap. That is Dynamo's trade-off.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ringkv.cluster import topology, versions
from ringkv.cluster.ids import NodeId
from ringkv.cluster.quorum import ReadTally, WriteTally, read_plan
from ringkv.cluster.ring import Ring, token_for
from ringkv.cluster.versions import Record, VersionVector
from ringkv.errors import (
    NotReadyError,
    NotReplicaError,
    QuorumUnavailableError,
    RequestError,
    RingkvError,
    ShuttingDownError,
)
from ringkv.net import wire
from ringkv.net.hints import Hint, HintStore, deliver_pending, drop_for_downtime
from ringkv.net.throttle import RateLimiter
from ringkv.net.transport import NotDeliveredError, PeerClient, Peers, RemoteError, TransportError
from ringkv.replica import Replica

log = logging.getLogger("ringkv.coordinator")

# A forwarded write refused with one of these was certainly not applied: try the next replica.
NOT_APPLIED_CODES = frozenset({NotReplicaError.code, NotReadyError.code, ShuttingDownError.code})
MISMATCH_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True)
class QuorumSettings:
    replication: int = 3
    read_quorum: int = 2
    write_quorum: int = 2
    timeout_s: float = 2.0  # one replica request
    suspect_after_s: float = 0.3  # a peer silent this long with a call waiting is tried last
    read_repair_chance: float = 0.1  # share of reads that ask every replica, not R (background read repair)
    speculate_after_s: float = 0.05  # a read without R answers by then asks one more replica (0: never)

    @property
    def write_budget_s(self) -> float:
        """How long a coordinator waits for W: a replica request, then a hinted fallback's."""
        return 2 * self.timeout_s


@dataclass
class CoordinatorStats:
    forwarded: int = 0
    forward_retries: int = 0
    read_repairs: int = 0
    speculative_reads: int = 0  # spares asked because R answers were late
    read_retries: int = 0  # spares asked because an answer failed
    hints_sent_to_fallbacks: int = 0
    hints_kept_locally: int = 0
    hints_refused_past_window: int = 0
    hints_kept_at_shutdown: int = 0
    quorum_failures: int = 0
    not_replica_refusals: int = 0
    ring_mismatches: int = 0


@dataclass(eq=False)
class _Owed:
    """Replication still owed for one write: the replicas that have neither acknowledged nor got a hint."""

    key: bytes
    encoded: bytes
    targets: set[NodeId] = field(default_factory=set)


@dataclass(eq=False)
class _Replication:
    """One write's replication in progress: who has settled, and the fallbacks its failed replicas share."""

    owed: _Owed
    preference: tuple[NodeId, ...]
    settle: Callable[[NodeId, bool], None] | None
    remaining: int
    on_done: Callable[[_Owed], None]  # every target settled: nothing more is owed (not called on a stop)
    fallbacks: list[NodeId] | None = None  # walked only when a replica fails (rarely)

    def settled(self, node: NodeId, ok: bool) -> None:
        if self.settle is not None:
            self.settle(node, ok)
        self.remaining -= 1
        if self.remaining == 0:
            self.on_done(self.owed)


class Coordinator:
    def __init__(
        self,
        node_id: NodeId,
        replica: Replica,
        peers: Peers,
        hints: HintStore,
        settings: QuorumSettings,
        is_up: Callable[[NodeId], bool],
        address_of: Callable[[NodeId], tuple[str, int] | None],
        hints_enabled: bool = True,
        down_for: Callable[[NodeId], float] = lambda node: 0.0,
        hint_limiter: RateLimiter | None = None,
        departed: Callable[[NodeId], bool] = lambda node: False,
        leaving: Callable[[NodeId], bool] = lambda node: False,
    ) -> None:
        self.node_id = node_id
        self.replica = replica
        self.peers = peers
        self.hints = hints
        self.settings = settings
        self.is_up = is_up
        self.down_for = down_for  # seconds a peer has been judged down without a break
        self.address_of = address_of
        self.hints_enabled = hints_enabled  # False: a failed replica gets no hint (and no stand-in counts)
        self.hint_limiter = hint_limiter
        self.departed = departed  # whether a node has left the ring (decommissioned): its hints are redirected
        self.leaving = leaving  # whether a node is leaving: its hints wait until it has left
        self.ring = Ring()
        self.ring_digest = ""  # of `ring`, sent on internode requests; "" = unknown
        self.future: Ring | None = None  # the ring once the topology change in flight is done (None: none)
        self.accepting = True  # False until the node has heard the ring, and again while it stops
        self.draining = False  # drained (`net/drain.py`): no client request is coordinated here any more
        self.in_flight = 0  # client requests being coordinated here
        self.stats = CoordinatorStats()
        self._background: set[asyncio.Future[Any]] = set()  # tasks, and replication answers awaited
        self._owed: set[_Owed] = set()
        self._writes: set[asyncio.Task[Any]] = set()  # coordinate_write calls in flight
        self._delivering = asyncio.Lock()  # one delivery pass at a time, or a hint is sent and removed twice
        self._last_mismatch_log = 0.0
        self._rng = random.Random()  # which reads ask every replica (`read_repair_chance`)

    # -- placement ------------------------------------------------------------------------------------

    def preference(self, key: bytes) -> tuple[NodeId, ...]:
        if not len(self.ring):  # no ring yet: nobody to ask (503), not an internal error
            return ()
        return self.ring.preference_list(token_for(key), self.settings.replication)

    def pending(self, key: bytes) -> tuple[NodeId, ...]:
        """The nodes that will replicate `key` once the topology change in flight is done, but do not yet."""
        if self.future is None or not len(self.ring):
            return ()
        return topology.pending_for(self.ring, self.future, token_for(key), self.settings.replication)

    def silent(self, node: NodeId) -> bool:
        """Up by gossip but not answering lately: tried after the others (see the module docstring)."""
        return node != self.node_id and self.peers.silent_for(node) > self.settings.suspect_after_s

    def healthy_first(self, nodes: list[NodeId]) -> list[NodeId]:
        """`nodes` that are up, the silent ones last (stable: ring order otherwise)."""
        up = [n for n in nodes if self.is_up(n)]
        silent = [n for n in up if self.silent(n)]
        return up if not silent else [n for n in up if n not in silent] + silent

    def fallbacks(self, key: bytes, preference: tuple[NodeId, ...]) -> list[NodeId]:
        """Healthy nodes past the preference list, in ring order, silent ones last (sloppy-quorum stand-ins)."""
        extended = self.ring.extended_preference_list(token_for(key), len(self.ring), self.settings.replication)
        return self.healthy_first([n for n in extended if n not in preference])

    def quorum(self, requested: int | None, default: int, name: str) -> int:
        """The quorum to reach: what was asked (or the default), never less."""
        value = default if requested is None else requested
        if not 1 <= value <= self.settings.replication:
            raise RequestError("invalid_quorum", f"{name} must be between 1 and {self.settings.replication}")
        return value

    def _client(self, node: NodeId) -> PeerClient:
        address = self.address_of(node)
        if address is None:
            raise NotDeliveredError(f"no address known for node {node}")
        return self.peers.get(node, *address)

    async def call(self, node: NodeId, method: str, body: dict[str, Any], timeout_s: float | None = None) -> Any:
        body["ring"] = self.ring_digest
        return await self._client(node).call(method, body, timeout_s or self.settings.timeout_s)

    def check_ring(self, body: Any, peer: str) -> None:
        """Count (and now and then log) a request sent under another view of the ring."""
        theirs = body.get("ring") if isinstance(body, dict) else None
        if not isinstance(theirs, str) or not theirs or not self.ring_digest or theirs == self.ring_digest:
            return
        theirs = theirs[:80]
        self.stats.ring_mismatches += 1
        now = time.monotonic()
        if now - self._last_mismatch_log >= MISMATCH_LOG_INTERVAL_S:
            self._last_mismatch_log = now
            log.warning("%s sent a request under ring %s; ours is %s (%d mismatches so far)", peer, theirs,
                        self.ring_digest, self.stats.ring_mismatches)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- writes ---------------------------------------------------------------------------------------

    async def put(self, key: bytes, value: bytes | None, context: VersionVector | None, w: int | None) -> Record:
        """A client write (value None = delete). Returns the coordinator's resulting record."""
        if not self.accepting or self.draining:
            raise NotReadyError(f"{self.node_id} is not taking writes (starting, draining or stopping)")
        self.in_flight += 1
        try:
            return await self._put(key, value, context, w)
        finally:
            self.in_flight -= 1

    async def _put(self, key: bytes, value: bytes | None, context: VersionVector | None, w: int | None) -> Record:
        w_required = self.quorum(w, self.settings.write_quorum, "w")
        preference = self.preference(key)
        if len(preference) < w_required:
            self.stats.quorum_failures += 1
            raise QuorumUnavailableError(w_required, 0)
        budget_s = self.settings.write_budget_s
        if self.node_id in preference:
            return await self.coordinate_write(key, value, context, w_required, preference, budget_s)
        for node in self.healthy_first(list(preference)):
            self.stats.forwarded += 1
            try:
                reply = await self.call(node, "coordinate", {
                    "key": key, "value": value, "w": w_required, "budget_ms": int(budget_s * 1000),
                    "context": None if context is None else versions.encode_context(context),
                }, timeout_s=budget_s + self.settings.timeout_s)
            except NotDeliveredError as e:
                log.info("could not forward a write to %s (%s); trying the next replica", node, e)
            except RemoteError as e:
                if e.code in NOT_APPLIED_CODES:
                    log.info("%s did not take a forwarded write (%s); trying the next replica", node, e.code)
                elif e.code == QuorumUnavailableError.code:
                    self.stats.quorum_failures += 1
                    acked = e.details().get("acknowledged")
                    raise QuorumUnavailableError(w_required, acked if type(acked) is int else 0) from None
                else:
                    raise
            except TransportError as e:
                # It may have been applied: sending it to another coordinator would apply it twice.
                log.info("a write forwarded to %s may or may not have been applied: %s", node, e)
                self.stats.quorum_failures += 1
                raise QuorumUnavailableError(w_required, 0) from None
            else:
                try:
                    return _reply_record(reply, node, "coordinate")
                except RingkvError as e:  # taken, but answered with no record we can read: as good as lost
                    log.warning("a write forwarded to %s was answered with a bad record: %s", node, e)
                    self.stats.quorum_failures += 1
                    raise QuorumUnavailableError(w_required, 0) from None
            self.stats.forward_retries += 1
        self.stats.quorum_failures += 1
        raise QuorumUnavailableError(w_required, 0)

    async def handle_coordinate(self, body: Any, peer: str) -> Any:
        """Internode: another node forwarded a client write to us."""
        if not self.accepting or self.draining:
            raise NotReadyError(f"{self.node_id} is not taking writes (starting, draining or stopping)")
        body = wire.fields(body, "coordinate")
        key = wire.key(body)
        if "value" not in body or "context" not in body:  # never a delete or a blind put by omission
            raise wire.bad("coordinate needs key, value, w and context")
        value, token = body["value"], body["context"]
        if value is not None and not (isinstance(value, bytes) and 0 < len(value) <= wire.MAX_VALUE_BYTES):
            raise wire.bad(f"value must be nil (a delete) or bin of 1 to {wire.MAX_VALUE_BYTES} bytes")
        w = body.get("w")
        if type(w) is not int:
            raise RequestError("invalid_quorum", "w must be an integer")
        w = self.quorum(w, self.settings.write_quorum, "w")
        if token is not None and not isinstance(token, str):
            raise wire.bad("context must be nil or the string a read returned")
        context = None if token is None else versions.decode_context(token)
        budget_ms = wire.duration_ms(body, "budget_ms")  # absent from a sender that predates budgets: our own
        self.check_ring(body, peer)
        preference = self.preference(key)
        if self.node_id not in preference:
            self.stats.not_replica_refusals += 1
            raise NotReplicaError(f"{self.node_id} is not a replica of the key (preference {list(preference)})")
        budget_s = self.settings.write_budget_s if budget_ms is None else \
            min(self.settings.write_budget_s, budget_ms / 1000)
        record = await self.coordinate_write(key, value, context, w, preference, budget_s)
        return versions.encode_record(record)

    async def coordinate_write(self, key: bytes, value: bytes | None, context: VersionVector | None,
                               w_required: int, preference: tuple[NodeId, ...], budget_s: float) -> Record:
        """Apply the write locally (the first acknowledgement; `self` is in `preference`) and replicate it;
        returns once W replicas acknowledged, or raises 503 when `budget_s` runs out first."""
        deadline = asyncio.get_running_loop().time() + budget_s
        if len(preference) < w_required:
            self.stats.quorum_failures += 1
            raise QuorumUnavailableError(w_required, 0)
        task = asyncio.current_task()
        assert task is not None
        self._writes.add(task)  # `stop` waits for writes in flight before it settles what is owed
        try:
            return await self._coordinate(key, value, context, w_required, preference, deadline)
        finally:
            self._writes.discard(task)

    async def _coordinate(self, key: bytes, value: bytes | None, context: VersionVector | None,
                          w_required: int, preference: tuple[NodeId, ...], deadline: float) -> Record:
        ring, future = self.ring, self.future  # what `preference` was taken from (no await since)
        record = await self.replica.write(key, value, context)  # local, durable: the first ack
        encoded = versions.encode_record(record)
        # Targets from the ring as it is *now* too: it may have changed while the local write was awaited (a
        # joiner turned normal, a leaver left). The write goes to the preference list it was taken for, the
        # current one and the pending replicas (a topology change in flight: the future ones), one more ack
        # per node added, so that W of them are replicas of every ring in play (W + P, as Cassandra's).
        if self.ring is ring and self.future is future:  # unchanged (the usual case): only pending replicas
            extra = self.pending(key)
        else:
            extra = tuple(n for n in dict.fromkeys(self.preference(key) + self.pending(key)) if n not in preference)
        if extra:
            preference, w_required = preference + extra, w_required + len(extra)
        # Owed from this moment (not from when the background task first runs): a stop that cancels the task
        # before it starts still keeps the write as hints.
        owed = _Owed(key, encoded, {n for n in preference if n != self.node_id})
        self._owed.add(owed)
        tally = WriteTally(required=w_required, asked=len(preference))
        tally.ack(self.node_id)
        if tally.succeeded:
            self._replicate(owed, preference, None)
            return record
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(node: NodeId, ok: bool) -> None:
            (tally.ack if ok else tally.fail)(node)
            if (tally.succeeded or tally.impossible) and not done.done():
                done.set_result(None)

        self._replicate(owed, preference, settle)
        timer = loop.call_at(deadline, _settle_at_deadline, done)  # cheaper than a timeout context per write
        try:
            await done
        finally:
            timer.cancel()
        if len(tally.acked) < tally.required:  # re-read: acks arrive while we wait
            self.stats.quorum_failures += 1
            raise QuorumUnavailableError(w_required, len(tally.acked))
        return record

    def _replicate(self, owed: _Owed, preference: tuple[NodeId, ...],
                   settle: Callable[[NodeId, bool], None] | None) -> None:
        """Send the record to every other replica. A connected peer gets it straight from here (a future and
        a callback each, no task: the usual case); any other, and any that fails, goes through
        `_replicate_rest`, where a failed replica is replaced by a hinted fallback."""
        targets = [n for n in preference if n != self.node_id]
        if not targets:
            self._owed.discard(owed)
            return
        progress = _Replication(owed, preference, settle, len(targets), self._owed.discard)
        body = {"key": owed.key, "record": owed.encoded, "ring": self.ring_digest}
        slow = []
        for node in targets:
            future = self._request(node, "replicate", body) if self.is_up(node) else None
            if future is None:
                slow.append(node)
                continue
            self._background.add(future)
            future.add_done_callback(functools.partial(self._replicated, progress, node))
        if slow:
            self.spawn(self._replicate_rest(progress, slow))

    def _request(self, node: NodeId, method: str, body: dict[str, Any]) -> asyncio.Future[Any] | None:
        """`PeerClient.request` to `node` (None when that needs a coroutine: not connected, no address)."""
        address = self.address_of(node)
        if address is None:
            return None
        try:
            return self.peers.get(node, *address).request(method, body, self.settings.timeout_s)
        except NotDeliveredError:
            return None

    def _replicated(self, progress: _Replication, node: NodeId, future: asyncio.Future[Any]) -> None:
        self._background.discard(future)
        if future.cancelled():
            return  # stopping: what is still owed is kept as hints
        error = future.exception()
        if error is None:
            progress.owed.targets.discard(node)
            progress.settled(node, True)
        else:
            log.info("replicating to %s failed: %s", node, error)
            self.spawn(self._replicate_rest(progress, [node], tried=True))

    async def _replicate_rest(self, progress: _Replication, nodes: list[NodeId], tried: bool = False) -> None:
        """Replicate to `nodes` (already tried once and failed, when `tried`), each replaced by a hinted
        fallback if it fails."""
        owed, preference = progress.owed, progress.preference
        key, encoded = owed.key, owed.encoded

        async def one(node: NodeId) -> None:
            ok = False
            if not tried and self.is_up(node):
                try:
                    await self.call(node, "replicate", {"key": key, "record": encoded})
                    ok = True
                    owed.targets.discard(node)
                except (TransportError, RemoteError) as e:
                    log.info("replicating to %s failed: %s", node, e)
            if not ok and self.hints_enabled:
                if progress.fallbacks is None:  # shared: two failed replicas get two stand-ins
                    progress.fallbacks = self.fallbacks(key, preference)
                ok = await self._hint(node, key, encoded, progress.fallbacks)
                owed.targets.discard(node)
            elif not ok:
                owed.targets.discard(node)  # hints disabled: nothing is owed by design
            progress.settled(node, ok)

        await asyncio.gather(*(one(n) for n in nodes))

    async def _hint(self, target: NodeId, key: bytes, encoded: bytes, fallbacks: list[NodeId]) -> bool:
        """Hand the record to a fallback node as a hint for `target`. True if that counts toward W."""
        if not self.hints.accepts(self.down_for(target)):
            self.stats.hints_refused_past_window += 1  # down past the window: anti-entropy repairs it
            return False
        while fallbacks:
            stand_in = fallbacks.pop(0)
            try:
                await self.call(stand_in, "store_hint", {"target": target, "key": key, "record": encoded})
                self.stats.hints_sent_to_fallbacks += 1
                return True
            except (TransportError, RemoteError, RingkvError) as e:
                log.info("fallback %s could not take a hint for %s: %s", stand_in, target, e)
        try:  # nobody outside the preference list is free: keep it ourselves (not counted toward W)
            await self.hints.store(target, key, encoded)
            self.stats.hints_kept_locally += 1
        except RingkvError as e:
            log.warning("could not keep a hint for %s: %s", target, e)
        return False

    async def handle_replicate(self, body: Any, peer: str) -> Any:
        body = wire.fields(body, "replicate")
        key = wire.key(body)
        _, record = wire.record(body)
        self.check_ring(body, peer)
        await self.replica.merge_in(key, record)
        return True

    async def handle_store_hint(self, body: Any, peer: str) -> Any:
        """Internode: keep a hint for `target` (we are a sloppy-quorum stand-in). The record must decode: a
        hint that never could be delivered would sit in the store, counted against its bound, until then."""
        body = wire.fields(body, "store_hint")
        target = wire.node_id(body.get("target"), "target")
        key = wire.key(body)
        encoded, _ = wire.record(body)
        await self.hints.store(target, key, encoded)
        return True

    # -- reads ----------------------------------------------------------------------------------------

    async def get(self, key: bytes, r: int | None) -> Record:
        """A client read at `r` (the configured read quorum when None)."""
        if self.draining:
            raise NotReadyError(f"{self.node_id} is drained: it takes no client requests")
        self.in_flight += 1
        try:
            return await self._get(key, r)
        finally:
            self.in_flight -= 1

    async def _get(self, key: bytes, r: int | None) -> Record:
        r_required = self.quorum(r, self.settings.read_quorum, "r")
        preference = self.preference(key)
        tally = ReadTally(required=r_required, asked=len(preference))
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if tally.impossible:
            self.stats.quorum_failures += 1
            raise QuorumUnavailableError(r_required, 0, "read")
        everyone = self.settings.read_repair_chance > 0 and self._rng.random() < self.settings.read_repair_chance
        first, spares = read_plan(self.healthy_first(list(preference)) +
                                  [n for n in preference if not self.is_up(n)], self.node_id, r_required, everyone)
        asks: list[asyncio.Task[None]] = []
        timer: asyncio.TimerHandle | None = None

        def ask_spare(retry: bool = False) -> None:
            """One more replica: an answer failed (`retry`), or R answers are late (speculative retry)."""
            nonlocal timer
            if spares and not done.done():
                asks.append(asyncio.create_task(ask(spares.pop(0))))
                if retry:
                    self.stats.read_retries += 1
                else:
                    self.stats.speculative_reads += 1
            if spares and not done.done() and self.settings.speculate_after_s > 0 and not retry:
                timer = loop.call_later(self.settings.speculate_after_s, ask_spare)

        async def ask(node: NodeId) -> None:
            try:
                if node == self.node_id:
                    record = await self.replica.read(key)
                elif not self.is_up(node):
                    raise TransportError(f"{node} is down")
                else:
                    record = _reply_record(await self.call(node, "read", {"key": key}), node, "read")
                tally.reply(node, record)
            except (TransportError, RemoteError, RingkvError) as e:
                log.debug("read from %s failed: %s", node, e)
                tally.fail(node)
                ask_spare(retry=True)
            if (tally.succeeded or tally.impossible) and not done.done():
                done.set_result(None)

        asks.extend(asyncio.create_task(ask(n)) for n in first)
        if spares and self.settings.speculate_after_s > 0:
            timer = loop.call_later(self.settings.speculate_after_s, ask_spare)
        deadline = loop.call_later(self.settings.timeout_s, _settle_at_deadline, done)
        try:
            await done
        finally:
            deadline.cancel()
            if timer is not None:
                timer.cancel()
        if not tally.succeeded:
            self.stats.quorum_failures += 1
            for task in asks:
                task.cancel()
            raise QuorumUnavailableError(r_required, len(tally.replies), "read")
        merged = tally.merged()
        if len(asks) > 1 and (len(tally.replies) + len(tally.failed) < len(asks) or tally.stale(merged)):
            self.spawn(self._read_repair(key, asks, tally))  # answers to come, or a stale one to repair now
        return merged

    async def _read_repair(self, key: bytes, asks: list[asyncio.Task[None]], tally: ReadTally) -> None:
        await asyncio.wait(asks, timeout=self.settings.timeout_s)
        merged = tally.merged()
        stale = tally.stale(merged)
        if not stale:
            return
        encoded = versions.encode_record(merged)
        for node in stale:
            self.stats.read_repairs += 1
            try:
                if node == self.node_id:
                    await self.replica.merge_in(key, merged)
                else:
                    await self.call(node, "replicate", {"key": key, "record": encoded})
            except (TransportError, RemoteError, RingkvError) as e:
                log.info("read repair of %s on %s failed: %s", key, node, e)

    async def handle_read(self, body: Any, peer: str) -> Any:
        body = wire.fields(body, "read")
        key = wire.key(body)
        self.check_ring(body, peer)
        return versions.encode_record(await self.replica.read(key))

    # -- hinted handoff -------------------------------------------------------------------------------

    async def deliver_hints(self) -> int:
        """Deliver every pending hint to its target when the target is up (continuously, until none are
        left, within the byte-rate limit); drop the hints of targets down longer than the hint window.
        Returns how many were delivered."""
        async with self._delivering:  # every per-target delivery ends before the lock is released
            results = await asyncio.gather(*(self._deliver_to(t) for t in list(self.hints.pending)),
                                           return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.error("hint delivery failed: %r", result)
        return sum(r for r in results if isinstance(r, int))

    async def _deliver_to(self, target: NodeId) -> int:
        if target == self.node_id:  # a hint for ourselves (the ring moved while it waited): merge it here
            async def merge_here(hint: Hint) -> None:
                await self.replica.merge_in(hint.key, versions.decode_record(hint.record))

            return await deliver_pending(self.hints, target, merge_here, self.hint_limiter)
        if self.leaving(target):
            return 0  # it has handed over (part of) its ranges already: keep them, redirected once it has left
        if self.departed(target):  # it left the ring: what it was owed goes to the key's replicas now
            async def redirect(hint: Hint) -> None:
                record = versions.decode_record(hint.record)
                for node in self.preference(hint.key):
                    if node == self.node_id:
                        await self.replica.merge_in(hint.key, record)
                    else:
                        await self.call(node, "replicate", {"key": hint.key, "record": hint.record})

            try:
                return await deliver_pending(self.hints, target, redirect, self.hint_limiter)
            except (TransportError, RemoteError) as e:
                log.info("redirecting the hints of %s (left the ring) paused: %s", target, e)
                return 0
        if not self.is_up(target):
            await drop_for_downtime(self.hints, target, self.down_for(target))
            return 0

        async def send(hint: Hint) -> None:
            if self.leaving(target):  # it started leaving during this pass: the rest wait until it has left
                raise NotDeliveredError(f"{target} is leaving")
            await self.call(target, "replicate", {"key": hint.key, "record": hint.record})

        try:
            return await deliver_pending(self.hints, target, send, self.hint_limiter)
        except (TransportError, RemoteError) as e:
            log.info("hint delivery to %s paused: %s", target, e)
            return 0

    # -- stop -----------------------------------------------------------------------------------------

    async def stop(self, drain_s: float | None = None) -> None:
        """Take no more writes; let owed replication finish within `drain_s` (default: the write budget),
        then keep whatever is still owed as durable local hints, delivered after the restart."""
        self.accepting = False
        drain_s = self.settings.write_budget_s if drain_s is None else drain_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        if self._writes:  # writes that passed the check before we stopped: let them register what they owe
            await asyncio.wait(list(self._writes), timeout=drain_s)
        pending = list(self._background)
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if not self.hints_enabled:
            return
        for owed in list(self._owed):
            for target in sorted(owed.targets):
                try:
                    await self.hints.store(target, owed.key, owed.encoded)
                    self.stats.hints_kept_at_shutdown += 1
                except RingkvError as e:
                    log.error("stopping: could not keep a hint for %s: %s", target, e)
        self._owed.clear()


def _settle_at_deadline(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)  # the waiter re-reads its tally: too few answers is a 503


def _reply_record(reply: Any, node: NodeId, method: str) -> Record:
    """The record a peer answered `method` with: encoded, so bin (`bytes()` of anything else coerces it: an int
    into that many zero bytes); `InvalidRecordError` if it does not decode."""
    if not isinstance(reply, bytes):
        raise RequestError("bad_reply", f"{node} answered {method} with a {type(reply).__name__}, not a record")
    return versions.decode_record(reply)
