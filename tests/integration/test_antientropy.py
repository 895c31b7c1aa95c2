"""Active anti-entropy with real node processes (127.0.0.1): replicas converge without any client read.

- `test_a_replica_that_missed_writes_converges_without_reads`: 3 nodes (RF 3, no hints). n3 is SIGKILLed,
  2,000 keys are written through n1 and n2 (W=2), n3 is restarted. Without a single client read (so no read
  repair: the counter is checked), n3's own storage must end up holding, for every key, exactly the record n1
  and n2 hold, within a bound; its trees count 2,000 keys like everybody's, and the records moved are counted.
- `test_a_node_whose_sstables_were_deleted_is_refilled_and_serves_correct_data`: n2 is stopped cleanly and
  its SSTables deleted (MANIFEST, node.json, the saved trees kept). It must notice (a new incarnation, so it
  never reissues a dot it issued before), be refilled by anti-entropy, and then its coordinated overwrites of
  existing keys (with a read's context) must win cleanly: exactly the new value, no sibling, at R=2 and R=3
  through the other nodes.
- `test_a_node_that_lost_one_of_two_sstables_is_refilled`: the partial case: n2 loses only the newer of its
  two SSTables, so its storage still holds the layout marker and nothing is written at start; its saved trees
  (which count the lost keys) must not be taken, or every exchange reads "in sync" and nothing is refilled.
- `test_a_delete_one_replica_missed_is_not_resurrected_and_its_tombstone_is_reaped`: n3 misses a delete (it
  is down, no hints) and comes back with the old value. Anti-entropy must give it the tombstone (the old value
  is never served again), the tombstone must then be reaped on every replica (short grace), the key must stay
  absent through further exchanges (nobody copies the old value back), and a new write must read back alone.

Each test starts its own cluster (`cluster_helpers.running_cluster`, gossip every 0.5 s, durability `batch`)
and SIGKILLs it at the end. What one replica holds is read from its own storage (`/admin/v1/local`: no
quorum, no read repair); anti-entropy's state from `/admin/v1/antientropy`. Waiting is always on a condition
with a deadline (`wait_until`), never a bare sleep; every HTTP call has a timeout and goes to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ringkv.client import Client, JSONValue, ReadResult
from ringkv.cluster import versions
from ringkv.local import LocalCluster, LocalNode
from tests.integration.cluster_helpers import (
    admin,
    local_record,
    metric,
    restart,
    running_cluster,
    sees,
    wait_until,
)

pytestmark = pytest.mark.slow

NO_HINTS = ["--hints-enabled", "false"]
REQUEST_TIMEOUT_S = 5.0  # every HTTP call of this module
CONCURRENCY = 32  # client writes and /admin/v1/local reads in flight at once
NEW_INCARNATION = "takes a new incarnation"


# -- HTTP (aiohttp, concurrent; each helper is one asyncio.run: the tests themselves are synchronous) -------


def _timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S, sock_connect=REQUEST_TIMEOUT_S)


async def _put_many_async(writes: Sequence[tuple[LocalNode, str, JSONValue, str | None]], w: int) -> dict[str, str]:
    """Put every (node, key, value, context) through its node, CONCURRENCY at a time; key -> new context."""
    clients = {n.node_id: Client(n.url, timeout_s=REQUEST_TIMEOUT_S) for n, _, _, _ in writes}
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def one(node: LocalNode, key: str, value: JSONValue, context: str | None) -> tuple[str, str]:
        async with semaphore:
            return key, await clients[node.node_id].put(key, value, context, w=w)

    try:
        return dict(await asyncio.gather(*(one(*item) for item in writes)))
    finally:
        for c in clients.values():
            await c.close()


def put_many(writes: Sequence[tuple[LocalNode, str, JSONValue, str | None]], w: int = 2) -> dict[str, str]:
    return asyncio.run(_put_many_async(writes, w))


def get(node: LocalNode, key: str, r: int) -> ReadResult:
    async def go() -> ReadResult:
        async with Client(node.url, timeout_s=REQUEST_TIMEOUT_S) as c:
            return await c.get(key, r=r)
    return asyncio.run(go())


def get_many(node: LocalNode, keys: Sequence[str], r: int) -> dict[str, ReadResult]:
    async def go() -> dict[str, ReadResult]:
        semaphore = asyncio.Semaphore(CONCURRENCY)
        async with Client(node.url, timeout_s=REQUEST_TIMEOUT_S) as c:
            async def one(key: str) -> tuple[str, ReadResult]:
                async with semaphore:
                    return key, await c.get(key, r=r)
            return dict(await asyncio.gather(*(one(k) for k in keys)))
    return asyncio.run(go())


def local_records(node: LocalNode, keys: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    """What `node`'s own storage holds for each key (`/admin/v1/local`), None where it holds nothing."""
    async def go() -> dict[str, dict[str, Any] | None]:
        semaphore = asyncio.Semaphore(CONCURRENCY)
        async with aiohttp.ClientSession(timeout=_timeout()) as session:
            async def one(key: str) -> tuple[str, dict[str, Any] | None]:
                async with semaphore, session.get(node.url + "/admin/v1/local", params={"key": key}) as response:
                    body = await response.read()
                    if response.status == 404:
                        return key, None
                    assert response.status == 200, f"{node.node_id} /admin/v1/local?key={key}: {response.status}"
                    return key, json.loads(body)
            return dict(await asyncio.gather(*(one(k) for k in keys)))
    assert node.url.startswith("http://127.0.0.1:"), node.url
    return asyncio.run(go())


