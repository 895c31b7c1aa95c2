"""Decommission with real node processes (127.0.0.1): `POST /admin/v1/decommission` on a node makes it hand
every range it holds to the node that takes it over (pushed, then verified with temporary Merkle trees), hand
off its hints, announce `left` with no tokens, wait until every live node's ring is without it, and stop
(`net/decommission.py`).

- `test_decommissions_from_5_to_3_lose_nothing_under_load`: 5 nodes (RF 3), 2,000 keys; a W=2 load (new keys
  and overwrites with the last context, each key by one writer) and R=2 reads of acknowledged keys through
  the nodes that stay run while n5 and then n4 decommission. No acknowledged key may ever read as not found
  (503s are allowed, counted and reported); each operation must report every range done, with keys; each
  leaver's process must exit (cleanly) and every remaining ring must agree on the nodes left; afterwards
  every node of each key's final preference list holds it in its own storage, and every acknowledged key
  reads back at R=3 with its last acknowledged value (or a later attempt whose outcome was unknown).
- `test_decommission_is_refused_while_another_change_is_in_flight_and_for_the_last_nodes`: while n5 leaves
  (a slow stream), a decommission of n4 is refused (400 `change_in_progress`, naming n5) and a second POST on
  n5 answers its running operation (200, same id); once n5 has left, n4 may go (202). A 1-node cluster
  refuses to decommission its last node.
- `test_every_member_agrees_on_the_leavers_view_before_it_streams`: during that same slow decommission (observed
  once, by a module fixture), every member shows the change in flight (ring + future ring) with agreement, and
  the leaver streams only after it saw that (it never logs that it streams anyway).
- `test_hints_for_a_decommissioned_node_reach_its_successors`: hints the others hold for a node that then
  decommissions end up on every node of each key's final preference list, whether they reached the node
  before it left or (throttled) while it left. The second case was a product bug when this was written:
  hints delivered to the leaver after it had handed the range over never reached the new owner; now hints
  wait while their target leaves and go to the key's replicas once it has left. See its docstring.

Background anti-entropy is off here (`AAE_OFF`, below): an exchange would repair what a decommission failed
to hand over and mask the bug. What one replica holds is read from its own storage
(`/admin/v1/local`: no quorum, no read repair). Waiting is always on a condition with a deadline
(`wait_until`), never a bare sleep standing in for synchronisation (the load's pacing sleep only sets its
rate); every HTTP call has a timeout and goes to 127.0.0.1.
"""

from __future__ import annotations

