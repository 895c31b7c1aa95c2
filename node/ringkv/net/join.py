"""Joining the ring with data (bootstrap and replace), a node's first start into a ring that has members.

1. **Turn** (`await_turn`): announce `joining` with no tokens, let gossip show the other candidates for a few
   rounds, then wait until no change is in flight and `topology.join_turn` picks us (one change at a time).
2. **Tokens** (`allocate_tokens`): balanced against the live ring, persisted with `joining` in `node.json`
   before use; a replacement takes the dead node's tokens instead (`take_over`); a wiped node the cluster
   remembers takes its old tokens back (and is refilled by anti-entropy, no stream).
3. **Stream** (`bootstrap`): announce the pending tokens, wait until every member shows that view
   (`ClusterNode.await_agreement`: from then on writes for our future ranges reach us too), then for every
   range we gain (`topology.gains_of`) stream it from a current replica, healthiest first, and verify it
   with that replica by a Merkle exchange (`receive_range`); `PARALLEL_RANGES` at once, spread over sources.
4. **Normal** (`run`): announce normal (a replacement announces the replaced node `left` in the same step),
   clear `joining`, serve.

Killed at any point, a node restarts with `joining` and its tokens and streams again (merges are
idempotent), unless the cluster removed it meanwhile (`cancelled`: it then joins afresh). `stream_pull`
(`handle_stream_pull`) is the same streaming on behalf of a removenode run elsewhere. See docs/topology.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from ringkv.cluster import ring as ringmod
from ringkv.cluster import topology
from ringkv.cluster.ids import NodeId
from ringkv.cluster.membership import Status
from ringkv.errors import RingkvError, StreamFailedError
from ringkv.net import wire
from ringkv.net.streaming import RangeProgress

if TYPE_CHECKING:
    from ringkv.net.node import ClusterNode

log = logging.getLogger("ringkv.join")

WAIT_LOG_INTERVAL_S = 10.0
PARALLEL_RANGES = 3  # ranges streamed at once (each from its own source where it can)


def must_stream(node: ClusterNode) -> bool:
    """A first start that must stream data: a replacement, or a join into a ring that has members (and
    that does not remember tokens for us: a wiped node takes them back, and anti-entropy refills it)."""
    echo = node.membership.echo
    if echo is not None and echo.tokens:
        return False
    return bool(node.config.replace_node) or any(
        s.tokens and s.status in (Status.NORMAL, Status.LEAVING)
        for n, s in node.membership.members.items() if n != node.node_id)


def cancelled(node: ClusterNode) -> bool:
    """Resuming a join: whether the cluster removed us meanwhile (`left`, no tokens, in its echo of us)."""
    echo = node.membership.echo
    return echo is not None and echo.status == Status.LEFT and not echo.tokens


async def run(node: ClusterNode, tokens: list[int] | None) -> None:
    """Wait for our turn, take tokens, stream and verify, turn normal, then serve (a background task)."""
    try:
        if tokens is None:
            tokens = await allocate_tokens(node, stream=True)
        else:
            log.warning("resuming the join of %s: its data is streamed again", node.node_id)
        await bootstrap(node, tokens)
        replaced = NodeId(node.config.replace_node) if node.config.replace_node else None
        node.turn_normal(tokens, replaced)
        await node.persist_identity(joining=False)
        await node.serve(tokens)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("the join of %s failed; it resumes at the next start", node.node_id)
        raise


async def allocate_tokens(node: ClusterNode, stream: bool) -> list[int]:
    """A first start (after `_await_seeds`): balance our tokens against the ring seen through the seeds;
    persisted before use. If the cluster remembers tokens for our node id (our data directory was
    wiped), take those back. For a join that streams (`stream`), wait for our turn first (one topology
    change at a time), and a replacement takes the tokens of the node it replaces."""
    echo = node.membership.echo
    if echo is not None and echo.tokens:
        again = sorted(echo.tokens)
        log.warning("the cluster remembers node %s with %d tokens: taking them back (data directory new)",
                    node.node_id, len(again))
        await node.persist_identity(tokens=tuple(again))
        return again
    if stream and node.config.replace_node:
        return await take_over(node, NodeId(node.config.replace_node))
    if stream:
        await await_turn(node)
    known = {
        ringmod.NodeInfo(s.node_id, s.datacenter, s.rack, s.capacity): s.tokens
        for s in node.membership.members.values()
        if s.tokens and s.node_id != node.node_id and s.status in (Status.NORMAL, Status.LEAVING)
    }
    info = ringmod.NodeInfo(node.node_id, node.config.datacenter, node.config.rack, node.config.capacity)
    count = ringmod.token_count(info, node.config.num_tokens)
    tokens: list[int] = list(await asyncio.to_thread(
        ringmod.allocate_tokens, ringmod.Ring(known), info, count, replication=node.config.replication_factor))
    if not known:
        # Alone: evenly spaced tokens, rotated by our id so two founders never collide.
        offset = ringmod.token_for(node.node_id.encode()) % (2**64 // count)
        tokens = sorted((t + offset + 2**63) % 2**64 - 2**63 for t in tokens)
    log.info("allocated %d tokens against a ring of %d nodes", len(tokens), len(known))
    await node.persist_identity(tokens=tuple(tokens), joining=stream)
    return tokens


async def take_over(node: ClusterNode, dead: NodeId) -> list[int]:
    """Replace: wait for our turn, then take the tokens of `dead` (a member of the ring that is down)."""
    await await_turn(node)
    started = time.monotonic()
    while True:
        state = node.membership.members.get(dead)
        if (state is not None and state.tokens and state.status == Status.NORMAL
                and not node.gossiper.is_up(dead)):
            tokens = sorted(state.tokens)
            log.warning("replacing %s: taking its %d tokens", dead, len(tokens))
            await node.persist_identity(tokens=tuple(tokens), joining=True)
            return tokens
        if time.monotonic() - started > WAIT_LOG_INTERVAL_S:
            started = time.monotonic()
            log.warning("cannot replace %s yet: it must be a normal member of the ring that is down (%s)",
                        dead, "unknown" if state is None else f"{state.status.value}, "
                        f"{'up' if node.gossiper.is_up(dead) else 'down'}")
        node.gossiper.heard.clear()
        await node.wait_heard(node.config.gossip_interval_s)


async def await_turn(node: ClusterNode) -> None:
    """One topology change at a time: announce that we want to join (joining, no tokens yet), give gossip a
    few rounds to show us the other candidates, then wait until no change is in flight and it is our turn
    (`topology.join_turn`: the earliest generation first)."""
    interval = node.config.gossip_interval_s
    node.membership.update_local(status=Status.JOINING, tokens=())
    node.gossiper.announce = True
    node.mode = "joining"
    settle_until = time.monotonic() + 3 * interval
    started = time.monotonic()
    last_log = started
    while True:
        node.gossiper.heard.clear()  # set again by the next exchange absorbed
        await node.wait_heard(max(interval, settle_until - time.monotonic()))
        if time.monotonic() < settle_until:
            continue
        busy, candidates = node.topology_in_flight()
        if not busy and topology.join_turn(candidates) == node.node_id:
            return
        if time.monotonic() - last_log >= WAIT_LOG_INTERVAL_S:
            last_log = time.monotonic()
            log.warning("waiting %.0fs for our turn to join: %s", last_log - started,
                        ", ".join(busy) or f"candidates {sorted(c for c, _ in candidates)}")


async def bootstrap(node: ClusterNode, tokens: list[int]) -> None:
    """Join with data: announce our pending tokens (joining), wait until every live member places writes
    on the future ring too, stream every range we gain from a current replica, verify each against its
    source with Merkle trees, and only then (the caller) become normal."""
    node.mode = "joining"
    if not node.identity.joining:
        await node.persist_identity(joining=True)
    node.membership.update_local(tokens=tuple(tokens), status=Status.JOINING, replaces=node.config.replace_node)
    node.gossiper.announce = True
    node.rebuild_ring()
    await node.await_agreement()
    current, future = node.coordinator.ring, node.coordinator.future
    if future is None:
        log.warning("no future ring while joining (our pending tokens clash?); joining without streaming")
        return
    moves = topology.gains_of(topology.movements(current, future, node.config.replication_factor),
                              node.node_id)
    node.join_progress = [RangeProgress(m.lo, m.hi, NodeId("")) for m in moves]
    log.info("joining: streaming %d ranges from %d sources", len(moves),
             len({s for m in moves for s in m.sources}))
    assert node.antientropy is not None
    slots = asyncio.Semaphore(PARALLEL_RANGES)

    async def one(i: int, move: topology.Movement, progress: RangeProgress) -> None:
        async with slots:
            progress.started = time.monotonic()
            await receive_range(node, progress, move.sources, spread=i)

    await _all(one(i, m, p) for i, (m, p) in enumerate(zip(moves, node.join_progress, strict=True)))
    node.streamer.stats.ranges_streamed += len(moves)
    log.info("joining: streamed and verified %d ranges (%d keys, %d bytes)", len(moves),
             sum(p.keys for p in node.join_progress), sum(p.bytes for p in node.join_progress))


async def _all(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run them all; the first failure cancels the others and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def receive_range(node: ClusterNode, progress: RangeProgress, sources: tuple[NodeId, ...],
                        attempts: int | None = None, spread: int = 0) -> None:
    """Stream `progress`'s range here from one of `sources` (the healthiest first; among equals, the list
    rotated by `spread`, so ranges streamed together come from different sources) and verify it with that
    source; another source when one fails; every source failing, again after a gossip interval (at most
    `attempts` rounds; None: until it works). Raises the last error when the attempts run out."""
    assert node.antientropy is not None
    rounds = 0
    others = [s for s in sources if s != node.node_id]
    if others:
        others = others[spread % len(others):] + others[:spread % len(others)]
    while True:
        candidates = node.coordinator.healthy_first(others)
        for source in candidates:
            progress.source, progress.keys, progress.bytes = source, 0, 0
            try:
                await node.streamer.receive(progress)
                progress.state = "verifying"
                result = await node.antientropy.verify_range(progress.lo, progress.hi, source)
                progress.verify_repaired = result.keys_repaired
                progress.state, progress.finished = "done", time.monotonic()
                return
            except (RingkvError, OSError) as e:
                progress.state, progress.error = "failed", str(e)
                log.warning("streaming range %s:%s from %s failed: %s; trying another source",
                            progress.lo, progress.hi, source, e)
        rounds += 1
        if attempts is not None and rounds >= attempts:
            progress.state, progress.error = "failed", progress.error or "no source is up"
            raise StreamFailedError(f"no source could stream range {progress.lo}:{progress.hi}: {progress.error}")
        await asyncio.sleep(node.config.gossip_interval_s)  # every source failed: wait, retry


MAX_SOURCES = 64  # the current replicas of a range (N is at most 15)
MAX_PROGRESS = 256  # range progress entries kept (`/admin/v1/node`): past that the oldest finished ones go


async def handle_stream_pull(node: ClusterNode, body: Any, peer: str) -> Any:
    """Internode (removenode): stream a range here from the given sources and verify it."""
    body = wire.fields(body, "stream_pull")
    lo, hi, sources = wire.token(body, "lo"), wire.token(body, "hi"), body.get("sources")
    if not isinstance(sources, list) or len(sources) > MAX_SOURCES:
        raise wire.bad(f"sources must be a list of at most {MAX_SOURCES} node ids")
    sources = [wire.node_id(x, "a source") for x in sources]
    progress = RangeProgress(lo, hi, NodeId(""))
    track(node, progress)
    await receive_range(node, progress, tuple(sources), attempts=3)
    node.streamer.stats.ranges_streamed += 1
    return {"keys": progress.keys, "bytes": progress.bytes, "verify_repaired": progress.verify_repaired}


def track(node: ClusterNode, progress: RangeProgress) -> None:
    """Show `progress` in the node's list of ranges streamed in; a list grown past `MAX_PROGRESS` (pull after
    pull: each `stream_pull` adds one) sheds its oldest finished entries, never one still in progress."""
    node.join_progress.append(progress)
    excess = len(node.join_progress) - MAX_PROGRESS
    if excess > 0:
        shed = {id(p) for p in [p for p in node.join_progress if p.state in ("done", "failed")][:excess]}
        node.join_progress[:] = [p for p in node.join_progress if id(p) not in shed]