def comparable(record: dict[str, Any] | None) -> Any:
    """A record as a replica holds it, minus who answered: its versions (dot, time, value) and its context."""
    if record is None:
        return None
    found = sorted((v["node"], v["counter"], v["timestamp_ms"], v["deleted"], json.dumps(v["value"], sort_keys=True))
                   for v in record["versions"])
    return found, versions.decode_context(record["context"])


def values_of(record: dict[str, Any] | None) -> list[Any]:
    """The values of a record's versions (None for a tombstone); [] for no record."""
    return [] if record is None else [v["value"] for v in record["versions"]]


def dots_of(record: dict[str, Any] | None) -> list[str]:
    """The actors of a record's versions' dots (who coordinated each)."""
    return [] if record is None else [v["node"] for v in record["versions"]]


def aae(node: LocalNode) -> dict[str, Any]:
    return dict(admin(node, "/admin/v1/antientropy"))


def tree_keys(node: LocalNode) -> int:
    """Keys in all of `node`'s anti-entropy trees (-1 while one is still being built)."""
    status = aae(node)
    if any(r["tree"] != "ready" for r in status["ranges"]):
        return -1
    return sum(int(r["keys"]) for r in status["ranges"])


def all_verified_since(node: LocalNode, since: float) -> bool:
    """Whether every (range, peer) pair of `node` completed an exchange after monotonic time `since`."""
    age_limit = time.monotonic() - since
    status = aae(node)
    return bool(status["ranges"]) and all(
        age is not None and age < age_limit for r in status["ranges"] for age in r["peers"].values())


def log_text(node: LocalNode) -> str:
    with open(node.log_path, errors="replace") as f:
        return f.read()


def log_lines(node: LocalNode, *needles: str) -> list[str]:
    return [line.rstrip() for line in log_text(node).splitlines() if any(n in line for n in needles)]


def read_repairs(cluster: LocalCluster) -> float:
    return sum(metric(n, "ringkv_read_repairs_total") for n in cluster.nodes)


# -- (a) a replica that missed writes converges without reads ------------------------------------------------

MISSED_KEYS = 2000
CONVERGE_BOUND_S = 120.0
# 10 s instead of the 60 s default: convergence here comes from the first exchanges after n3's restart (its
# new pairs are due within 5 s, n1's and n2's overdue pairs with n3 run as soon as they see it up), which the
# interval does not delay, so the default would pass the 2-minute bound as well; but should such an exchange
# end early (say a peer's ring not converged yet), the pair's next full exchange may come up to a minute later,
# which on a slow CI machine eats most of the bound. 10 s keeps the margin without changing what is tested.
AAE_A = ["--aae-interval-s", "10"]


