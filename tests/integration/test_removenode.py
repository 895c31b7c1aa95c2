"""Removing and replacing a dead node, with real node processes (127.0.0.1): `POST /admin/v1/removenode
{"node": X}` on a live node re-replicates X's ranges from the remaining replicas (each gainer pulls its pieces
and verifies them with Merkle trees) and takes X out of the ring (`net/removenode.py`); a new node started
with `--replace-node X` takes X's tokens, streams their data from live replicas, and turns normal as it
announces X `left` (`net/join.py`, `take_over`). See docs/topology.md.

- `test_removenode_of_a_killed_node_loses_nothing_under_load`: 4 nodes (RF 3), 2,000 keys written at W=3; a
  W=2 load (new keys and overwrites with the last context, each key by one writer) and R=2 reads of
  acknowledged keys through n1-n3 run while n4 is SIGKILLed and, once every other node sees it down, removed
  through n1 (202 with an operation, polled to `done`). No acknowledged key may ever read as not found; every
  remaining ring must agree, without n4; every node of each key's final preference list must hold it in its
  own storage (the preloaded keys are never read by a client, so no read repair can have put them there);
  and every acknowledged key must read back at R=3 with its last acknowledged value.
- `test_replace_of_a_killed_node_takes_its_tokens_and_loses_nothing_under_load`: the same cluster, load and
  kill; then n5 is started with `--replace-node n4`. It must become normal (having streamed, every range
  done) with exactly n4's old tokens on every node's ring, n4 gone from every ring, n5's own storage holding
  every key it replicates, and nothing lost or not found.
- `test_removenode_refusals_and_idempotence`: removenode of a node that is up is refused (400
  `change_in_progress`), as are those of an unknown node (400 `unknown_node`) and of the node asked itself (400
  `invalid_node`), naming it, with
  no operation started; while a (slowed) removal of n4 runs, a second POST on n1 answers the same running
  operation (200); once it is done, removing n4 again is refused (4xx).
- `test_the_others_keep_holding_a_removed_node_down` and `test_no_other_change_starts_while_a_removal_runs`:
  what one long removal of a killed n4 (observed once, by a module fixture) shows on n2 and n3: they must
  never judge n4 up, and once they hold it leaving and down, a removenode of n4 on n2 and a decommission of
  n3 must be refused (400 `change_in_progress`). Both were product bugs when these tests were written: the
  announcement made on n4's behalf counted as a heartbeat of n4 (now it names its speaker, `by`, and is no
  heartbeat), and a change in flight counted only if its node was up, so a removal blocked no other change
  (now a removal counts while its remover is up).

Background anti-entropy is off here (`AAE_OFF`, as in test_decommission.py: the interval alone is not enough,
new (range, peer) pairs are due within 5 s of a ring change): an exchange would repair what a removal or
replace failed to stream and mask the bug. What one replica holds is read from its own storage
(`/admin/v1/local`: no quorum, no read repair). Waiting is always on a condition with a deadline
(`wait_until`), never a bare sleep standing in for synchronisation (the load's pacing sleep only sets its
rate); every HTTP call has a timeout and goes to 127.0.0.1.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ringkv.local import LocalCluster, LocalNode
from tests.integration.cluster_helpers import admin, http_json, running_cluster, sees, wait_until
from tests.integration.topology_helpers import (
    KeyLog,
    Load,
    add_nodes,
    alive,
    identity_file,
    local_values,
    log_lines,
    post_json,
    preferences,
    put_all,
    read_all,
    ring_of,
    ring_summary,
    rings_settled,
    value,
)

pytestmark = pytest.mark.slow

AAE_OFF = ["--aae-enabled", "false", "--aae-interval-s", "3600"]
PRELOAD = 2000
DOWN_TIMEOUT_S = 30.0  # SIGKILL to every other node's failure detector holding the victim down
REMOVE_TIMEOUT_S = 60.0  # POST to the operation done
REPLACE_TIMEOUT_S = 60.0  # the replacement's start to normal and ready
SETTLED_TIMEOUT_S = 30.0  # every remaining ring without the dead node, agreed
MIN_LOAD_WRITES = 300
REPLACING_LOG = "replacing n4: taking its"  # join.take_over


# -- helpers -----------------------------------------------------------------------------------------------------


def removenode(via: LocalNode, target: str) -> tuple[int, Any]:
    return post_json(via.url + "/admin/v1/removenode", {"node": target})


def operation(node: LocalNode, op_id: str) -> dict[str, Any]:
    return dict(admin(node, f"/admin/v1/operations/{op_id}"))


def watch_operation(node: LocalNode, op_id: str, timeout_s: float = REMOVE_TIMEOUT_S) -> list[dict[str, Any]]:
    """Poll `GET /admin/v1/operations/{op_id}` on `node` until it is no longer running; every answer, in
    order (the last one: done, else an AssertionError with it)."""
    snapshots: list[dict[str, Any]] = []

    def ended() -> bool:
        doc = operation(node, op_id)
        snapshots.append(doc)
        return bool(doc["state"] != "running")

    wait_until(ended, timeout_s, f"{node.node_id}'s operation {op_id} has ended", poll_s=0.1,
               observe=lambda: {"operation": snapshots[-1] if snapshots else None,
                                "log": log_lines(node, "removenode", "WARNING", "ERROR")[-10:]})
    assert snapshots[-1]["state"] == "done", f"{op_id} did not end well: {snapshots[-1]}"
    return snapshots


def preload_keys(nodes: Sequence[LocalNode]) -> dict[str, KeyLog]:
    """PRELOAD keys `pre-*` (value seq 0) written at W=3 through `nodes` in turn: on every replica before the
    test goes on. Never read by a client: no read repair can put them anywhere."""
    keys = [f"pre-{i:05d}" for i in range(PRELOAD)]
    answers = put_all([(nodes[i % len(nodes)], k, value(k, 0)) for i, k in enumerate(keys)], w=3)
    assert all(s == 200 for s, _ in answers), Counter(s for s, _ in answers)
    return {k: KeyLog(acked=0) for k in keys}


def kill_and_wait_down(cluster: LocalCluster, victim: LocalNode, observers: Sequence[LocalNode]) -> None:
    cluster.kill(victim)  # SIGKILL; returns once the process is gone
    assert not alive(victim)
    wait_until(lambda: all(sees(n, victim.node_id, up=False) for n in observers), DOWN_TIMEOUT_S,
               f"every other node sees {victim.node_id} down",
               observe=lambda: {n.node_id: http_json(n.url + "/admin/v1/members")[1] for n in observers})


def wait_load_goes_on(load: Load, more: int, what: str) -> None:
    wanted = load.counts["writes ok"] + more
    wait_until(lambda: load.running() and load.counts["writes ok"] >= wanted, 30, what, observe=load.summary)


def assert_load_clean(load: Load) -> None:
    print(f"load: {load.summary()}")
    assert not load.errors, load.errors[:10]
    assert not load.not_found, (f"{len(load.not_found)} R=2 reads of acknowledged keys answered 404, "
                                f"e.g. {load.not_found[:5]}; {load.summary()}")
    assert not load.stale, (f"{len(load.stale)} R=2 reads missed the last acknowledged write, e.g. "
                            f"{load.stale[:3]}; {load.summary()}")
    assert load.counts["writes ok"] >= MIN_LOAD_WRITES, load.summary()


def assert_gone_from_every_ring(nodes: Sequence[LocalNode], gone: str) -> None:
    """Every node's ring (with its tokens) is without `gone`, agreed, the same on all; `gone` left in every
    node's membership."""
    rings = {n.node_id: ring_of(n, tokens="1") for n in nodes}
    assert all(r is not None for r in rings.values()), rings
    for name, ring in rings.items():
        assert ring is not None
        assert gone not in {m["node_id"] for m in ring["nodes"]}, f"{name}'s ring still has {gone}: {ring['nodes']}"
        assert gone not in {owner for _, owner in ring["tokens"]}, f"{name}'s ring still gives {gone} tokens"
        assert ring["agreed"] and not ring["joining"], f"{name}: agreed {ring['agreed']}, joining {ring['joining']}"
        status = {m["node_id"]: m["status"] for m in admin(n_by(nodes, name), "/admin/v1/members")["members"]}
        assert status.get(gone) in (None, "left"), f"{name} holds {gone} as {status.get(gone)!r}, not left"
    digests = {name: ring["digest"] for name, ring in rings.items() if ring is not None}
    assert len(set(digests.values())) == 1, f"the nodes are on different rings: {digests}"


