"""The cluster with real node processes (issue 4, "Must show"): replication survives `kill -9`, hinted
handoff, siblings from concurrent writes and their resolution, no silent overwrite by a stale coordinator,
read repair, and quorum errors.

Each test starts its own cluster (`LocalCluster`, 3 or 5 nodes, RF 3, gossip every 0.5 s, durability
`batch`: fast, yet what a node acknowledged survives its SIGKILL) and SIGKILLs it at the end. Client
requests go through `ringkv.client.Client`; what one replica holds is read from its own storage with
`/admin/v1/local` (no quorum involved), placement from `/admin/v1/ring?key=K`. Whatever settles in the
background (replication past W, hint delivery, read repair) is awaited as a condition with a deadline,
never a sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ringkv.client import Client, ClientError, JSONValue, ReadResult
from ringkv.local import LocalCluster, LocalNode
from tests.integration.cluster_helpers import (
    hints,
    keys_placed,
    local_record,
    local_values,
    metric,
    preference,
    restart,
    running_cluster,
    sees,
    wait_until,
)

pytestmark = pytest.mark.slow

# Hints and anti-entropy off: nothing but the scenario moves data (a restarted node's first exchanges run
# within seconds and would hand it what it missed).
NO_HINTS = ["--hints-enabled", "false", "--aae-enabled", "false"]
SETTLE_S = 15.0  # bound for background work (replication past W, read repair) to land


# -- client calls (each a short asyncio.run: the tests themselves are synchronous) --------------------------


async def _put_all(nodes: Sequence[LocalNode], items: dict[str, JSONValue], **params: int) -> dict[str, str]:
    """Put every item, sequentially, through `nodes` in turn; returns each key's new context."""
    clients = [Client(n.url) for n in nodes]
    try:
        return {key: await clients[i % len(clients)].put(key, value, **params)
                for i, (key, value) in enumerate(items.items())}
    finally:
        for c in clients:
            await c.close()


async def _get_all(nodes: Sequence[LocalNode], keys: Sequence[str], **params: int) -> dict[str, ReadResult]:
    clients = [Client(n.url) for n in nodes]
    try:
        return {key: await clients[i % len(clients)].get(key, **params) for i, key in enumerate(keys)}
    finally:
        for c in clients:
            await c.close()


def put(node: LocalNode, key: str, value: JSONValue, context: str | None = None, **params: int) -> str:
    async def go() -> str:
        async with Client(node.url) as c:
            return await c.put(key, value, context, **params)
    return asyncio.run(go())


def get(node: LocalNode, key: str, **params: int) -> ReadResult:
    return asyncio.run(_get_all([node], [key], **params))[key]


def raw(node: LocalNode, method: str, path: str, params: dict[str, str], body: Any = None) -> tuple[int, Any]:
    """One request through plain aiohttp (for what the client cannot express, like `w=x`)."""
    async def go() -> tuple[int, Any]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
                session.request(method, node.url + path, params=params, json=body) as response:
            return response.status, await response.json()
    return asyncio.run(go())


def others(cluster: LocalCluster, *node_ids: str) -> list[LocalNode]:
    return [n for n in cluster.nodes if n.node_id not in node_ids]


def version_values(node: LocalNode, key: str) -> list[Any]:
    """Every version `node` stores for `key` (value, or None for a tombstone), in stored order."""
    record = local_record(node, key)
    return [] if record is None else [v["value"] for v in record["versions"]]


# -- 1. writes keep succeeding while a replica is dead ---------------------------------------------------------