def test_a_replica_that_missed_writes_converges_without_reads(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3, extra_args=[*NO_HINTS, *AAE_A]) as cluster:
        n1, n2, n3 = (cluster.node(f"n{i}") for i in (1, 2, 3))
        cluster.kill(n3)
        wait_until(lambda: sees(n1, "n3", up=False) and sees(n2, "n3", up=False), 15, "n1 and n2 see n3 down")

        keys = [f"missed-{i:05d}" for i in range(MISSED_KEYS)]
        put_many([((n1, n2)[i % 2], k, {"key": k, "i": i}, None) for i, k in enumerate(keys)], w=2)
        assert all(v is not None for v in local_records(n1, keys).values())

        restarted = time.monotonic()
        restart(cluster, n3)

        def n3_matches() -> list[str] | None:
            """The keys once n3 holds every one exactly as n1 does (the cheap tree count first), else None."""
            if tree_keys(n3) != MISSED_KEYS:
                return None
            held1, held3 = local_records(n1, keys), local_records(n3, keys)
            differ = [k for k in keys if comparable(held3[k]) != comparable(held1[k])]
            return None if differ else keys

        def progress() -> dict[str, Any]:
            return {n.node_id: {k: aae(n)[k] for k in ("keys_pulled", "keys_pushed", "exchanges")} | {
                "tree_keys": tree_keys(n)} for n in cluster.nodes}

        wait_until(n3_matches, CONVERGE_BOUND_S, f"n3 holds all {MISSED_KEYS} keys as n1 does", poll_s=0.25,
                   observe=progress)
        converged_s = time.monotonic() - restarted
        print(f"\nn3 converged {converged_s:.1f}s after its restart began (bound {CONVERGE_BOUND_S:.0f}s); "
              f"{progress()}")
        assert converged_s < CONVERGE_BOUND_S

        held1, held2, held3 = (local_records(n, keys) for n in (n1, n2, n3))
        for i, k in enumerate(keys):
            assert values_of(held1[k]) == [{"key": k, "i": i}], (k, held1[k])
            assert comparable(held3[k]) == comparable(held1[k]) == comparable(held2[k]), (k, held1[k], held2[k],
                                                                                          held3[k])
        wait_until(lambda: all(tree_keys(n) == MISSED_KEYS for n in cluster.nodes), 30,
                   f"every node's trees count {MISSED_KEYS} keys", observe=lambda: {
                       n.node_id: tree_keys(n) for n in cluster.nodes})

        s1, s2, s3 = (aae(n) for n in (n1, n2, n3))
        assert s3["keys_pulled"] > 0 or s1["keys_pushed"] > 0 or s2["keys_pushed"] > 0, (s1, s2, s3)
        assert s3["keys_pulled"] + s1["keys_pushed"] + s2["keys_pushed"] >= MISSED_KEYS, (
            "fewer records moved by anti-entropy than n3 missed", s1, s2, s3)
        assert read_repairs(cluster) == 0, "a read repair ran: the test made no client read"


# -- (b) a node whose SSTables were deleted ------------------------------------------------------------------

REFILL_KEYS = 1000
OVERWRITTEN = 100
REFILL_BOUND_S = 90.0
AAE_B = ["--aae-interval-s", "5"]


def actor_of(node: LocalNode, key: str) -> str:
    """The dot actor `node` writes under now (`/admin/v1/local` of any key it holds shows it)."""
    doc = local_record(node, key)
    assert doc is not None, f"{node.node_id} holds no {key}"
    return str(doc["actor"])