def n_by(nodes: Sequence[LocalNode], node_id: str) -> LocalNode:
    return next(n for n in nodes if n.node_id == node_id)


def assert_replicas_hold(nodes: Sequence[LocalNode], expected: dict[str, KeyLog], prefs: dict[str, list[str]],
                         only: str | None = None) -> None:
    """Every node of `nodes` (or only `only`) holds, in its own storage, every key of `expected` that its
    final preference list (`prefs`) places on it, with an acceptable value (one, no siblings). Replication
    past W of the load's last writes may still be in flight for a moment: waited for (15 s)."""
    checked = [n for n in nodes if only is None or n.node_id == only]

    def missing() -> dict[str, list[tuple[str, list[Any]]]]:
        out: dict[str, list[tuple[str, list[Any]]]] = {}
        for node in checked:
            held = local_values(node, [k for k in expected if node.node_id in prefs[k]])
            bad = [(k, [x.get("seq") for x in v]) for k, v in held.items()
                   if len(v) != 1 or not expected[k].acceptable(v[0]["seq"])]
            if bad:
                out[node.node_id] = bad
        return out

    holes: dict[str, Any] = {}
    try:
        wait_until(lambda: not missing(), 15, "every final replica holds every acknowledged key")
    except AssertionError:
        holes = missing()
    counts = {n.node_id: sum(n.node_id in prefs[k] for k in expected) for n in checked}
    print(f"own storage checked: {counts} keys replicated per node")
    assert not holes, ("final replicas without the key (or with a wrong value) in their own storage: " + "; ".join(
        f"{n}: {len(b)} of {counts[n]} (preloaded, never read: {sum(k.startswith('pre-') for k, _ in b)}), "
        f"e.g. {b[:4]}" for n, b in holes.items()))