@pytest.mark.parametrize(("nodes", "victim"), [(3, "n1"), (5, "n3")])
def test_puts_with_w2_survive_kill_9_of_a_replica(tmp_path: Path, nodes: int, victim: str) -> None:
    """100 keys written through every node; one replica is SIGKILLed; 100 more keys (and one whose usual
    coordinator is the victim) are written at once through the survivors, before gossip has noticed, with
    W=2: every put succeeds, and all 201 keys read back with R=2 through the survivors."""
    with running_cluster(tmp_path, nodes) as cluster:
        dead = cluster.node(victim)
        living = others(cluster, victim)
        observer = living[0]
        before: dict[str, JSONValue] = {f"before-{i}": {"i": i, "phase": "before"} for i in range(100)}
        asyncio.run(_put_all(cluster.nodes, before, w=2))

        [led_by_victim] = keys_placed(observer, "led", lambda p: p[0] == victim)
        cluster.kill(dead)
        after: dict[str, JSONValue] = {f"after-{i}": {"i": i, "phase": "after"} for i in range(100)}
        after[led_by_victim] = {"phase": "after", "led_by": victim}
        asyncio.run(_put_all(living, after, w=2))

        involving = [k for k in after if victim in preference(observer, k)]
        assert len(involving) >= (len(after) if nodes == 3 else 30), "too few keys had the victim as a replica"

        expected = {**before, **after}
        got = asyncio.run(_get_all(living, list(expected), r=2))
        wrong = {k: r.values for k, r in got.items() if r.values != [expected[k]]}
        assert not wrong, f"{len(wrong)} acknowledged keys read back wrong, e.g. {list(wrong.items())[:3]}"


# -- 2. hinted handoff ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nodes", [3, 5])
def test_down_replica_receives_its_hinted_writes_when_it_returns(tmp_path: Path, nodes: int) -> None:
    """Keys that have n2 as a replica are written (W=2) while n2 is dead: each write leaves exactly one hint
    for n2 (with 5 nodes on a fallback outside the preference list, counted toward W; with 3 nodes there is
    no such node and the coordinator keeps it). After n2 restarts, its own storage holds every key, the
    hints are counted delivered and none is pending any more."""
    victim = "n2"
    with running_cluster(tmp_path, nodes) as cluster:
        dead = cluster.node(victim)
        living = others(cluster, victim)
        keys = keys_placed(living[0], "hinted", lambda p: victim in p, count=20)
        assert all(local_record(dead, k) is None for k in keys)

        cluster.kill(dead)
        values: dict[str, JSONValue] = {k: {"key": k, "hinted": True} for k in keys}
        asyncio.run(_put_all(living, values, w=2))

        # the hint for the dead replica is taken in the background once W=2 acknowledged
        wait_until(lambda: sum(hints(n)["stored"] for n in living) >= len(keys), 10.0, "every hint is stored",
                   observe=lambda: [hints(n) for n in living])
        held = [hints(n) for n in living]
        assert sum(h["stored"] for h in held) == len(keys), held
        assert sum(h["pending"].get(victim, 0) for h in held) == len(keys), held
        assert sum(h["delivered"] for h in held) == 0, held
        to_fallbacks = sum(metric(n, "ringkv_hints_sent_to_fallbacks_total") for n in living)
        assert to_fallbacks == (len(keys) if nodes == 5 else 0)

        started = time.monotonic()
        restart(cluster, dead)
        for key in keys:
            wait_until(lambda key=key: local_values(dead, key) == [values[key]], 30.0,
                       f"{victim}'s own storage holds {key}")
        print(f"\n{nodes} nodes: {len(keys)} hinted writes on {victim} "
              f"{time.monotonic() - started:.2f}s after its restart began")

        def delivered() -> bool:
            held = [hints(n) for n in living]
            return (sum(h["delivered"] for h in held) == len(keys)
                    and not any(h["pending"].get(victim) for h in held))
        wait_until(delivered, 10.0, "every hint is counted delivered and none is pending")
        assert sum(metric(n, "ringkv_hints_delivered_total") for n in living) == len(keys)
        assert sum(metric(n, "ringkv_hints_pending") for n in living) == 0


# -- 3. siblings from a stale context, resolved by a merged one --------------------------------------------