def test_a_node_whose_sstables_were_deleted_is_refilled_and_serves_correct_data(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3, extra_args=[*NO_HINTS, *AAE_B]) as cluster:
        n1, n2, n3 = (cluster.node(f"n{i}") for i in (1, 2, 3))
        keys = [f"refill-{i:05d}" for i in range(REFILL_KEYS)]
        old: dict[str, JSONValue] = {k: {"key": k, "phase": "old"} for k in keys}
        # through every node in turn, so n2 coordinates a third of them (their dots are n2's)
        put_many([(cluster.nodes[i % 3], k, old[k], None) for i, k in enumerate(keys)], w=2)
        wait_until(lambda: all(tree_keys(n) == REFILL_KEYS for n in cluster.nodes), 30,
                   "every replica holds every key (replication past W)",
                   observe=lambda: {n.node_id: tree_keys(n) for n in cluster.nodes})
        before = local_records(n1, keys)
        old_actor = actor_of(n2, keys[0])
        led_by_n2 = [k for k in keys if dots_of(before[k]) == [old_actor]]
        assert len(led_by_n2) >= OVERWRITTEN, f"n2 coordinated only {len(led_by_n2)} keys"

        cluster.stop(n2)  # SIGTERM: a clean stop (memtable flushed, trees saved)
        wait_until(lambda: sees(n1, "n2", up=False) and sees(n3, "n2", up=False), 15, "n1 and n3 see n2 down")
        tables = sorted(p.name for p in Path(n2.data_dir).iterdir() if p.name.endswith(".sst"))
        assert tables, f"no SSTables in {n2.data_dir}: {sorted(os.listdir(n2.data_dir))}"
        for name in tables:
            os.unlink(os.path.join(n2.data_dir, name))
        log_size = os.path.getsize(n2.log_path)
        restarted = time.monotonic()
        restart(cluster, n2)

        new_run = log_text(n2)[log_size:]
        incarnation = [line for line in new_run.splitlines() if NEW_INCARNATION in line]
        assert incarnation, f"n2 did not take a new incarnation after losing {tables}; its log says: " + "\n".join(
            line for line in new_run.splitlines() if "incarnation" in line or "storage" in line)
        assert "storage lost" in incarnation[0], incarnation[0]
        print(f"\n{incarnation[0]}")

        def refilled() -> bool:
            if tree_keys(n2) != REFILL_KEYS:
                return False
            held = local_records(n2, keys)
            return all(comparable(held[k]) == comparable(before[k]) for k in keys)

        wait_until(refilled, REFILL_BOUND_S, f"n2's storage holds all {REFILL_KEYS} keys again", poll_s=0.25,
                   observe=lambda: {"tree_keys": tree_keys(n2), "present": sum(
                       v is not None for v in local_records(n2, keys).values()), "aae": {
                       k: aae(n2)[k] for k in ("keys_pulled", "exchanges", "tree_builds", "tree_heals")},
                       "log": log_lines(n2, "anti-entropy", "trees")[-10:]})
        moved = {n.node_id: (aae(n)["keys_pulled"], aae(n)["keys_pushed"]) for n in cluster.nodes}
        print(f"n2 refilled {time.monotonic() - restarted:.1f}s after its restart began (records (pulled, pushed) "
              f"by node: {moved})")
        assert moved["n2"][0] + moved["n1"][1] + moved["n3"][1] >= REFILL_KEYS, moved
        assert read_repairs(cluster) == 0, "a read repair ran before any client read"

        # Overwrites of keys n2 coordinated before, coordinated by n2 again, each with the context of a read.
        targets = led_by_n2[:OVERWRITTEN]
        reads = get_many(n2, targets, r=2)
        assert all(reads[k].values == [old[k]] for k in targets), {k: r.values for k, r in reads.items()}
        contexts = {k: reads[k].context for k in targets}
        new: dict[str, JSONValue] = {k: {"key": k, "phase": "new"} for k in targets}
        put_many([(n2, k, new[k], contexts[k]) for k in targets], w=2)
        new_actor = actor_of(n2, targets[0])
        assert new_actor != old_actor and new_actor.partition("#")[0] == "n2", (old_actor, new_actor)

        for reader, r in ((n1, 2), (n3, 2), (n1, 3), (n3, 3)):
            seen = get_many(reader, targets, r=r)
            wrong = {k: seen[k].values for k in targets if seen[k].values != [new[k]]}
            assert not wrong, (f"{len(wrong)} of {OVERWRITTEN} overwrites coordinated by the refilled n2 do not "
                               f"read back alone via {reader.node_id} at r={r}: e.g. {list(wrong.items())[:3]}")
        def one_new_dot_everywhere() -> bool:
            return all(dots_of(r) == [new_actor] for n in cluster.nodes for r in local_records(n, targets).values())

        wait_until(one_new_dot_everywhere, 30, "every replica holds each overwrite as one version, dotted by n2's "
                   "new incarnation", observe=lambda: {n.node_id: {k: dots_of(r) for k, r in list(
                       local_records(n, targets).items())[:3]} for n in cluster.nodes})
        untouched = [k for k in keys if k not in new]
        seen = get_many(n3, untouched, r=3)
        assert all(seen[k].values == [old[k]] for k in untouched)