def assert_read_back(via: LocalNode, expected: dict[str, KeyLog]) -> None:
    """Every acknowledged key reads back at R=3 through `via`, with its last acknowledged value."""
    seen = read_all(via, sorted(expected), r=3)
    lost = sorted(k for k, (status, _) in seen.items() if status == 404)
    unavailable = sorted(k for k, (status, _) in seen.items() if status not in (200, 300, 404))
    wrong = {k: values for k, (status, values) in seen.items() if status in (200, 300)
             and not (len(values) == 1 and expected[k].acceptable(values[0]["seq"]))}
    print(f"R=3 read of {len(expected)} acknowledged keys through {via.node_id}: {len(lost)} lost, "
          f"{len(unavailable)} unavailable, {len(wrong)} wrong")
    assert not lost, f"{len(lost)} of {len(expected)} acknowledged keys lost, e.g. {lost[:10]}"
    assert not unavailable, f"{len(unavailable)} R=3 reads failed, e.g. {[(k, seen[k]) for k in unavailable[:5]]}"
    assert not wrong, f"{len(wrong)} keys read back with a wrong value, e.g. {list(wrong.items())[:5]}"


# -- a. removenode of a kill -9'd node under load -----------------------------------------------------------------


def test_removenode_of_a_killed_node_loses_nothing_under_load(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 4, extra_args=AAE_OFF) as cluster:
        n1, n2, n3, n4 = (cluster.node(f"n{i}") for i in range(1, 5))
        remaining = [n1, n2, n3]
        preloaded = preload_keys(cluster.nodes)

        load = Load(remaining)
        load.start()
        try:
            wait_until(lambda: load.counts["writes ok"] >= 200, 30, "the load is writing", observe=load.summary)
            kill_and_wait_down(cluster, n4, remaining)
            status, op = removenode(n1, "n4")
            assert status == 202, f"POST n1/admin/v1/removenode n4: {status} {op}"
            assert op["kind"] == "removenode" and op["state"] == "running" and op["params"] == {"node": "n4"}, op
            snapshots = watch_operation(n1, op["id"])
            wait_until(lambda: rings_settled(remaining), SETTLED_TIMEOUT_S,
                       "every remaining ring holds exactly n1-n3, agreed", observe=lambda: ring_summary(remaining))
            wait_load_goes_on(load, 100, "the load goes on after n4 was removed")
        finally:
            load.stop()
        done = snapshots[-1]
        print(f"\nremovenode of n4: {done['elapsed_s']}s, {done['progress']}; phases "
              f"{[s['progress'].get('phase') for s in snapshots]}")
        assert_load_clean(load)

        progress = done["progress"]
        assert progress["phase"] == "left", progress
        assert progress["ranges_total"] > 0 and progress["ranges_done"] == progress["ranges_total"], progress
        assert progress["keys"] > 0, f"the removal re-replicated no keys: {progress}"
        assert_gone_from_every_ring(remaining, "n4")

        expected = preloaded | load.acknowledged()
        prefs = preferences(n1, sorted(expected))
        assert all(len(p) == 3 and set(p) == {"n1", "n2", "n3"} for p in prefs.values()), \
            {k: p for k, p in list(prefs.items()) if set(p) != {"n1", "n2", "n3"}}
        assert_replicas_hold(remaining, expected, prefs)
        assert_read_back(n1, expected)