import random
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ringkv.local import LocalNode
from tests.integration.cluster_helpers import (
    admin,
    hints,
    http_json,
    keys_placed,
    running_cluster,
    sees,
    wait_until,
)
from tests.integration.topology_helpers import (
    KeyLog,
    Load,
    exit_code,
    final_progress,
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

# So anti-entropy does not mask a decommission bug: no background exchanges at all. `--aae-interval-s 3600`
# alone is not enough: after every ring change the new (range, peer) pairs are due within 5 s
# (`cluster/aae.py`, `Schedule.first_delay_s`), so the remaining replicas would repair among themselves, soon
# after a node has left, whatever it failed to hand over. Decommission's own verification (temporary Merkle
# trees, `AntiEntropy.verify_range`) does not depend on the background loop.
AAE_OFF = ["--aae-enabled", "false", "--aae-interval-s", "3600"]
DECOMMISSION_TIMEOUT_S = 90.0  # POST to the leaver's process gone
SETTLED_TIMEOUT_S = 30.0  # the leaver gone to every remaining ring without it, agreed
LEFT_LOG = "has left the ring"


# -- decommissions ----------------------------------------------------------------------------------------------


@dataclass
class Decommission:
    node_id: str
    op_id: str
    seconds: float  # POST to the process gone
    settled_s: float  # POST to every remaining ring without it, agreed
    exit_code: int | None
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # GET /admin/v1/operations/{id}, in order
    # The operation's progress as the leaver logged it when it ended (`operation <id> done: {...}`): the API
    # answers only while the node runs, and its last phase (`left`) lasts well under a second before it stops,
    # so a poll under load can miss it.
    final: dict[str, Any] | None = None

    @property
    def last(self) -> dict[str, Any]:
        return self.snapshots[-1]

    @property
    def progress(self) -> dict[str, Any]:
        return dict(self.final if self.final is not None else self.last["progress"])

    @property
    def phases(self) -> list[str]:
        out: list[str] = []
        for s in self.snapshots:
            phase = s["progress"].get("phase")
            if phase and (not out or out[-1] != phase):
                out.append(phase)
        return out

    def summary(self) -> str:
        p = self.progress
        return (f"{self.node_id} decommissioned in {self.seconds:.1f}s (rings settled at {self.settled_s:.1f}s): "
                f"{p.get('ranges_done')}/{p.get('ranges_total')} ranges, {p.get('keys')} keys, "
                f"{p.get('bytes')} bytes, {p.get('verify_repaired')} repaired by verification; phases "
                f"{self.phases}; exit code {self.exit_code}")


def start_decommission(node: LocalNode) -> dict[str, Any]:
    status, op = post_json(node.url + "/admin/v1/decommission")
    assert status == 202, f"POST {node.node_id}/admin/v1/decommission: {status} {op}"
    assert op["kind"] == "decommission" and op["state"] == "running", op
    return dict(op)


def watch_decommission(leaver: LocalNode, op: dict[str, Any], staying: Sequence[LocalNode],
                       also: Callable[[], None] = lambda: None) -> Decommission:
    """From the POST (`op`) until the leaver's process has exited and every remaining ring is without it,
    polling the operation on the leaver while it answers (and calling `also` at every poll)."""
    started = time.monotonic()
    snapshots = [op]
    code: list[int | None] = [None]

    def gone() -> bool:
        also()
        status, doc = http_json(f"{leaver.url}/admin/v1/operations/{op['id']}")
        if status == 200:
            assert doc["state"] != "failed", f"{leaver.node_id}'s decommission failed: {doc}"
            snapshots.append(doc)
        code[0] = exit_code(leaver)
        return code[0] is not None

    wait_until(gone, DECOMMISSION_TIMEOUT_S, f"{leaver.node_id} has decommissioned and exited", poll_s=0.05,
               observe=lambda: {"operation": snapshots[-1], "log": log_lines(leaver, "decommission", "left",
                                                                             "handing", "WARNING")[-10:]})
    seconds = time.monotonic() - started
    wait_until(lambda: rings_settled(staying), SETTLED_TIMEOUT_S,
               f"every remaining ring holds exactly {[n.node_id for n in staying]}, agreed",
               observe=lambda: ring_summary(staying))
    return Decommission(leaver.node_id, op["id"], seconds, time.monotonic() - started, code[0], snapshots,
                        final_progress(leaver, op["id"]))


def assert_handed_over(d: Decommission, leaver_log: Sequence[str]) -> None:
    """What the operation reported: while it ran (the API), its ranges to hand over and their progress, never
    going back; when it ended (the leaver's log), every range done and keys pushed. And the node said it left
    and exited cleanly."""
    final = d.final
    assert final is not None, f"{d.node_id} never logged its operation {d.op_id} done: {d.summary()}"
    assert final["phase"] == "left", final
    assert final["ranges_total"] > 0 and final["ranges_done"] == final["ranges_total"], final
    assert final["keys"] > 0 and final["bytes"] > 0, final
    polled = [s["progress"] for s in d.snapshots if s["progress"]]
    assert any(p.get("phase") == "streaming" and p["ranges_total"] == final["ranges_total"] for p in polled), (
        f"GET /admin/v1/operations/{d.op_id} never showed the {final['ranges_total']} ranges streaming: {polled}")
    for name in ("ranges_done", "keys", "bytes"):
        counts = [p[name] for p in polled if name in p]
        assert counts == sorted(counts) and counts[-1] <= final[name], (name, counts, final)
    assert all(p["ranges_done"] <= p["ranges_total"] for p in polled if p.get("phase") != "leaving"), polled
    for p in polled:
        if p.get("phase") == "left":
            assert p == final, (p, final)
    assert any(LEFT_LOG in line for line in leaver_log), f"{d.node_id} never logged {LEFT_LOG!r}"
    assert d.exit_code == 0, f"{d.node_id} exited with {d.exit_code}: {[x for x in leaver_log if 'ERROR' in x][-5:]}"


# -- 1. five to three under load ---------------------------------------------------------------------------------

PRELOAD = 2000
SAMPLE = 300


def test_decommissions_from_5_to_3_lose_nothing_under_load(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 5, extra_args=AAE_OFF) as cluster:
        n1, n2, n3, n4, n5 = (cluster.node(f"n{i}") for i in range(1, 6))
        preload = [f"pre-{i:05d}" for i in range(PRELOAD)]
        answers = put_all([(cluster.nodes[i % 5], k, value(k, 0)) for i, k in enumerate(preload)], w=2)
        assert all(s == 200 for s, _ in answers), Counter(s for s, _ in answers)

        load = Load([n1, n2, n3])
        load.start()
        try:
            wait_until(lambda: load.counts["writes ok"] >= 200, 30, "the load is writing",
                       observe=load.summary)
            decommissions = []
            for leaver, staying in ((n5, [n1, n2, n3, n4]), (n4, [n1, n2, n3])):
                before = load.counts["writes ok"]
                op = start_decommission(leaver)
                d = watch_decommission(leaver, op, staying)
                decommissions.append(d)
                print(f"\n{d.summary()}; the load meanwhile: {load.counts['writes ok'] - before} writes "
                      f"acknowledged, {load.summary()}")
                # the load kept going through it (and still goes on, on the smaller ring)
                wanted = load.counts["writes ok"] + 100

                def going_on(wanted: int = wanted) -> bool:
                    return load.counts["writes ok"] >= wanted

                wait_until(going_on, 30, f"the load goes on after {leaver.node_id} left", observe=load.summary)
        finally:
            load.stop()
        print(f"load: {load.summary()}")

        for d, leaver in zip(decommissions, (n5, n4), strict=True):
            assert_handed_over(d, log_lines(leaver, ""))
        assert not load.errors, load.errors[:10]
        assert not load.not_found, (f"{len(load.not_found)} R=2 reads of acknowledged keys answered 404, "
                                    f"e.g. {load.not_found[:5]}; {load.summary()}")
        assert not load.stale, (f"{len(load.stale)} R=2 reads missed the last acknowledged write, e.g. "
                                f"{load.stale[:3]}; {load.summary()}")
        assert load.counts["writes ok"] >= 500, load.summary()

        remaining = [n1, n2, n3]
        acked = load.acknowledged()
        expected: dict[str, KeyLog] = {k: KeyLog(acked=0) for k in preload} | acked

        # Every node of each key's final preference list holds it, in its own storage: all the preloaded keys
        # (never read by a client: no read repair can have put them there) and a sample of the load's.
        sample = preload + random.Random(7).sample(sorted(acked), min(SAMPLE, len(acked)))
        prefs = preferences(n1, sample)
        assert all(len(p) == 3 and set(p) == {"n1", "n2", "n3"} for p in prefs.values()), \
            {k: p for k, p in list(prefs.items()) if set(p) != {"n1", "n2", "n3"}}

        def missing() -> dict[str, list[tuple[str, list[Any]]]]:
            out: dict[str, list[tuple[str, list[Any]]]] = {}
            for node in remaining:
                held = local_values(node, [k for k in sample if node.node_id in prefs[k]])
                bad = [(k, v) for k, v in held.items()
                       if len(v) != 1 or not expected[k].acceptable(v[0]["seq"])]
                if bad:
                    out[node.node_id] = bad
            return out

        # (replication past W of the last writes may still be in flight for a moment)
        holes: dict[str, Any] = {}
        try:
            wait_until(lambda: not missing(), 15, "every final replica holds every sampled key")
        except AssertionError:
            holes = missing()
        assert not holes, ("final replicas without the key (or with a wrong value) in their own storage: " + "; ".join(
            f"{n}: {len(b)} of {sum(n in prefs[k] for k in sample)}, e.g. {b[:3]}" for n, b in holes.items()))

        # Every acknowledged key reads back at R=3 through n1, with its last acknowledged value.
        seen = read_all(n1, sorted(expected), r=3)
        lost = sorted(k for k, (status, _) in seen.items() if status == 404)
        unavailable = sorted(k for k, (status, _) in seen.items() if status not in (200, 300, 404))
        wrong = {k: values for k, (status, values) in seen.items() if status in (200, 300)
                 and not (len(values) == 1 and expected[k].acceptable(values[0]["seq"]))}
        print(f"R=3 read of {len(expected)} acknowledged keys through n1: {len(lost)} lost, "
              f"{len(unavailable)} unavailable, {len(wrong)} wrong")
        assert not lost, f"{len(lost)} of {len(expected)} acknowledged keys lost, e.g. {lost[:10]}"
        assert not unavailable, f"{len(unavailable)} R=3 reads failed, e.g. {[(k, seen[k]) for k in unavailable[:5]]}"
        assert not wrong, f"{len(wrong)} keys read back with a wrong value, e.g. {list(wrong.items())[:5]}"


# -- 2. refusals, and what the members show while a node leaves ---------------------------------------------------

SLOW_STREAM = ["--stream-mb-s", "0.05"]  # ~52 KB/s: n5's share of 600 keys of 1 KB takes several seconds
SLOW_KEYS = 600
STREAMING_ANYWAY = "streaming anyway"  # `_await_agreement` gave up waiting for every member to show our view


@dataclass
class SlowDecommission:
    """One slow decommission of n5 (5 nodes), observed once for the tests below."""
    op: dict[str, Any]
    refused: tuple[int, Any]  # POST on n4 while n5 leaves
    n4_mode_after: str
    again: tuple[int, Any]  # a second POST on n5
    running: dict[str, Any]  # the operation, right after
    decommission: Decommission
    leaver_log: list[str]
    views: list[dict[str, Any]] = field(default_factory=list)  # members' /admin/v1/ring while n5 was leaving
    after: tuple[int, Any] = (0, None)  # POST on n4 once n5 has left

    def agreed_on_leaving(self, member: str) -> int:
        """How many polls showed `member` with a view of a change in flight (ring+future) and agreement."""
        return sum(1 for v in self.views if v.get(member, {}).get("agreed") and "+" in v[member]["view"])


@pytest.fixture(scope="module")
def slow_decommission(tmp_path_factory: pytest.TempPathFactory) -> SlowDecommission:
    with running_cluster(tmp_path_factory.mktemp("slow"), 5, extra_args=[*AAE_OFF, *SLOW_STREAM]) as cluster:
        n4, n5 = cluster.node("n4"), cluster.node("n5")
        staying = [cluster.node(f"n{i}") for i in range(1, 5)]
        keys = [f"slow-{i:05d}" for i in range(SLOW_KEYS)]
        answers = put_all([(cluster.nodes[i % 5], k, {"key": k, "pad": "x" * 1000}) for i, k in enumerate(keys)],
                          w=3)
        assert all(s == 200 for s, _ in answers), Counter(s for s, _ in answers)

        op = start_decommission(n5)
        views: list[dict[str, Any]] = []

        def watch_views() -> None:
            poll = {}
            for n in staying:
                doc = ring_of(n)
                if doc is not None:
                    poll[n.node_id] = {"view": doc["view"], "agreed": doc["agreed"], "views": doc["views"]}
            views.append(poll)

        wait_until(lambda: admin(n5, "/admin/v1/node")["mode"] == "leaving", 10, "n5 is leaving")
        # n4 must have heard that n5 is leaving before it is asked (gossip)
        wait_until(lambda: any(m["node_id"] == "n5" and m["status"] == "leaving"
                               for m in admin(n4, "/admin/v1/members")["members"]), 10, "n4 hears n5 leaving")
        refused = post_json(n4.url + "/admin/v1/decommission")
        n4_mode = admin(n4, "/admin/v1/node")["mode"]
        again = post_json(n5.url + "/admin/v1/decommission")
        running = admin(n5, f"/admin/v1/operations/{op['id']}")
        d = watch_decommission(n5, op, staying, also=watch_views)
        print(f"\n{d.summary()}")
        observed = SlowDecommission(op, refused, n4_mode, again, running, d, log_lines(n5, ""), views)
        # n5 has left: nothing is in flight any more, so n4 may go now
        observed.after = post_json(n4.url + "/admin/v1/decommission")
        return observed


def test_decommission_is_refused_while_another_change_is_in_flight_and_for_the_last_nodes(
        slow_decommission: SlowDecommission, tmp_path: Path) -> None:
    s = slow_decommission
    status, refused = s.refused
    assert status == 400 and refused.get("error") == "change_in_progress", s.refused
    assert "n5" in refused.get("message", ""), refused
    assert s.n4_mode_after == "normal", "a refused decommission changed n4's mode"

    status, again = s.again
    assert status == 200 and again["id"] == s.op["id"] and again["state"] == "running", (s.again, s.op)
    assert s.running["state"] == "running", s.running
    progress = s.running["progress"]
    assert progress["phase"] == "leaving" or progress["ranges_done"] < progress["ranges_total"], (
        f"the slow stream was not slow enough to test this: {s.running}")
    print(f"\nwhile n5 was leaving (at {s.running['elapsed_s']}s: {progress}): n4 refused with {refused}; n5 "
          f"answered its running {again['id']}")

    # the refused n4 and the repeated POST did not disturb n5's decommission
    assert_handed_over(s.decommission, s.leaver_log)
    status, accepted = s.after
    assert status == 202 and accepted["kind"] == "decommission" and accepted["state"] == "running", s.after

    with running_cluster(tmp_path, 1, replication=1, extra_args=["--read-quorum", "1", "--write-quorum", "1"],
                         name="single") as single:
        only = single.node("n1")
        status, refused = post_json(only.url + "/admin/v1/decommission")
        assert status == 400 and refused.get("error") == "change_in_progress", (status, refused)
        assert "last" in refused.get("message", ""), refused
        assert admin(only, "/admin/v1/node")["mode"] == "normal"
        assert admin(only, "/admin/v1/operations")["operations"] == []


def test_every_member_agrees_on_the_leavers_view_before_it_streams(slow_decommission: SlowDecommission) -> None:
    """While n5 leaves, every member shows the change in flight (ring + future ring) with agreement, and n5
    streams only once it saw that agreement (it does not log that it streams anyway)."""
    s = slow_decommission
    leaving_views = [v for v in s.views if any("+" in m["view"] for m in v.values())]
    assert leaving_views, f"no member ever showed n5's change in flight: {s.views[:2]}"
    anyway = [line for line in s.leaver_log if STREAMING_ANYWAY in line]
    assert not anyway, f"n5 streamed without agreement: {anyway}; members' views: {leaving_views[-1]}"
    agreed = {m: s.agreed_on_leaving(m) for m in ("n1", "n2", "n3", "n4")}
    assert all(agreed.values()), (f"not every member ever showed agreement on n5's leaving ({agreed} of "
                                  f"{len(leaving_views)} polls); e.g. {leaving_views[-1]}")


# -- 3. hints for the leaver -----------------------------------------------------------------------------------

HINTED_KEYS = 120
BASE_KEYS = 500  # of 1 KB, replicated on n4 before the pause: what its ranges carry besides the hinted keys
# Hint delivery at ~0.7 KB/s per holder (a hint is ~260 bytes): the 31-51 hints each holder keeps for n4 take
# 11-18 s to deliver, and n4's stream (0.05 MB/s, its ~500 KB) takes ~10 s: the deliveries span its decommission.
HINTS_DURING_DECOMMISSION = ["--hint-delivery-mb-s", "0.0007", "--stream-mb-s", "0.05"]


@pytest.mark.parametrize("delivery", [
    "delivered_before_it_leaves",
    "delivered_while_it_leaves",  # hints wait while their target leaves, then go to the new owners
])
def test_hints_for_a_decommissioned_node_reach_its_successors(tmp_path: Path, delivery: str) -> None:
    """4 nodes, hints on, background anti-entropy off. n4 is paused (SIGSTOP) and, once every other node sees
    it down (so no replica write is even tried: a timed-out one would still sit in n4's socket and be applied
    when it resumes), 120 keys whose preference list includes n4 are written at W=2 through n1: the node past
    each key's preference list keeps a hint for n4 (the same node that will take n4's place for the key).
    n4 is resumed (SIGCONT) and decommissioned:

    - `delivered_before_it_leaves`: only once every hint has reached n4 (then its ranges carry the keys to
      their new owners);
    - `delivered_while_it_leaves`: at once, with hint delivery throttled so that it spans the decommission:
      hints reach n4 before, during and after its stream; those still held when it has left are redirected
      to the key's replicas.

    Either way, after n4 has gone, every key must be in the own storage of all three remaining nodes (its whole
    final preference list) with its value, and read back at R=3 through each. The hint counters at n4's exit
    (how many were still held, so redirected) are printed."""
    extra = [*AAE_OFF, *(HINTS_DURING_DECOMMISSION if delivery == "delivered_while_it_leaves" else [])]
    with running_cluster(tmp_path, 4, extra_args=extra) as cluster:
        n1, n2, n3, n4 = (cluster.node(f"n{i}") for i in range(1, 5))
        remaining = [n1, n2, n3]
        base = keys_placed(n1, "base", lambda pref: "n4" in pref, count=BASE_KEYS, tries=4000)
        answers = put_all([(n1, k, {"key": k, "pad": "b" * 1000}) for k in base], w=3)
        assert all(s == 200 for s, _ in answers), Counter(s for s, _ in answers)
        keys = keys_placed(n1, "hinted", lambda pref: "n4" in pref, count=HINTED_KEYS)

        def held_for_n4() -> dict[str, int]:
            return {n.node_id: hints(n)["pending"].get("n4", 0) for n in remaining}

        cluster.signal(n4, signal.SIGSTOP)
        try:
            wait_until(lambda: all(sees(n, "n4", up=False) for n in remaining), 30, "every other node sees n4 down")
            answers = put_all([(n1, k, value(k, 0)) for k in keys], w=2)
            assert all(s == 200 for s, _ in answers), Counter(s for s, _ in answers)
            wait_until(lambda: sum(held_for_n4().values()) == HINTED_KEYS, 30,
                       f"the others hold {HINTED_KEYS} hints for n4", observe=held_for_n4)
            before = {n.node_id: hints(n) for n in remaining}
        finally:
            cluster.signal(n4, signal.SIGCONT)
        print(f"\nhints held for n4 while it was paused: {held_for_n4()}")
        if delivery == "delivered_before_it_leaves":
            wait_until(lambda: not any(held_for_n4().values()), 30, "every hint has reached n4",
                       observe=held_for_n4)

        def asked() -> dict[str, Any] | None:
            status, op = post_json(n4.url + "/admin/v1/decommission")
            assert status in (0, 202), (status, op)
            return op if status == 202 else None

        op = wait_until(asked, 20, "n4 takes the decommission request")
        d = watch_decommission(n4, op, remaining)
        at_exit = held_for_n4()
        print(f"{d.summary()}\nhints for n4 still held when it had gone (so redirected to the key's "
              f"replicas): {at_exit}")
        assert d.progress["ranges_done"] == d.progress["ranges_total"] > 0, d.summary()
        assert d.exit_code == 0, d.exit_code

        wait_until(lambda: not any(held_for_n4().values()), 60,
                   "no node holds a hint for n4 any more (delivered or redirected)", observe=held_for_n4)
        final = {n.node_id: hints(n) for n in remaining}
        assert all(h["dropped"] == before[n]["dropped"] for n, h in final.items()), final
        assert sum(final[n]["delivered"] - before[n]["delivered"] for n in final) == HINTED_KEYS, (before, final)

        prefs = preferences(n1, keys)
        assert all(set(p) == {"n1", "n2", "n3"} for p in prefs.values()), prefs
        holes = {}
        for node in remaining:  # before any client read: nothing can have been read-repaired
            held = local_values(node, keys)
            bad = sorted(k for k, v in held.items() if v != [value(k, 0)])
            if bad:
                holes[node.node_id] = bad
        assert not holes, ("remaining nodes whose own storage lacks keys written while n4 was down: " + "; ".join(
            f"{n}: {len(b)} of {len(keys)}, e.g. {b[:4]}" for n, b in holes.items()))
        for node in remaining:
            seen = read_all(node, keys, r=3)
            bad_reads = {k: s for k, s in seen.items() if s != (200, [value(k, 0)])}
            assert not bad_reads, f"R=3 via {node.node_id}: {list(bad_reads.items())[:3]}"
        for node in remaining:  # and what n4's ranges carried besides
            held = local_values(node, base)
            bad = sorted(k for k, v in held.items() if v != [{"key": k, "pad": "b" * 1000}])
            assert not bad, f"{node.node_id} lacks {len(bad)} of the {len(base)} keys n4 held before, e.g. {bad[:4]}"


def test_a_decommissioned_node_restarted_on_its_volume_stays_out_until_wiped(tmp_path: Path) -> None:
    """A kubelet restarts a container that exited, on the same volume. A node that decommissioned must not take
    that for a first start (it persisted no tokens) and join again as a new member: it stays `left`, serves
    nothing, says how to rejoin. Wiped, it joins as a new member. (Before `left` was kept in node.json, the
    restart joined and streamed the data back.)"""
    with running_cluster(tmp_path, 4, extra_args=AAE_OFF) as cluster:
        n4, staying = cluster.node("n4"), [cluster.node(f"n{i}") for i in range(1, 4)]
        keys = [f"left-{i:04d}" for i in range(200)]
        answers = put_all([(cluster.nodes[i % 4], k, value(k, 0)) for i, k in enumerate(keys)], w=3)
        assert all(s == 200 for s, _ in answers), Counter(s for s, _ in answers)
        d = watch_decommission(n4, start_decommission(n4), staying)
        assert d.exit_code == 0, d.summary()
        assert identity_file(n4)["left"] is True and identity_file(n4)["tokens"] == []

        cluster.start(n4)  # the same data directory, as a restarted container
        # /health answers while storage still opens (503 not_ready on everything else): wait for the node itself
        wait_until(lambda: http_json(n4.url + "/admin/v1/node")[0] == 200, 30, "n4 has opened its storage again")
        state = admin(n4, "/admin/v1/node")
        assert (state["mode"], state["ready"]) == ("left", False), state
        status, doc = http_json(n4.url + "/ready")
        assert status == 503 and doc["error"] == "not_ready" and "wipe" in doc["message"], (status, doc)
        assert log_lines(n4, "stays out of the ring"), log_lines(n4, "WARNING")[-5:]
        assert rings_settled(staying), ring_summary(staying)
        for node in staying:
            members = {m["node_id"]: m["status"] for m in admin(node, "/admin/v1/members")["members"]}
            assert members.get("n4") == "left", (node.node_id, members)

        cluster.stop(n4)
        for entry in Path(n4.data_dir).iterdir():  # wiped (the log aside)
            if entry.name != "node.log":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        cluster.start(n4)
        wait_until(lambda: (http_json(n4.url + "/admin/v1/node")[1] or {}).get("mode") == "normal", 60,
                   "the wiped n4 joins again",
                   observe=lambda: log_lines(n4, "WARNING")[-5:])
        wait_until(lambda: rings_settled([*staying, n4]), SETTLED_TIMEOUT_S, "every ring holds n1-n4 again",
                   observe=lambda: ring_summary([*staying, n4]))
        got = read_all(n4, keys, r=3)
        assert all(status == 200 for status, _ in got.values()), Counter(s for s, _ in got.values())