def test_a_node_that_lost_one_of_two_sstables_is_refilled(tmp_path: Path) -> None:
    """The partial case of the test above: n2 holds two SSTables (keys `a-*` flushed at one clean stop, `b-*`
    at the next) and loses only the newer one. Its storage still holds the layout marker, so nothing is
    written at start and the engine's sequence number equals the one its saved trees were stored under: the
    saved trees (1,000 keys) must not be taken for the storage that holds 500, or every exchange reads
    "in sync" and the lost keys never come back."""
    with running_cluster(tmp_path, 3, extra_args=[*NO_HINTS, *AAE_B]) as cluster:
        n1, n2 = cluster.node("n1"), cluster.node("n2")
        first = [f"a-{i:04d}" for i in range(REFILL_KEYS // 2)]
        second = [f"b-{i:04d}" for i in range(REFILL_KEYS // 2)]
        keys = first + second

        def everywhere(count: int) -> None:
            wait_until(lambda: all(tree_keys(n) == count for n in cluster.nodes), 30,
                       f"every replica's trees count {count} keys",
                       observe=lambda: {n.node_id: tree_keys(n) for n in cluster.nodes})

        put_many([(cluster.nodes[i % 3], k, {"key": k}, None) for i, k in enumerate(first)], w=3)
        everywhere(len(first))
        cluster.stop(n2)  # the memtable is flushed: the first table
        restart(cluster, n2)
        put_many([(cluster.nodes[i % 3], k, {"key": k}, None) for i, k in enumerate(second)], w=3)
        everywhere(len(keys))
        before = local_records(n1, keys)
        cluster.stop(n2)  # the second table; the trees (1,000 keys) are saved
        tables = sorted(p.name for p in Path(n2.data_dir).iterdir() if p.name.endswith(".sst"))
        assert len(tables) >= 2, f"expected two SSTables in {n2.data_dir}: {sorted(os.listdir(n2.data_dir))}"
        assert (Path(n2.data_dir) / "aae" / "trees.bin").exists(), "n2 saved no trees at its clean stop"
        os.unlink(os.path.join(n2.data_dir, tables[-1]))
        log_size = os.path.getsize(n2.log_path)
        restarted = time.monotonic()
        restart(cluster, n2)
        new_run = log_text(n2)[log_size:].splitlines()
        assert any(NEW_INCARNATION in line for line in new_run), "\n".join(new_run[-15:])

        def refilled() -> bool:
            held = local_records(n2, keys)
            return all(comparable(held[k]) == comparable(before[k]) for k in keys)

        wait_until(refilled, REFILL_BOUND_S, f"n2's storage holds all {len(keys)} keys again", poll_s=0.5,
                   observe=lambda: {"present": {p: sum(local_records(n2, [k for k in keys if k.startswith(p)])[k]
                                                       is not None for k in keys if k.startswith(p))
                                                for p in ("a-", "b-")},
                                    "tree_keys": tree_keys(n2), "aae": {k: aae(n2)[k] for k in (
                                        "exchanges", "keys_pulled", "tree_builds")},
                                    "log": [line[:200] for line in new_run
                                            if ("trees" in line or "table" in line) and "config:" not in line]})
        print(f"\nn2 refilled {time.monotonic() - restarted:.1f}s after its restart began")
        assert tree_keys(n2) == len(keys)


# -- (c) a delete one replica missed --------------------------------------------------------------------------

GRACE_S = 3.0
# Every pair exchanges every ~2 s: the two rounds of exchanges awaited after the reap take ~2 s each, not ~5 s.
AAE_C = ["--aae-interval-s", "2", "--tombstone-grace-s", str(GRACE_S)]
KEY = "deleted-key"


def test_a_delete_one_replica_missed_is_not_resurrected_and_its_tombstone_is_reaped(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3, extra_args=[*NO_HINTS, *AAE_C]) as cluster:
        n1, n2, n3 = (cluster.node(f"n{i}") for i in (1, 2, 3))
        old: JSONValue = {"phase": "old"}
        put_many([(n1, KEY, old, None)], w=3)
        assert all(local_record(n, KEY) is not None for n in cluster.nodes)

        cluster.kill(n3)
        wait_until(lambda: sees(n1, "n3", up=False) and sees(n2, "n3", up=False), 15, "n1 and n2 see n3 down")
        read = get(n1, KEY, r=2)
        assert read.values == [old]
        async def delete() -> None:
            async with Client(n1.url, timeout_s=REQUEST_TIMEOUT_S) as c:
                await c.delete(KEY, read.context, w=2)
        asyncio.run(delete())
        for n in (n1, n2):
            record = local_record(n, KEY)
            assert record is not None and all(v["deleted"] for v in record["versions"]), (n.node_id, record)
        restarted = time.monotonic()
        restart(cluster, n3)
        # Usually n3 still holds the old value here; an exchange may already have reached it, though (n1 and n2
        # run their overdue pairs with n3 the moment it is up): then the tombstone it holds came from
        # anti-entropy, which the counters below confirm either way.
        stale = local_record(n3, KEY)
        assert stale is not None, "n3 lost the acknowledged write"
        assert [v["value"] for v in stale["versions"]] == [old] or all(v["deleted"] for v in stale["versions"]), stale

        def holds_old(node: LocalNode) -> bool:
            record = local_record(node, KEY)
            return record is not None and any(not v["deleted"] for v in record["versions"])

        def n3_has_tombstone() -> bool:
            return not holds_old(n3)

        # no client read until then: only anti-entropy can have told n3
        wait_until(n3_has_tombstone, 60, "anti-entropy gives n3 the tombstone", poll_s=0.1,
                   observe=lambda: (local_record(n3, KEY), aae(n3)))
        tombstone_s = time.monotonic() - restarted
        assert read_repairs(cluster) == 0, "a read repair ran before any client read"
        moved = {n.node_id: (aae(n)["keys_pulled"], aae(n)["keys_pushed"]) for n in cluster.nodes}
        assert moved["n3"][0] + moved["n1"][1] + moved["n2"][1] >= 1, f"anti-entropy moved nothing to n3: {moved}"

        def none_live() -> None:
            live = {n.node_id: local_record(n, KEY) for n in cluster.nodes if holds_old(n)}
            assert not live, f"a replica holds the deleted value again: {live}"

        for reader in cluster.nodes:
            result = get(reader, KEY, r=3)
            assert not result.found, f"{reader.node_id} r=3 read of a deleted key: {result}"
            none_live()

        def reaped() -> bool:
            none_live()
            return all(local_record(n, KEY) is None for n in cluster.nodes)

        wait_until(reaped, 60, "every replica has reaped the tombstone", poll_s=0.1, observe=lambda: {
            n.node_id: (local_record(n, KEY), aae(n)["reaped"], aae(n)["tombstones"]) for n in cluster.nodes})
        reaped_s = time.monotonic() - restarted
        counts = {n.node_id: aae(n)["reaped"] for n in cluster.nodes}
        assert sum(counts.values()) >= 3, counts
        print(f"\nafter n3's restart began: tombstone on n3 in {tombstone_s:.1f}s, reaped everywhere in "
              f"{reaped_s:.1f}s (grace {GRACE_S:.0f}s; reaped {counts}; records moved {moved})")

        # Two rounds of exchanges of every pair after the reap: the key must stay absent everywhere.
        for round_ in (1, 2):
            since = time.monotonic()

            def exchanged_again(since: float = since) -> bool:
                assert all(local_record(n, KEY) is None for n in cluster.nodes), {
                    n.node_id: local_record(n, KEY) for n in cluster.nodes}
                return all(all_verified_since(n, since) for n in cluster.nodes)

            wait_until(exchanged_again, 30, f"every pair has exchanged again (round {round_})", poll_s=0.2,
                       observe=lambda: {n.node_id: aae(n)["ranges"] for n in cluster.nodes})
        for reader in cluster.nodes:
            assert not get(reader, KEY, r=3).found

        new: JSONValue = {"phase": "new"}
        put_many([(n2, KEY, new, None)], w=3)
        for reader in cluster.nodes:
            assert get(reader, KEY, r=3).values == [new], reader.node_id
        for n in cluster.nodes:
            record = local_record(n, KEY)
            assert record is not None and [v["value"] for v in record["versions"]] == [new], (n.node_id, record)