# -- b. replace of a kill -9'd node under load --------------------------------------------------------------------


def test_replace_of_a_killed_node_takes_its_tokens_and_loses_nothing_under_load(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 4, extra_args=AAE_OFF) as cluster:
        n1, n2, n3, n4 = (cluster.node(f"n{i}") for i in range(1, 5))
        survivors = [n1, n2, n3]
        ring = ring_of(n1, tokens="1")
        assert ring is not None
        old_tokens = sorted(t for t, owner in ring["tokens"] if owner == "n4")
        assert old_tokens == sorted(n4.tokens) and len(old_tokens) == 16, (old_tokens, n4.tokens)
        preloaded = preload_keys(cluster.nodes)

        load = Load(survivors)
        load.start()
        try:
            wait_until(lambda: load.counts["writes ok"] >= 200, 30, "the load is writing", observe=load.summary)
            kill_and_wait_down(cluster, n4, survivors)
            (n5,) = add_nodes(cluster, ["n5"])
            shared_args = list(cluster.extra_args)
            cluster.extra_args = [*shared_args, "--replace-node", "n4"]  # n5 only
            try:
                cluster.start(n5)
            finally:
                cluster.extra_args = shared_args
            seen_modes: Counter[str] = Counter()

            def normal() -> dict[str, Any] | None:
                assert alive(n5), f"n5 exited while replacing n4; see {n5.log_path}"
                status, doc = http_json(n5.url + "/admin/v1/node")
                seen_modes[doc["mode"] if status == 200 else ""] += 1
                ready, _ = http_json(n5.url + "/ready")
                return doc if status == 200 and doc["mode"] == "normal" and ready == 200 else None

            node_doc = wait_until(normal, REPLACE_TIMEOUT_S, "n5 is normal and ready", poll_s=0.1,
                                  observe=lambda: (seen_modes, log_lines(n5, "ringkv.")[-5:]))
            final = [*survivors, n5]
            wait_until(lambda: rings_settled(final), SETTLED_TIMEOUT_S, "every ring holds exactly n1-n3 and n5",
                       observe=lambda: ring_summary(final))
            load.via.append(n5)  # a normal member now: the load goes through it too
            wait_load_goes_on(load, 100, "the load goes on after n5 replaced n4")
        finally:
            load.stop()
        streamed = node_doc["streaming"]
        print(f"\nn5 replaced n4: modes seen {dict(seen_modes)}; streamed {len(streamed)} ranges, "
              f"{sum(r['keys'] for r in streamed)} keys")
        assert_load_clean(load)

        assert log_lines(n5, REPLACING_LOG), f"n5's log does not show it taking n4's tokens ({REPLACING_LOG!r})"
        assert streamed and all(r["state"] == "done" for r in streamed), f"n5's ranges: {streamed}"
        assert sum(r["keys"] for r in streamed) > 0, f"n5 streamed no keys: {streamed}"
        identity = identity_file(n5)
        assert sorted(identity["tokens"]) == old_tokens, "n5's node.json does not hold exactly n4's old tokens"
        assert identity["joining"] is False, "n5's node.json still says joining once it is normal"
        for node in final:
            ring = ring_of(node, tokens="1")
            assert ring is not None, node.node_id
            owned = sorted(t for t, owner in ring["tokens"] if owner == "n5")
            assert owned == old_tokens, f"{node.node_id}'s ring does not give n5 exactly n4's old tokens"
        assert_gone_from_every_ring(final, "n4")

        expected = preloaded | load.acknowledged()
        prefs = preferences(n1, sorted(expected))
        assert all(len(p) == 3 and "n4" not in p for p in prefs.values()), \
            {k: p for k, p in list(prefs.items()) if "n4" in p}
        assert sum("n5" in p for p in prefs.values()) >= len(expected) // 2, "n5 replicates too few keys"
        assert_replicas_hold(final, expected, prefs, only="n5")  # before any R=3 read could repair it
        assert_replicas_hold(final, expected, prefs)
        assert_read_back(n1, expected)


