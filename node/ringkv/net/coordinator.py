"""The coordinator: turns one client request into replica requests and quorum decisions.

Writes: the first live node of the key's preference list coordinates (another node forwards the request to
it, trying the next live one when that fails), as in Dynamo. The coordinator applies the write to its own
record (creating the new version from its local state and the request's context), then sends the resulting
record to the other replicas, which merge it. A replica that is down, or that fails, is replaced by the
next healthy node past the preference list, which stores the record as a durable hint for it (sloppy
quorum: hints count toward W). With no such node free, the coordinator keeps the hint itself (delivered
just the same, but not counted toward W). With hints disabled (`--hints-enabled false`) a failed replica is
simply missed (no hint, no stand-in). The answer comes after W durable acknowledgements; the rest go on in
the background.

Reads: any node coordinates. It asks the preference list's replicas, answers after R replies with their
merge (value or siblings), and in the background waits for the stragglers and sends the merged record to
every replica found stale (read repair).

Note: with a sloppy quorum R + W > N no longer guarantees that a read sees the latest write (a hint
holder is not read); anti-entropy and hinted handoff close the gap. That is Dynamo's trade-off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ringkv.cluster import versions
from ringkv.cluster.ids import NodeId
from ringkv.cluster.quorum import ReadTally, WriteTally
from ringkv.cluster.ring import Ring, token_for
from ringkv.cluster.versions import Record, VersionVector
from ringkv.errors import QuorumUnavailableError, RequestError, RingkvError
from ringkv.net.hints import Hint, HintStore, deliver_pending, drop_expired
from ringkv.net.transport import PeerClient, Peers, RemoteError, TransportError
from ringkv.replica import Replica

log = logging.getLogger("ringkv.coordinator")


@dataclass(frozen=True)
class QuorumSettings:
    replication: int = 3
    read_quorum: int = 2
    write_quorum: int = 2
    timeout_s: float = 2.0


@dataclass
class CoordinatorStats:
    forwarded: int = 0
    read_repairs: int = 0
    hints_sent_to_fallbacks: int = 0
    hints_kept_locally: int = 0
    quorum_failures: int = 0


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
    ) -> None:
        self.node_id = node_id
        self.replica = replica
        self.peers = peers
        self.hints = hints
        self.settings = settings
        self.is_up = is_up
        self.address_of = address_of
        self.hints_enabled = hints_enabled  # False: a failed replica gets no hint (and no stand-in counts)
        self.ring = Ring()
        self.stats = CoordinatorStats()
        self._background: set[asyncio.Task[Any]] = set()
        self._delivering = asyncio.Lock()  # one delivery pass at a time, or a hint is sent and removed twice

    # -- placement ------------------------------------------------------------------------------------

    def preference(self, key: bytes) -> tuple[NodeId, ...]:
        return self.ring.preference_list(token_for(key), self.settings.replication)

    def fallbacks(self, key: bytes, preference: tuple[NodeId, ...]) -> list[NodeId]:
        """Healthy nodes past the preference list, in ring order (sloppy-quorum stand-ins)."""
        extended = self.ring.extended_preference_list(token_for(key), len(self.ring), self.settings.replication)
        return [n for n in extended if n not in preference and self.is_up(n)]

    def quorum(self, requested: int | None, default: int, name: str) -> int:
        n = min(self.settings.replication, max(1, len(self.ring)))
        value = default if requested is None else requested
        if not 1 <= value <= self.settings.replication:
            raise RequestError("invalid_quorum", f"{name} must be between 1 and {self.settings.replication}")
        return min(value, n)

    def _client(self, node: NodeId) -> PeerClient:
        address = self.address_of(node)
        if address is None:
            raise TransportError(f"no address known for node {node}")
        return self.peers.get(node, *address)

    async def call(self, node: NodeId, method: str, body: Any) -> Any:
        return await self._client(node).call(method, body, self.settings.timeout_s)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- writes ---------------------------------------------------------------------------------------

    async def put(self, key: bytes, value: bytes | None, context: VersionVector | None, w: int | None) -> Record:
        """A client write (value None = delete). Returns the coordinator's resulting record."""
        w_required = self.quorum(w, self.settings.write_quorum, "w")
        preference = self.preference(key)
        if not preference:
            raise QuorumUnavailableError(w_required, 0)
        for node in preference:
            if node == self.node_id:
                return await self.coordinate_write(key, value, context, w_required, preference)
            if not self.is_up(node):
                continue
            try:
                self.stats.forwarded += 1
                reply = await self.call(node, "coordinate", {
                    "key": key, "value": value, "w": w_required,
                    "context": None if context is None else versions.encode_context(context),
                })
                return versions.decode_record(reply)
            except RemoteError as e:
                if e.code == QuorumUnavailableError.code:
                    raise QuorumUnavailableError(w_required, int(str(e.details().get("acknowledged", 0)))) from None
                raise
            except TransportError as e:
                log.info("forwarding a write to %s failed (%s); trying the next replica", node, e)
        raise QuorumUnavailableError(w_required, 0)

    async def handle_coordinate(self, body: Any, peer: str) -> Any:
        """Internode: another node forwarded a client write to us."""
        key, value, w = bytes(body["key"]), body["value"], int(body["w"])
        context = None if body["context"] is None else versions.decode_context(body["context"])
        record = await self.coordinate_write(key, None if value is None else bytes(value), context, w,
                                             self.preference(key))
        return versions.encode_record(record)

    async def coordinate_write(self, key: bytes, value: bytes | None, context: VersionVector | None,
                               w_required: int, preference: tuple[NodeId, ...]) -> Record:
        record = await self.replica.write(key, value, context)  # local, durable: the first ack
        encoded = versions.encode_record(record)
        tally = WriteTally(required=w_required, asked=len(preference))
        tally.ack(self.node_id)
        if tally.succeeded:
            self._spawn(self._replicate_rest(key, encoded, preference, None))
            return record
        done = asyncio.Event()

        def settle(node: NodeId, ok: bool) -> None:
            (tally.ack if ok else tally.fail)(node)
            if tally.succeeded or tally.impossible:
                done.set()

        self._spawn(self._replicate_rest(key, encoded, preference, settle))
        try:
            async with asyncio.timeout(self.settings.timeout_s * 2):
                await done.wait()
        except TimeoutError:
            pass
        if len(tally.acked) < tally.required:  # re-read: acks arrive while we wait
            self.stats.quorum_failures += 1
            raise QuorumUnavailableError(w_required, len(tally.acked))
        return record

    async def _replicate_rest(self, key: bytes, encoded: bytes, preference: tuple[NodeId, ...],
                              settle: Callable[[NodeId, bool], None] | None) -> None:
        """Send the record to every other replica; a failed one is replaced by a hinted fallback."""
        fallbacks: list[NodeId] | None = None  # walked only when a replica fails (rarely)

        async def one(node: NodeId) -> None:
            ok = False
            if self.is_up(node):
                try:
                    await self.call(node, "replicate", {"key": key, "record": encoded})
                    ok = True
                except (TransportError, RemoteError) as e:
                    log.info("replicating to %s failed: %s", node, e)
            if not ok and self.hints_enabled:
                nonlocal fallbacks
                if fallbacks is None:
                    fallbacks = self.fallbacks(key, preference)  # shared: two failed replicas get two stand-ins
                ok = await self._hint(node, key, encoded, fallbacks)
            if settle is not None:
                settle(node, ok)

        await asyncio.gather(*(one(n) for n in preference if n != self.node_id))

    async def _hint(self, target: NodeId, key: bytes, encoded: bytes, fallbacks: list[NodeId]) -> bool:
        """Hand the record to a fallback node as a hint for `target`. True if that counts toward W."""
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
        await self.replica.merge_in(bytes(body["key"]), versions.decode_record(bytes(body["record"])))
        return True

    async def handle_store_hint(self, body: Any, peer: str) -> Any:
        await self.hints.store(NodeId(str(body["target"])), bytes(body["key"]), bytes(body["record"]))
        return True

    # -- reads ----------------------------------------------------------------------------------------

    async def get(self, key: bytes, r: int | None) -> Record:
        r_required = self.quorum(r, self.settings.read_quorum, "r")
        preference = self.preference(key)
        tally = ReadTally(required=r_required, asked=len(preference))
        done = asyncio.Event()

        async def ask(node: NodeId) -> None:
            try:
                if node == self.node_id:
                    record = await self.replica.read(key)
                elif not self.is_up(node):
                    raise TransportError(f"{node} is down")
                else:
                    record = versions.decode_record(bytes(await self.call(node, "read", {"key": key})))
                tally.reply(node, record)
            except (TransportError, RemoteError, RingkvError) as e:
                log.debug("read from %s failed: %s", node, e)
                tally.fail(node)
            if tally.succeeded or tally.impossible:
                done.set()

        asks = [asyncio.create_task(ask(n)) for n in preference]
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                await done.wait()
        except TimeoutError:
            pass
        if not tally.succeeded:
            self.stats.quorum_failures += 1
            for task in asks:
                task.cancel()
            raise QuorumUnavailableError(r_required, len(tally.replies), "read")
        merged = tally.merged()
        if len(preference) > 1:
            self._spawn(self._read_repair(key, asks, tally))
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
        return versions.encode_record(await self.replica.read(bytes(body["key"])))

    # -- hinted handoff -------------------------------------------------------------------------------

    async def deliver_hints(self) -> int:
        """One pass: deliver pending hints to every target that is up, drop expired ones of targets that are
        down. Returns how many were delivered."""
        async with self._delivering:
            return await self._deliver_hints()

    async def _deliver_hints(self) -> int:
        delivered = 0
        for target in list(self.hints.pending):
            if target == self.node_id:
                continue
            if not self.is_up(target):
                await drop_expired(self.hints, target)
                continue

            async def send(hint: Hint, target: NodeId = target) -> None:
                await self.call(target, "replicate", {"key": hint.key, "record": hint.record})

            try:
                delivered += await deliver_pending(self.hints, target, send)
            except (TransportError, RemoteError) as e:
                log.info("hint delivery to %s paused: %s", target, e)
        return delivered

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