@pytest.mark.parametrize("nodes", [3, 5])
def test_concurrent_puts_with_one_stale_context_become_siblings_then_resolve(tmp_path: Path, nodes: int) -> None:
    """v0 is written everywhere (W=3) and read (its context C). Two puts carrying C, "a" and "b", go through
    two different nodes: every replica's own storage ends with both as siblings, and a read answers 300 with
    both. A put of "c" with the read's merged context leaves exactly one version, "c", on every replica."""
    key = "conflict"
    with running_cluster(tmp_path, nodes) as cluster:
        replicas = [cluster.node(n) for n in preference(cluster.nodes[0], key)]
        put(cluster.nodes[0], key, "v0", w=3)
        stale = get(cluster.nodes[1], key, r=3)
        assert stale.values == ["v0"]

        first, second = cluster.nodes[-1], cluster.nodes[-2]
        put(first, key, "a", stale.context, w=2)
        put(second, key, "b", stale.context, w=2)
        for replica in replicas:
            wait_until(lambda r=replica: local_values(r, key) == ["a", "b"], SETTLE_S,
                       f"{replica.node_id} holds both siblings")
            assert sorted(version_values(replica, key)) == ["a", "b"]  # v0 was superseded by both

        conflict = get(cluster.nodes[2 % nodes], key, r=3)
        assert conflict.has_siblings and sorted(map(str, conflict.values)) == ["a", "b"]
        put(cluster.nodes[0], key, "c", conflict.context, w=2)
        for replica in replicas:
            wait_until(lambda r=replica: version_values(r, key) == ["c"], SETTLE_S,
                       f"{replica.node_id} holds exactly one version, c")
        assert get(cluster.nodes[-1], key, r=3).values == ["c"]


# -- 4. a stale coordinator never overwrites silently -----------------------------------------------------------


def test_plain_put_by_a_coordinator_that_missed_the_latest_version_becomes_a_sibling(tmp_path: Path) -> None:
    """Hints disabled cluster-wide, so nothing but the scenario moves data. Key K has preference list
    [A, B, C] (3 nodes, RF 3); A is its usual coordinator.

    1. v1 is written with W=3: A, B and C hold v1.
    2. A is SIGKILLed (its usual coordinator is gone); a plain put of v2 through B is coordinated by B
       (the forward to A fails) and acknowledged by B and C (W=2). A gets no hint.
    3. A restarts and rejoins; its own storage still holds only v1 (it never saw v2).
    4. A plain put (no context) of v3 through A: A is the first live replica, so it coordinates, creating v3
       from its local state, which supersedes v1 only.
    Then B and C hold v2 and v3 as siblings, a read with R=3 answers 300 with both (v3 did not silently
    overwrite v2), and that read's repair gives A the sibling too."""
    key = "stale-coordinator"
    with running_cluster(tmp_path, 3, extra_args=NO_HINTS) as cluster:
        a, b, c = (cluster.node(n) for n in preference(cluster.nodes[0], key))
        put(b, key, "v1", w=3)
        assert all(version_values(n, key) == ["v1"] for n in (a, b, c))

        cluster.kill(a)
        put(b, key, "v2", w=2)
        assert all(version_values(n, key) == ["v2"] for n in (b, c))  # W=2 of 2 living: both acked

        restart(cluster, a)
        assert preference(a, key) == [a.node_id, b.node_id, c.node_id]
        assert version_values(a, key) == ["v1"], "A must not have seen v2 for this scenario"
        assert all(h["stored"] == 0 for h in map(hints, cluster.nodes))

        put(a, key, "v3", w=2)  # plain put; A coordinates from its stale record
        assert version_values(a, key) == ["v3"]  # A's own result: v3 superseded v1, the only version A knew
        for replica in (b, c):
            wait_until(lambda r=replica: local_values(r, key) == ["v2", "v3"], SETTLE_S,
                       f"{replica.node_id} holds v2 and v3 as siblings",
                       observe=lambda: [local_record(n, key) for n in (a, b, c)])
        got = get(c, key, r=3)
        assert got.has_siblings and sorted(map(str, got.values)) == ["v2", "v3"]
        wait_until(lambda: local_values(a, key) == ["v2", "v3"], SETTLE_S,
                   "read repair gives A the sibling it missed", observe=lambda: local_record(a, key))


