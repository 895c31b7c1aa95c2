"""Never lose an acknowledged write across restarts (real node processes on 127.0.0.1).

- `test_restarts_under_load_lose_no_acknowledged_write`: 5 nodes (RF 3, durability sync) under a continuous
  W=2 load of blind puts on unique keys, spread over all five HTTP ports, while the nodes are SIGKILLed and
  restarted one after the other, 12 times (round robin: both seeds three times each). Every put answered 200
  is acknowledged. Once the load has stopped and every hint is delivered, every acknowledged key must be held
  by at least 2 nodes of its own preference list (their own storage, `/admin/v1/local`). A restarted node
  that answers before it knows the ring would acknowledge W=2 writes alone, on a ring of one.
- `test_wiped_node_restarted_under_its_old_name_loses_nothing`: 3 nodes; keys written with W=3, many of them
  coordinated by the victim (their preference list starts with it). The victim is SIGKILLed, its whole data
  directory deleted, and it is restarted under the same node id with the same flags. Blind puts and deletes
  through it must take effect (a blind put supersedes only what the wiped node holds, so the old value may
  stay as a sibling, but the new one must be visible at R=3; a delete with the context of an R=3 read makes
  the key read as not found), and after read repair every replica holds every pre-wipe value that was not
  overwritten or deleted. A wiped node that reissues the dots (n3, 1), (n3, 2)... its peers have already
  seen has its new writes discarded as superseded.

Waiting is on conditions with deadlines (`wait_until`, the helpers' ready and convergence waits), never a bare
sleep; every HTTP call has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ringkv.client import JSONValue
from ringkv.local import LocalCluster, LocalNode
from tests.integration.cluster_helpers import (
    hints,
    keys_placed,
    local_record,
    local_values,
    preference,
    restart,
    running_cluster,
    wait_until,
)

pytestmark = pytest.mark.slow

REQUEST_TIMEOUT_S = 5.0  # every HTTP call of this module, connect included
SETTLE_S = 20.0  # bound for background work (replication past W, hint delivery, read repair) to land


def _timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S, sock_connect=REQUEST_TIMEOUT_S)


async def _request(session: aiohttp.ClientSession, method: str, url: str, params: dict[str, str] | None = None,
                   body: Any = None) -> tuple[int, Any]:
    """One HTTP call (127.0.0.1 only): (status, parsed JSON body or None)."""
    assert url.startswith("http://127.0.0.1:"), url
    async with session.request(method, url, params=params, json=body) as response:
        raw = await response.read()
        try:
            doc = await response.json(content_type=None) if raw else None
        except ValueError:
            doc = None
        return response.status, doc


def _values(status: int, body: Any) -> list[Any]:
    """The live values a read answered: one (200), the siblings (300), none (404)."""
    if status == 200:
        return [body["value"]]
    if status == 300:
        return list(body["siblings"])
    assert status == 404, f"read answered {status} {body}"
    return []


# -- 1. kill -9 and restart, again and again, under a W=2 load ------------------------------------------------

NODES = 5
ROUNDS = 12
WORKERS_PER_NODE = 6  # each worker writes through one node's port, so a restarted node is hit the moment it binds
REFUSED_BACKOFF_S = 0.002  # a worker's pause after "connection refused" (a retry pace, not a synchronisation)
ACKS_PER_ROUND = 40  # acknowledged writes through the restarted node before the next round begins
MIN_ACKED = 500
CHECK_CONCURRENCY = 16


@dataclass
class Ack:
    key: str
    value: JSONValue
    via: str  # the node whose HTTP port answered 200 (the one the put was sent to)
    sent_at: float  # time.monotonic()


@dataclass
class Restart:
    node_id: str
    killed_at: float
    ready_at: float = 0.0


@dataclass
class Load:
    """W=2 blind puts of unique keys `k-<worker>-<seq>` through every node's port, in a thread of its own."""

    nodes: Sequence[LocalNode]
    stop: threading.Event = field(default_factory=threading.Event)
    acked: dict[str, Ack] = field(default_factory=dict)
    acked_via: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported by the test thread
            self.error = e

    async def _main(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(timeout=_timeout(), connector=connector) as session:
            await asyncio.gather(*(self._worker(session, f"{node.node_id}w{i}", node)
                                   for node in self.nodes for i in range(WORKERS_PER_NODE)))

    async def _worker(self, session: aiohttp.ClientSession, name: str, node: LocalNode) -> None:
        seq = 0
        while not self.stop.is_set():
            seq += 1  # a key is never retried: a put that was not acknowledged leaves its key behind
            key = f"k-{name}-{seq}"
            value: JSONValue = {"w": name, "seq": seq}
            sent_at = time.monotonic()
            try:
                status, _ = await _request(session, "POST", node.url + "/api/v1/put", {"w": "2"},
                                           {"key": key, "value": value})
            except aiohttp.ClientConnectorError:
                self.outcomes["refused"] += 1
                await asyncio.sleep(REFUSED_BACKOFF_S)
                continue
            except (aiohttp.ClientError, TimeoutError) as e:
                self.outcomes[type(e).__name__] += 1
                continue
            self.outcomes[str(status)] += 1
            if status == 200:
                self.acked[key] = Ack(key, value, node.node_id, sent_at)
                self.acked_via[node.node_id] += 1


@dataclass
class Placement:
    key: str
    preference: list[str]
    holders: list[str]  # the preference nodes whose own storage holds the acknowledged value


async def _placements(cluster: LocalCluster, acks: Sequence[Ack]) -> list[Placement]:
    """Each key's preference list (asked of a node, in turn) and which of its nodes hold the value."""
    semaphore = asyncio.Semaphore(CHECK_CONCURRENCY)

    async def holds(session: aiohttp.ClientSession, node_id: str, ack: Ack) -> bool:
        status, body = await _request(session, "GET", cluster.node(node_id).url + "/admin/v1/local",
                                      {"key": ack.key})
        if status == 404:
            return False
        assert status == 200, f"{node_id} /admin/v1/local?key={ack.key}: {status} {body}"
        return any(not v["deleted"] and v["value"] == ack.value for v in body["versions"])

    async def one(session: aiohttp.ClientSession, i: int, ack: Ack) -> Placement:
        async with semaphore:
            asked = cluster.nodes[i % len(cluster.nodes)]
            status, body = await _request(session, "GET", asked.url + "/admin/v1/ring", {"key": ack.key})
            assert status == 200, f"{asked.node_id} /admin/v1/ring?key={ack.key}: {status} {body}"
            pref = list(body["key"]["preference_list"])
            held = await asyncio.gather(*(holds(session, n, ack) for n in pref))
            return Placement(ack.key, pref, [n for n, h in zip(pref, held, strict=True) if h])

    async with aiohttp.ClientSession(timeout=_timeout()) as session:
        return list(await asyncio.gather(*(one(session, i, a) for i, a in enumerate(acks))))


def _under_replicated(cluster: LocalCluster, acks: Sequence[Ack]) -> list[Placement]:
    return [p for p in asyncio.run(_placements(cluster, acks)) if len(p.holders) < 2]


def _latest_restart(ack: Ack, restarts: Sequence[Restart]) -> int | None:
    """The index of the latest restart of the node the put went to that began before the put was sent."""
    indexes = [i for i, r in enumerate(restarts) if r.node_id == ack.via and r.killed_at <= ack.sent_at]
    return indexes[-1] if indexes else None


def _describe(p: Placement, ack: Ack, restarts: Sequence[Restart]) -> str:
    """One under-replicated key, with when it was sent relative to the latest restart of the node it went to."""
    i = _latest_restart(ack, restarts)
    when = "before any restart of it"
    if i is not None:
        since = ack.sent_at - restarts[i].ready_at
        when = f"{since:+.3f}s from its restart #{i + 1} being ready" if restarts[i].ready_at else "while down"
    return f"{p.key} (put via {ack.via} {when}): preference {p.preference}, held by {p.holders}"


def _by_restart(missing: Sequence[Placement], by_key: dict[str, Ack], restarts: Sequence[Restart]) -> str:
    """How many under-replicated keys were put through each restarted node since that restart."""
    counts = Counter(_latest_restart(by_key[p.key], restarts) for p in missing)
    parts = [f"#{i + 1} {restarts[i].node_id}: {counts[i]}" for i in range(len(restarts)) if counts[i]]
    if counts[None]:
        parts.append(f"through a node not restarted yet: {counts[None]}")
    return ", ".join(parts)


def test_restarts_under_load_lose_no_acknowledged_write(tmp_path: Path) -> None:
    """12 rounds of kill -9 + restart under a W=2 load on all five ports: every acknowledged key ends up on
    at least 2 nodes of its preference list once hints are delivered."""
    started = time.monotonic()
    with running_cluster(tmp_path, NODES, durability="sync") as cluster:
        seeds = cluster.nodes[:2]  # LocalCluster's seeds are its first two nodes
        order = [cluster.nodes[i % NODES] for i in range(ROUNDS)]
        assert all(s in order for s in seeds)

        load = Load(cluster.nodes)
        thread = threading.Thread(target=load.run, name="w2-load", daemon=True)
        restarts: list[Restart] = []
        thread.start()
        try:
            wait_until(lambda: all(load.acked_via[n.node_id] >= ACKS_PER_ROUND for n in cluster.nodes), 30.0,
                       "every node has acknowledged writes", observe=lambda: (load.acked_via, load.outcomes))
            for victim in order:
                assert load.error is None and thread.is_alive(), f"the load died: {load.error!r}"
                event = Restart(victim.node_id, time.monotonic())
                restarts.append(event)
                cluster.kill(victim)  # SIGKILL, and wait until the process is gone
                restart(cluster, victim)  # waits for its /ready and for gossip to converge
                event.ready_at = time.monotonic()
                target = load.acked_via[victim.node_id] + ACKS_PER_ROUND

                def serving(node_id: str = victim.node_id, target: int = target) -> bool:
                    return load.acked_via[node_id] >= target

                wait_until(serving, 30.0, f"{victim.node_id} acknowledges writes again after its restart",
                           observe=lambda: (load.acked_via, load.outcomes))
        finally:
            load.stop.set()
            thread.join(timeout=REQUEST_TIMEOUT_S * 3)
        assert not thread.is_alive(), "the load thread did not stop"
        assert load.error is None, f"the load failed: {load.error!r}"
        load_s = time.monotonic() - started

        acks = list(load.acked.values())
        print(f"\n{len(acks)} acknowledged puts in {load_s:.1f}s ({dict(load.acked_via)}); outcomes "
              f"{dict(load.outcomes)}")
        assert len(acks) >= MIN_ACKED, f"only {len(acks)} puts acknowledged: the test means little ({load.outcomes})"

        def pending() -> dict[str, Any]:
            return {n.node_id: hints(n)["pending"] for n in cluster.nodes}

        wait_until(lambda: not any(any(p.values()) for p in pending().values()), SETTLE_S,
                   "no node has hints pending", observe=pending)

        by_key = {a.key: a for a in acks}
        check_started = time.monotonic()
        missing = _under_replicated(cluster, acks)
        if missing:  # replication past W may still be in flight: give it a bounded moment, then judge
            with contextlib.suppress(AssertionError):
                wait_until(lambda: not _under_replicated(cluster, [by_key[p.key] for p in missing]), 5.0,
                           "background replication lands")
            missing = _under_replicated(cluster, [by_key[p.key] for p in missing])
        print(f"checked {len(acks)} keys in {time.monotonic() - check_started:.1f}s")
        if missing:
            examples = "\n  ".join(_describe(p, by_key[p.key], restarts) for p in missing[:8])
            pytest.fail(
                f"{len(missing)} of {len(acks)} acknowledged keys are held by fewer than 2 nodes of their "
                f"preference list ({sum(not p.holders for p in missing)} by none of them) after {len(restarts)} "
                f"kill -9 + restarts; by the restart of the node they were put through (counted from its kill): "
                f"{_by_restart(missing, by_key, restarts)}; e.g.\n  {examples}", pytrace=False)


# -- 2. a wiped node restarted under its old name -----------------------------------------------------------------


class Api:
    """Client calls over one session; every one answers (status, body)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def put(self, node: LocalNode, key: str, value: JSONValue, context: str | None = None,
                  w: int = 3) -> tuple[int, Any]:
        body: dict[str, Any] = {"key": key, "value": value}
        if context is not None:
            body["context"] = context
        return await _request(self.session, "POST", node.url + "/api/v1/put", {"w": str(w)}, body)

    async def delete(self, node: LocalNode, key: str, context: str | None, w: int = 3) -> tuple[int, Any]:
        body: dict[str, Any] = {"key": key}
        if context is not None:
            body["context"] = context
        return await _request(self.session, "POST", node.url + "/api/v1/delete", {"w": str(w)}, body)

    async def get(self, node: LocalNode, key: str, r: int = 3) -> tuple[int, Any]:
        return await _request(self.session, "GET", node.url + "/api/v1/getValue", {"key": key, "r": str(r)})


def _with_api(fn: Callable[[Api], Any]) -> Any:
    async def go() -> Any:
        async with aiohttp.ClientSession(timeout=_timeout()) as session:
            return await fn(Api(session))
    return asyncio.run(go())


def test_wiped_node_restarted_under_its_old_name_loses_nothing(tmp_path: Path) -> None:
    """n3 loses its whole data directory and comes back as n3: its blind puts and deletes take effect at R=3,
    and after read repair every replica holds every value acknowledged before the wipe that survives."""
    with running_cluster(tmp_path, 3, durability="sync") as cluster:
        victim = cluster.node("n3")
        n1, n2 = cluster.node("n1"), cluster.node("n2")

        def led(p: list[str]) -> bool:
            return p[0] == victim.node_id

        led_keys = keys_placed(n1, "led", led, count=45)
        other_keys = keys_placed(n1, "other", lambda p: not led(p), count=15)
        fresh_keys = keys_placed(n1, "fresh", led, count=5)  # never written before the wipe
        overwritten, deleted, kept_led = led_keys[:15], led_keys[15:30], led_keys[30:]
        untouched = kept_led + other_keys
        before_wipe = led_keys + other_keys

        # Before the wipe: every key written twice (the second put with the first one's context), W=3; the led
        # keys through the victim, so it coordinates them (any replica coordinates the writes it receives), the
        # others through n1 and n2.
        old: dict[str, JSONValue] = {k: {"key": k, "phase": "before-wipe"} for k in before_wipe}

        async def write_old(api: Api) -> None:
            for i, key in enumerate(before_wipe):
                node = victim if key in led_keys else (n1, n2)[i % 2]
                status, body = await api.put(node, key, {"key": key, "phase": "first"}, w=3)
                assert status == 200, (key, status, body)
                status, body = await api.put(node, key, old[key], body["context"], w=3)
                assert status == 200, (key, status, body)

        _with_api(write_old)
        for key in before_wipe:
            for node in cluster.nodes:
                assert local_values(node, key) == [old[key]], (node.node_id, key, local_record(node, key))
        coordinators: dict[str, str] = {}  # key -> the node of its one version's dot: who coordinated it
        for key in before_wipe:
            record = local_record(n1, key)
            assert record is not None and len(record["versions"]) == 1, (key, record)
            coordinators[key] = record["versions"][0]["node"]
        victim_dots = {coordinators[k] for k in led_keys}
        assert len(victim_dots) == 1 and victim_dots.pop().partition("#")[0] == victim.node_id and not any(
            coordinators[k].partition("#")[0] == victim.node_id for k in other_keys), (
            f"the victim did not coordinate the keys led by it: {coordinators}")

        # The wipe: SIGKILL, delete the whole data directory, restart under the same id with the same flags.
        cluster.kill(victim)
        old_log = tmp_path / f"{victim.node_id}-before-wipe.log"
        shutil.copyfile(victim.log_path, old_log)  # the log lives in the data directory
        shutil.rmtree(victim.data_dir)
        assert not Path(victim.data_dir).exists()
        restart(cluster, victim)

        # Through the wiped node: blind puts (no context) and deletes with an R=3 read's context.
        new: dict[str, JSONValue] = {k: {"key": k, "phase": "after-wipe"} for k in overwritten + fresh_keys}

        async def write_new(api: Api) -> None:
            for key in overwritten + fresh_keys:
                status, body = await api.put(victim, key, new[key], w=2)
                assert status == 200, (key, status, body)
            for key in deleted:
                status, body = await api.get(victim, key, r=3)
                assert _values(status, body) == [old[key]], (key, status, body)
                status, body = await api.delete(victim, key, body["context"], w=3)
                assert status == 200, (key, status, body)

        _with_api(write_new)

        async def read_all(api: Api) -> dict[str, list[Any]]:
            readers = (n1, n2, victim)
            return {key: _values(*await api.get(readers[i % 3], key, r=3))
                    for i, key in enumerate(before_wipe + fresh_keys)}

        def problems(seen: dict[str, list[Any]]) -> dict[str, list[str]]:
            return {
                "blind puts through the wiped node not visible at R=3":
                    [k for k in overwritten + fresh_keys if new[k] not in seen[k]],
                "deletes through the wiped node not effective at R=3 (the key still reads a value)":
                    [k for k in deleted if seen[k]],
                "pre-wipe values not overwritten by the test but no longer visible at R=3":
                    [k for k in untouched if old[k] not in seen[k]],
            }

        def summary(found: dict[str, list[str]], seen: dict[str, list[Any]]) -> str:
            return "; ".join(f"{what}: {len(keys)}, e.g. {[(k, seen[k]) for k in keys[:3]]}"
                             for what, keys in found.items() if keys)

        seen = _with_api(read_all)  # these R=3 reads also start read repair
        found = problems(seen)
        if any(found.values()):
            pytest.fail(f"after wiping {victim.node_id}: {summary(found, seen)}", pytrace=False)

        # Repair: every replica of every key comes to hold what the R=3 reads answered.
        def unrepaired() -> list[tuple[str, str, list[Any]]]:
            out = []
            for key in before_wipe + fresh_keys:
                want = new.get(key) if key in new else (None if key in deleted else old[key])
                for node_id in preference(n1, key):
                    held = local_values(cluster.node(node_id), key)
                    if (want is None and held) or (want is not None and want not in held):
                        out.append((key, node_id, held))
            return out

        wait_until(lambda: not unrepaired(), SETTLE_S, "every replica holds every surviving value",
                   observe=lambda: unrepaired()[:5])
        seen = _with_api(read_all)
        found = problems(seen)
        if any(found.values()):
            pytest.fail(f"after read repair: {summary(found, seen)}", pytrace=False)