# -- c. refusals and idempotence ----------------------------------------------------------------------------------

SLOW_KEYS = 600
SLOW_STREAM = ["--stream-mb-s", "0.1"]  # the gainers pull ~0.5 MB of n4's ranges at 0.1 MB/s: a few seconds


def test_removenode_refusals_and_idempotence(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 4, extra_args=[*AAE_OFF, *SLOW_STREAM]) as cluster:
        n1, n2, n3, n4 = (cluster.node(f"n{i}") for i in range(1, 5))
        remaining = [n1, n2, n3]
        keys = [f"slow-{i:05d}" for i in range(SLOW_KEYS)]
        answers = put_all([(cluster.nodes[i % 4], k, {"key": k, "pad": "x" * 1000}) for i, k in enumerate(keys)],
                          w=3)
        assert all(s == 200 for s, _ in answers), Counter(s for s, _ in answers)

        def removals(node: LocalNode) -> list[dict[str, Any]]:
            return [op for op in admin(node, "/admin/v1/operations")["operations"] if op["kind"] == "removenode"]

        # n4 is up: refused, and nothing started
        status, refused = removenode(n1, "n4")
        assert status == 400 and refused.get("error") == "change_in_progress", (status, refused)
        assert "up" in refused.get("message", ""), refused
        # an unknown node, and the node asked itself: refused, naming the node
        for target in ("n9", "n1"):
            status, refused = removenode(n1, target)
            print(f"\nremovenode {target} on n1: {status} {refused}")
            assert 400 <= status < 500 and isinstance(refused, dict) and refused.get("error"), (target, status,
                                                                                                  refused)
            assert target in refused.get("message", "") or "itself" in refused.get("message", ""), refused
            # a stable code that says what is wrong (not "a change is in progress": waiting would not help)
            assert refused["error"] == {"n9": "unknown_node", "n1": "invalid_node"}[target], refused
        assert removals(n1) == [], removals(n1)
        assert all(admin(n, "/admin/v1/node")["mode"] == "normal" for n in cluster.nodes)
        ring = ring_of(n1)
        assert ring is not None and {m["node_id"] for m in ring["nodes"]} == {"n1", "n2", "n3", "n4"}, ring

        kill_and_wait_down(cluster, n4, remaining)
        status, op = removenode(n1, "n4")
        assert status == 202 and op["state"] == "running", (status, op)
        again = removenode(n1, "n4")
        running = operation(n1, op["id"])
        snapshots = watch_operation(n1, op["id"])
        wait_until(lambda: rings_settled(remaining), SETTLED_TIMEOUT_S,
                   "every remaining ring holds exactly n1-n3, agreed", observe=lambda: ring_summary(remaining))
        after = removenode(n1, "n4")
        print(f"second POST: {again}; once done ({snapshots[-1]['progress']}): {after}")

        status, doc = again
        assert status == 200 and doc["id"] == op["id"] and doc["state"] == "running", (again, op)
        assert running["state"] == "running", f"the removal was over before the second POST was checked: {running}"
        assert [o["id"] for o in removals(n1)] == [op["id"]], removals(n1)
        status, doc = after
        assert 400 <= status < 500 and doc.get("error") and "n4" in doc.get("message", ""), after
        assert [o["id"] for o in removals(n1)] == [op["id"]], removals(n1)
        progress = snapshots[-1]["progress"]
        assert progress["ranges_done"] == progress["ranges_total"] > 0 and progress["keys"] > 0, progress


# -- d. what the other nodes make of a removal in flight -------------------------------------------------------

LONG_KEYS = 2000
LONG_STREAM = ["--stream-mb-s", "0.03"]  # ~1.5 MB of n4's ranges to pull: the removal runs for most of a minute
HELD_DOWN_AGAIN_S = 40.0  # the POST to n2 and n3 both holding n4 leaving and down (phi, after the last news)