# -- 5. read repair ---------------------------------------------------------------------------------------------


def test_stale_replica_is_fixed_by_read_repair(tmp_path: Path) -> None:
    """Hints disabled, so only read repair can fix it. With C (a replica of both keys) dead, "old" is
    overwritten (v1 -> v2, W=2) and "new" written for the first time. C restarts holding v1 and nothing.
    One read with R=3 of each key answers the new value; then C's own storage holds exactly it."""
    with running_cluster(tmp_path, 3, extra_args=NO_HINTS) as cluster:
        victim = cluster.node("n3")
        reader = cluster.node("n1")
        put(reader, "old", "v1", w=3)
        assert version_values(victim, "old") == ["v1"]

        cluster.kill(victim)
        ctx = get(reader, "old", r=2).context
        put(reader, "old", "v2", ctx, w=2)
        put(cluster.node("n2"), "new", "fresh", w=2)

        restart(cluster, victim)
        assert version_values(victim, "old") == ["v1"]
        assert local_record(victim, "new") is None
        repairs_before = sum(metric(n, "ringkv_read_repairs_total") for n in cluster.nodes)

        assert get(reader, "old", r=3).values == ["v2"]
        assert get(cluster.node("n2"), "new", r=3).values == ["fresh"]
        def everywhere() -> object:
            return {k: [local_record(n, k) for n in cluster.nodes] for k in ("old", "new")}, [
                metric(n, "ringkv_read_repairs_total") for n in cluster.nodes]
        wait_until(lambda: version_values(victim, "old") == ["v2"], SETTLE_S, "read repair brings v2 to n3",
                   observe=everywhere)
        wait_until(lambda: version_values(victim, "new") == ["fresh"], SETTLE_S, "read repair brings 'new' to n3",
                   observe=everywhere)
        assert sum(metric(n, "ringkv_read_repairs_total") for n in cluster.nodes) >= repairs_before + 2


# -- 6. quorum errors -------------------------------------------------------------------------------------------


def test_quorum_errors(tmp_path: Path) -> None:
    """Out-of-range or malformed r and w answer 400 invalid_quorum; with 2 of 3 nodes dead a put with W=2
    answers 503 quorum_unavailable naming the required and acknowledged counts, and a read with R=2 too."""
    with running_cluster(tmp_path, 3) as cluster:
        n1 = cluster.node("n1")
        put(n1, "q", "before", w=3)
        for bad in ("0", "4", "x", "-1", ""):
            status, body = raw(n1, "POST", "/api/v1/put", {"w": bad}, {"key": "q", "value": "bad"})
            assert (status, body["error"]) == (400, "invalid_quorum"), (bad, body)
            status, body = raw(n1, "GET", "/api/v1/getValue", {"key": "q", "r": bad})
            assert (status, body["error"]) == (400, "invalid_quorum"), (bad, body)
        assert get(n1, "q", r=3).values == ["before"]

        cluster.kill(cluster.node("n2"))
        cluster.kill(cluster.node("n3"))
        status, body = raw(n1, "POST", "/api/v1/put", {"w": "2"}, {"key": "q", "value": "after"})
        assert status == 503, body
        assert {k: body[k] for k in ("error", "required", "acknowledged")} == {
            "error": "quorum_unavailable", "required": 2, "acknowledged": 1}
        with pytest.raises(ClientError) as read_error:
            get(n1, "q", r=2)
        assert read_error.value.status == 503 and read_error.value.code == "quorum_unavailable"
        assert read_error.value.body["required"] == 2

        wait_until(lambda: sees(n1, "n2", up=False) and sees(n1, "n3", up=False), 15.0, "n1 sees n2, n3 down")
        status, body = raw(n1, "POST", "/api/v1/put", {"w": "2"}, {"key": "q", "value": "after"})
        assert (status, body["error"], body["required"], body["acknowledged"]) == (503, "quorum_unavailable", 2, 1)
        # a 503 write is not rolled back: n1 applied it locally (its one acknowledgement), and R=1 sees that
        assert get(n1, "q", r=1).values == ["after"]