@dataclass
class RemovalInFlight:
    """One long removal of n4 (killed) run by n1, watched from n2 and n3, and the changes asked of them meanwhile
    (once both hold n4 leaving and down, so the failure detector is not what refuses them)."""
    op: dict[str, Any]
    views: list[tuple[float, str, str, bool]] = field(default_factory=list)  # (s after POST, node, n4 status, up)
    removal_on_n2: tuple[int, Any] = (0, None)
    decommission_on_n3: tuple[int, Any] = (0, None)
    running_then: dict[str, Any] = field(default_factory=dict)  # n1's operation right after those POSTs
    logs: dict[str, list[str]] = field(default_factory=dict)

    def seen_up(self) -> list[tuple[float, str, str, bool]]:
        return [v for v in self.views if v[3]]


@pytest.fixture(scope="module")
def removal_in_flight(tmp_path_factory: pytest.TempPathFactory) -> RemovalInFlight:
    with running_cluster(tmp_path_factory.mktemp("long"), 4, extra_args=[*AAE_OFF, *LONG_STREAM]) as cluster:
        n1, n2, n3, n4 = (cluster.node(f"n{i}") for i in range(1, 5))
        keys = [f"long-{i:05d}" for i in range(LONG_KEYS)]
        answers = put_all([(cluster.nodes[i % 4], k, {"key": k, "pad": "x" * 1000}) for i, k in enumerate(keys)],
                          w=3)
        assert all(s == 200 for s, _ in answers), Counter(s for s, _ in answers)
        kill_and_wait_down(cluster, n4, [n1, n2, n3])
        status, op = removenode(n1, "n4")
        assert status == 202, (status, op)
        started = time.monotonic()
        seen = RemovalInFlight(op)

        def held_down_and_leaving() -> bool:
            assert operation(n1, op["id"])["state"] == "running", "the removal ended: the stream was not slow enough"
            now = {}
            for node in (n2, n3):
                member = next(m for m in admin(node, "/admin/v1/members")["members"] if m["node_id"] == "n4")
                now[node.node_id] = (member["status"], bool(member["up"]))
                seen.views.append((round(time.monotonic() - started, 1), node.node_id, *now[node.node_id]))
            return all(v == ("leaving", False) for v in now.values())

        try:
            wait_until(held_down_and_leaving, HELD_DOWN_AGAIN_S, "n2 and n3 both hold n4 leaving and down",
                       poll_s=0.1, observe=lambda: seen.views[-4:])
        except AssertionError as e:  # not what the tests below check: a setup failure, not an expected one
            raise RuntimeError(f"could not observe the removal in flight: {e}") from e
        seen.removal_on_n2 = removenode(n2, "n4")
        seen.decommission_on_n3 = post_json(n3.url + "/admin/v1/decommission")
        seen.running_then = operation(n1, op["id"])
        seen.logs = {n.node_id: log_lines(n, "n4 is now", "streaming anyway", "operation") for n in (n1, n2, n3)}
        up = seen.seen_up()
        print(f"\nn4 seen up (after its SIGKILL) in {len(up)} of {len(seen.views)} polls of n2/n3, from "
              f"{up[0][0] if up else '-'}s to {up[-1][0] if up else '-'}s after the POST; held down and leaving "
              f"at {seen.views[-1][0]}s; then removenode on n2: {seen.removal_on_n2}; decommission on n3: "
              f"{seen.decommission_on_n3}; n1's removal meanwhile: {seen.running_then['progress']}")
        return seen


def test_the_others_keep_holding_a_removed_node_down(removal_in_flight: RemovalInFlight) -> None:
    """n4 is dead all along: no node may judge it up because n1 announced it leaving on its behalf."""
    up = removal_in_flight.seen_up()
    assert not up, (f"n2/n3 held the killed n4 up in {len(up)} polls during its removal, e.g. {up[:4]}; logs: "
                    f"{ {n: lines[-4:] for n, lines in removal_in_flight.logs.items()} }")


def test_no_other_change_starts_while_a_removal_runs(removal_in_flight: RemovalInFlight) -> None:
    """While n1 removes n4, a removenode of n4 on n2 and a decommission of n3 are refused (400
    `change_in_progress`), as docs/topology.md has it for every change."""
    seen = removal_in_flight
    assert seen.running_then["state"] == "running", seen.running_then
    for name, (status, doc) in (("removenode n4 on n2", seen.removal_on_n2),
                                ("decommission on n3", seen.decommission_on_n3)):
        assert status == 400 and isinstance(doc, dict) and doc.get("error") == "change_in_progress", (
            f"{name} while n1's removal of n4 runs ({seen.running_then['progress']}): {status} {doc}")
