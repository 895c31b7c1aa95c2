"""Joins that stream their data, with real node processes (127.0.0.1): a node started with no `--tokens`
into a ring that has members waits its turn, takes tokens, streams every range it gains from a current
replica, verifies it, and only then becomes normal (docs/topology.md).

- `test_joins_from_3_to_5_lose_nothing_under_load`: 3 nodes, 2,000 keys; a W=2 load (overwrites with the
  last context, and new keys, each key by one writer) and R=2 reads of acknowledged keys through random
  nodes run while n4 joins, then n5. No acknowledged key may ever read as not found; afterwards each joiner's
  own storage holds every acknowledged key it replicates, and every acknowledged key reads back at R=3 with
  its last acknowledged value (or a later attempt that may have been applied). The joiners must have
  streamed (their ranges done, with keys) and `/ready` must not have answered before they were normal.
- `test_two_nodes_started_at_once_get_distinct_tokens_and_one_ring`: n4 and n5 started at the same moment
  take disjoint tokens, and all five nodes end on one ring (same digest, agreed, no conflicts), joined one
  after the other.
- `test_a_joiner_killed_mid_stream_resumes_and_loses_nothing`: 3,000 keys of ~1 KB; n4 joins with a slow
  stream (0.3 MB/s) and is SIGKILLed mid-stream; writes go on (W=2); restarted, it resumes the join and then
  holds every key it replicates (its own storage, read before any quorum read could repair it), and every
  key reads back at R=3.
- `test_a_joining_node_shows_its_progress_while_it_streams` and
  `test_every_member_agrees_on_a_joiners_view_before_it_streams`: what one slow join (observed once, by a
  module fixture) shows: the joiner's `/admin/v1/node` while it streams, and the members' `/admin/v1/ring`
  views (both were product bugs when these tests were written: no HTTP until the join was over, and
  the gossiped view cut to 32 characters so members never agreed).

Anti-entropy runs only every hour here (`--aae-interval-s 3600`): a background exchange would repair what
a join failed to stream and mask the bug. Waiting is always on a condition with a deadline (`wait_until`),
never a bare sleep standing in for synchronisation (the load's pacing sleeps only set its rate); every HTTP
call has a timeout and goes to 127.0.0.1.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ringkv.local import LocalCluster, LocalNode
from tests.integration.cluster_helpers import (
    admin,
    http_json,
    running_cluster,
    sees,
    wait_until,
)
from tests.integration.topology_helpers import (
    REQUEST_TIMEOUT_S,
    Load,
    add_nodes,
    alive,
    identity_file,
    local_values,
    missing_on,
    preferences,
    preload,
    put_all,
    read_all,
    ring_holds,
    ring_summary,
    timed_log_lines,
)

pytestmark = pytest.mark.slow

AAE_OFF = ["--aae-interval-s", "3600"]  # no background exchange during the test: it would mask a missed range
JOIN_TIMEOUT_S = 90.0  # start to normal (3 gossip rounds, the turn, agreement (<= 10 s here), the stream)
SETTLED_TIMEOUT_S = 30.0  # normal on the joiner to every node's ring holding it, agreed
POLL_S = 0.05
PAD_1K = "x" * 1000
NODE_STREAMING_SINCE = "joining: streaming"  # the joiner's log, when its movements start
NODE_STREAMED = "joining: streamed and verified"
NODE_JOINED = "joined cluster"
NODE_ALLOCATED = "allocated"
NODE_WAITING_TURN = "for our turn to join"
NODE_RESUMING = "resuming the join of"
NODE_STREAMING_ANYWAY = "streaming anyway"


# -- joiners ----------------------------------------------------------------------------------------------------


def wal_bytes(node: LocalNode) -> int:
    """Bytes in `node`'s data commit logs (not the hints'): what it has merged in so far."""
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(node.data_dir, "wal-*.log")))


@dataclass
class Join:
    """What one join looked like from outside: its /ready and /admin/v1/node polled from its start."""

    node: LocalNode
    started: float
    normal_at: float = 0.0
    polls: int = 0
    modes: Counter[str] = field(default_factory=Counter)  # /admin/v1/node answers by mode ("" = no answer)
    ready_too_early: list[str] = field(default_factory=list)  # /ready answered 200 and then mode != normal
    streaming: list[dict[str, Any]] = field(default_factory=list)  # /admin/v1/node "streaming" once normal
    observed: list[dict[str, Any]] = field(default_factory=list)  # /admin/v1/node answers before normal

    @property
    def seconds(self) -> float:
        return self.normal_at - self.started

    @property
    def keys(self) -> int:
        return sum(int(r["keys"]) for r in self.streaming)

    @property
    def bytes(self) -> int:
        return sum(int(r["bytes"]) for r in self.streaming)

    def summary(self) -> str:
        return (f"{self.node.node_id}: normal {self.seconds:.1f}s after its start, streamed {len(self.streaming)} "
                f"ranges, {self.keys} keys, {self.bytes / 1e6:.2f} MB; /admin/v1/node answers before normal: "
                f"{len(self.observed)} of {self.polls} polls; modes seen {dict(self.modes)}")


def poll_join(join: Join) -> bool:
    """One poll of the joiner's /ready, then its /admin/v1/node; True once it is normal and ready. A /ready 200
    followed by a mode other than normal is recorded as too early (a mode never goes back from normal, so the
    order of the two polls makes this exact)."""
    node = join.node
    if join.normal_at:
        return True
    if not alive(node):
        raise AssertionError(f"{node.node_id} exited while joining; see {node.log_path}")
    join.polls += 1
    ready_status, _ = http_json(node.url + "/ready")
    status, body = http_json(node.url + "/admin/v1/node")
    mode = body["mode"] if status == 200 else ""
    join.modes[mode] += 1
    if ready_status == 200 and mode != "normal":
        join.ready_too_early.append(f"/ready 200 at +{time.monotonic() - join.started:.2f}s, mode {mode!r}")
    if status == 200 and mode != "normal":
        join.observed.append(body)
    if ready_status == 200 and mode == "normal":
        join.normal_at = time.monotonic()
        join.streaming = list(body["streaming"])
        return True
    return False


def watch_joins(cluster: LocalCluster, joins: Sequence[Join], timeout_s: float = JOIN_TIMEOUT_S) -> None:
    """Poll every joiner (`poll_join`, all of them each round) until each is normal and ready, then until every
    live node's ring holds them all, agreed, with no join in flight."""
    def all_normal() -> bool:
        return all([poll_join(j) for j in joins])  # a list: every joiner is polled each round

    names = ", ".join(j.node.node_id for j in joins)
    wait_until(all_normal, timeout_s, f"{names} normal and ready", poll_s=POLL_S,
               observe=lambda: [(j.node.node_id, j.modes, timed_log_lines(j.node, "ringkv.node")[-2:]) for j in joins])
    wait_until(lambda: all(ring_holds(cluster, j.node.node_id) for j in joins), SETTLED_TIMEOUT_S,
               f"every node's ring holds {names}, agreed", observe=lambda: ring_summary(cluster.nodes))


def watch_join(cluster: LocalCluster, join: Join) -> Join:
    watch_joins(cluster, [join])
    return join


def start_join(cluster: LocalCluster, node: LocalNode) -> Join:
    join = Join(node, time.monotonic())
    cluster.start(node)
    return join


def assert_streamed_before_ready(join: Join) -> None:
    """The joiner received its data by streaming (every range done, some keys), and /ready did not answer
    before it was normal; its log shows the stream finished before it joined."""
    name = join.node.node_id
    assert join.streaming, f"{name} shows no streamed ranges: it did not join by streaming"
    assert all(r["state"] == "done" for r in join.streaming), f"{name} ranges not all done: {join.streaming}"
    assert join.keys > 0, f"{name} streamed no keys: {join.streaming}"
    assert not join.ready_too_early, f"{name}'s /ready answered before it was normal: {join.ready_too_early}"
    streamed, joined = timed_log_lines(join.node, NODE_STREAMED), timed_log_lines(join.node, NODE_JOINED)
    assert streamed and joined and streamed[-1][0] <= joined[-1][0], \
        f"{name}'s log does not show the stream finishing before it joined: {streamed} {joined}"


# -- 1. from 3 to 5 nodes under load ----------------------------------------------------------------------------

PRELOAD_KEYS = 2000
WRITERS = 4
READERS = 4
NEW_KEY_SHARE = 0.3  # of a writer's puts; the others overwrite one of its keys with the last context
PACE_S = 0.01  # each worker's pause between requests (sets the load's rate, ~600 requests/s in all)
MIN_LOAD_WRITES = 1000  # acknowledged during the two joins (~2,000 on an idle machine; joins take ~10 s each)


def join_load(targets: Sequence[LocalNode]) -> Load:
    """W=2 puts (new keys, and overwrites with the last context, going on after an unknown outcome: siblings
    are allowed for) by WRITERS, and R=2 reads of any acknowledged key by READERS, through random targets."""
    return Load(targets, WRITERS, PACE_S, readers=READERS, read_after_write=False,
                overwrite_share=1 - NEW_KEY_SHARE, retire_unknown=False, pad=0, prefix="new")


def test_joins_from_3_to_5_lose_nothing_under_load(tmp_path: Path) -> None:
    """n4, then n5, join a 3-node cluster under a W=2/R=2 load: no acknowledged key is ever not found, each
    joiner holds everything it replicates, and everything acknowledged reads back at R=3."""
    with running_cluster(tmp_path, nodes=3, extra_args=AAE_OFF) as cluster:
        founders = list(cluster.nodes)
        load = join_load(founders)
        preload(load, founders, PRELOAD_KEYS)
        n4, n5 = add_nodes(cluster, ["n4", "n5"])

        load.start()
        joins: list[Join] = []
        try:
            wait_until(lambda: load.counts["writes ok"] >= 100 and load.counts["reads 200"] >= 100, 30.0,
                       "the load is running", observe=load.summary)
            for joiner in (n4, n5):
                assert load.running(), f"the load died: {load.error!r}"
                joins.append(watch_join(cluster, start_join(cluster, joiner)))
                load.via.append(joiner)  # a normal member now: the load goes through it too
                wanted = load.counts["writes ok"] + 200

                def writing(wanted: int = wanted) -> bool:
                    return load.counts["writes ok"] >= wanted

                wait_until(writing, 30.0, f"writes are acknowledged after {joiner.node_id} joined",
                           observe=load.summary)
        finally:
            load.stop()  # asserts that the load's thread stopped, and did not fail

        acked = load.acknowledged()
        print(f"\nload: {load.summary()}")
        for join in joins:
            print("join", join.summary())
        assert load.counts["writes ok"] >= MIN_LOAD_WRITES, f"too little load to mean much: {load.summary()}"
        assert not load.not_found, (f"{len(load.not_found)} R=2 reads of acknowledged keys answered not found "
                                    f"during the joins, e.g. {load.not_found[:10]}")
        for join in joins:
            assert_streamed_before_ready(join)

        # Each joiner's own storage first (a quorum read would repair it): with anti-entropy off, only the
        # stream and the writes sent to it as a pending replica can have put its keys there.
        n1 = cluster.node("n1")
        prefs = preferences(n1, sorted(acked))
        for joiner in (n4, n5):
            missing = missing_on(joiner, acked, prefs)
            assert not missing, (f"{joiner.node_id} lacks the last acknowledged write of {len(missing)} keys it "
                                 f"replicates, e.g. {missing[:10]}")

        answers = read_all(n1, sorted(acked), r=3)
        failed = {k: s for k, (s, _) in answers.items() if s not in (200, 300, 404)}
        assert not failed, f"{len(failed)} R=3 reads failed with everything up: {list(failed.items())[:10]}"
        not_found = [k for k, (s, _) in answers.items() if s == 404]
        seqs = {k: [v["seq"] for v in values] for k, (_, values) in answers.items()}
        lost = [f"{k}: seq {acked[k].acked}, reads {seqs[k]}" for k in acked if k not in not_found
                and not acked[k].current(seqs[k])]
        stale = [f"{k}: seq {acked[k].acked}, reads {seqs[k]}" for k in acked
                 if not all(acked[k].acceptable(s) for s in seqs[k])]
        print(f"final R=3 check of {len(acked)} keys: {len(not_found)} not found, {len(lost)} lost, "
              f"{len(stale)} with an overwritten value, {sum(len(v) > 1 for v in seqs.values())} with siblings")
        assert not not_found, f"{len(not_found)} acknowledged keys not found at R=3, e.g. {not_found[:10]}"
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:10]}"
        assert not stale, f"{len(stale)} keys show a value their last acknowledged write replaced: {stale[:10]}"


# -- 2. two nodes started at the same moment ----------------------------------------------------------------------


def test_two_nodes_started_at_once_get_distinct_tokens_and_one_ring(tmp_path: Path) -> None:
    """n4 and n5 started together: disjoint tokens, one ring of five on every node (same digest, agreed, no
    conflicts), one join after the other, and the data still all there."""
    with running_cluster(tmp_path, nodes=3, extra_args=AAE_OFF) as cluster:
        n1 = cluster.node("n1")
        keys = [f"k-{i}" for i in range(300)]
        answers = put_all([(n1, k, {"k": k}, None) for k in keys])
        assert all(s == 200 for s, _ in answers), Counter(s for s, _ in answers)
        n4, n5 = add_nodes(cluster, ["n4", "n5"])
        joins = [start_join(cluster, n4), start_join(cluster, n5)]
        watch_joins(cluster, joins, timeout_s=2 * JOIN_TIMEOUT_S)
        for join in joins:
            print("\njoin", join.summary())

        tokens = {n.node_id: set(identity_file(n)["tokens"]) for n in (n4, n5)}
        assert all(len(t) == 16 for t in tokens.values()), {k: len(t) for k, t in tokens.items()}
        assert not tokens["n4"] & tokens["n5"], f"n4 and n5 took the same tokens: {tokens['n4'] & tokens['n5']}"

        full = {n.node_id: admin(n, "/admin/v1/ring", tokens="1") for n in cluster.nodes}
        digests = {name: body["digest"] for name, body in full.items()}
        assert len(set(digests.values())) == 1, f"the nodes are on different rings: {digests}"
        for name, body in full.items():
            assert body["agreed"], f"{name} does not see agreement: {body['views']}"
            assert not body["conflicts"], f"{name} reports ring conflicts: {body['conflicts']}"
            assert sorted(m["node_id"] for m in body["nodes"]) == ["n1", "n2", "n3", "n4", "n5"], body["nodes"]
            owned = {joiner: {t for t, o in body["tokens"] if o == joiner} for joiner in ("n4", "n5")}
            assert owned == tokens, f"{name}'s ring does not give n4 and n5 the tokens they took"

        # One after the other: the second allocated its tokens only once the first had joined.
        allocated = {n.node_id: timed_log_lines(n, NODE_ALLOCATED)[-1][0] for n in (n4, n5)}
        joined = {n.node_id: timed_log_lines(n, NODE_JOINED)[-1][0] for n in (n4, n5)}
        first, second = sorted(allocated, key=allocated.__getitem__)
        waiting = {n.node_id: [line for _, line in timed_log_lines(n, NODE_WAITING_TURN)] for n in (n4, n5)}
        print(f"{first} allocated at {allocated[first].time()}, joined at {joined[first].time()}; {second} "
              f"allocated at {allocated[second].time()}, joined at {joined[second].time()}; waiting lines: "
              f"{ {k: len(v) for k, v in waiting.items()} } {waiting[second][:1]}")
        assert allocated[second] >= joined[first], (
            f"{second} allocated its tokens at {allocated[second]} while {first} was still joining (it joined at "
            f"{joined[first]}): the joins were not one at a time")
        turn = {n.node_id: (identity_file(n)["generation"], n.node_id) for n in (n4, n5)}
        assert first == min(turn, key=turn.__getitem__), \
            f"{first} went first, but the turn is the earliest (generation, node id): {turn}"
        for join in joins:
            assert_streamed_before_ready(join)

        reads = read_all(n1, keys, r=3)
        wrong = {k: v for k, v in reads.items() if v != (200, [{"k": k}])}
        assert not wrong, f"{len(wrong)} keys read back wrong after the joins: {list(wrong.items())[:10]}"


# -- 3. a joiner killed mid-stream ----------------------------------------------------------------------------------

RESUME_KEYS = 3000
SLOW_STREAM = ["--stream-mb-s", "0.3"]  # ~2.3 MB to stream at 0.3 MB/s: several seconds to kill it in
KILL_AFTER_BYTES = 500_000  # merged into its commit log: past the limiter's first burst (0.3 MB), mid-stream
DEAD_WRITES = 300
DEAD_OVERWRITES = 200
MIN_CHECKED = 300


def test_a_joiner_killed_mid_stream_resumes_and_loses_nothing(tmp_path: Path) -> None:
    """n4 is SIGKILLed while streaming; writes go on; restarted, it resumes the join, becomes normal, holds
    every key it replicates, and every key reads back at R=3."""
    with running_cluster(tmp_path, nodes=3, extra_args=AAE_OFF) as cluster:
        founders = list(cluster.nodes)
        expected: dict[str, int] = {}
        contexts: dict[str, str] = {}
        keys = [f"big-{i}" for i in range(RESUME_KEYS)]
        answers = put_all([(founders[i % 3], k, {"key": k, "seq": 1, "pad": PAD_1K}, None)
                           for i, k in enumerate(keys)])
        for key, (status, body) in zip(keys, answers, strict=True):
            assert status == 200, f"preload put {key}: {status} {body}"
            expected[key], contexts[key] = 1, body["context"]

        (n4,) = add_nodes(cluster, ["n4"])
        shared_args = list(cluster.extra_args)
        cluster.extra_args = [*shared_args, *SLOW_STREAM]  # only n4 is started with it (receivers only)
        try:
            first = start_join(cluster, n4)
        finally:
            cluster.extra_args = shared_args  # the restart streams at the default rate
        # The joiner serves no HTTP until it is normal (see test_a_joining_node_shows_its_progress...), so its
        # stream is seen in its log and in what it has merged into its commit log.
        wait_until(lambda: timed_log_lines(n4, NODE_STREAMING_SINCE) and wal_bytes(n4) > KILL_AFTER_BYTES,
                   JOIN_TIMEOUT_S, "n4 is streaming and has merged part of its data",
                   observe=lambda: (alive(n4), wal_bytes(n4), timed_log_lines(n4, "ringkv.node")[-2:]))
        streamed_s = time.monotonic() - first.started
        cluster.kill(n4)
        killed_at_bytes = wal_bytes(n4)
        assert not timed_log_lines(n4, NODE_STREAMED), \
            "n4 finished streaming before it was killed: the test means little"
        identity = identity_file(n4)
        assert identity["joining"] is True and len(identity["tokens"]) == 16, \
            f"n4's node.json after the kill: joining {identity['joining']}, {len(identity['tokens'])} tokens"

        # The cluster keeps taking writes (W=2) meanwhile: new keys, and overwrites with the last context.
        dead_keys = [f"dead-{i}" for i in range(DEAD_WRITES)]
        overwritten = keys[:DEAD_OVERWRITES]
        writes = [(founders[i % 3], k, {"key": k, "seq": 2, "pad": PAD_1K}, contexts.get(k))
                  for i, k in enumerate(dead_keys + overwritten)]
        half = len(writes) // 2
        answers = put_all(writes[:half])  # at once, while the others may still think n4 is up
        wait_until(lambda: all(sees(n, "n4", up=False) for n in founders), 30.0, "every founder sees n4 down")
        answers += put_all(writes[half:])
        refused = [(w[1], s, b) for w, (s, b) in zip(writes, answers, strict=True) if s != 200]
        assert not refused, f"{len(refused)} W=2 writes failed while the joiner was dead: {refused[:5]}"
        for _, key, _, _ in writes:
            expected[key] = 2

        second = watch_join(cluster, start_join(cluster, n4))
        print(f"\nfirst attempt: killed {streamed_s:.1f}s after its start with {killed_at_bytes / 1e6:.2f} MB in its "
              f"commit log; resumed join {second.summary()}")
        assert timed_log_lines(n4, NODE_RESUMING), "n4's log does not show it resuming its join"
        assert_streamed_before_ready(second)
        assert identity_file(n4)["joining"] is False, "n4's node.json still says joining once it is normal"

        # n4's own storage before any quorum read (read repair would fill it): every key it replicates.
        n1 = cluster.node("n1")
        prefs = preferences(n1, sorted(expected))
        mine = sorted(k for k, p in prefs.items() if "n4" in p)
        assert len(mine) >= MIN_CHECKED, f"only {len(mine)} keys placed on n4"
        held = local_values(n4, mine)
        missing = [f"{k} (seq {expected[k]}, holds {[v['seq'] for v in held[k]]})" for k in mine
                   if [v["seq"] for v in held[k]] != [expected[k]]]
        print(f"n4 replicates {len(mine)} of {len(expected)} keys; {len(missing)} not held as written")
        assert not missing, f"n4 does not hold {len(missing)} of the {len(mine)} keys it replicates as last " \
                            f"written, e.g. {missing[:10]}"

        reads = read_all(n1, sorted(expected), r=3)
        wrong = {k: (s, [v.get("seq") for v in values]) for k, (s, values) in reads.items()
                 if s != 200 or [v["seq"] for v in values] != [expected[k]]}
        assert not wrong, f"{len(wrong)} of {len(expected)} keys read back wrong at R=3: {list(wrong.items())[:10]}"


# -- 4. what one slow join shows while it streams ---------------------------------------------------------------

OBSERVED_KEYS = 1000


@dataclass
class SlowJoin:
    join: Join
    members_agreed: dict[str, int]  # member -> polls where its /admin/v1/ring showed n4 joining, agreed
    members_joining: dict[str, int]  # member -> polls where it showed n4 joining at all
    views: list[dict[str, Any]]  # the members' views while n4 was joining (the first few polls)
    log: list[str]  # n4's ringkv.node lines


@pytest.fixture(scope="module")
def slow_join(tmp_path_factory: pytest.TempPathFactory) -> SlowJoin:
    """One join of ~0.75 MB at 0.3 MB/s (a few seconds of streaming), watched from outside: the joiner's own
    /ready and /admin/v1/node, and each member's /admin/v1/ring, every 50 ms."""
    with running_cluster(tmp_path_factory.mktemp("slow-join"), nodes=3, extra_args=AAE_OFF) as cluster:
        founders = list(cluster.nodes)
        keys = [f"obs-{i}" for i in range(OBSERVED_KEYS)]
        answers = put_all([(founders[i % 3], k, {"key": k, "pad": PAD_1K}, None) for i, k in enumerate(keys)])
        assert all(s == 200 for s, _ in answers), Counter(s for s, _ in answers)
        (n4,) = add_nodes(cluster, ["n4"])
        shared_args = list(cluster.extra_args)
        cluster.extra_args = [*shared_args, *SLOW_STREAM]
        try:
            join = start_join(cluster, n4)
        finally:
            cluster.extra_args = shared_args
        agreed: Counter[str] = Counter()
        joining: Counter[str] = Counter()
        views: list[dict[str, Any]] = []

        def members() -> None:
            for m in founders:
                status, body = http_json(m.url + "/admin/v1/ring")
                if status == 200 and body["joining"] == ["n4"]:
                    joining[m.node_id] += 1
                    agreed[m.node_id] += bool(body["agreed"])
                    if len(views) < 6:
                        views.append({"member": m.node_id, "view": body["view"], "views": body["views"]})

        # watch_join polls n4 itself; the members are polled from a thread of their own until n4 is normal.
        done = threading.Event()

        def watch_members() -> None:
            while not done.is_set():
                members()
                done.wait(POLL_S)

        watcher = threading.Thread(target=watch_members, name="members", daemon=True)
        watcher.start()
        try:
            watch_join(cluster, join)
        finally:
            done.set()
            watcher.join(timeout=REQUEST_TIMEOUT_S * 2)
        print(f"\nslow join {join.summary()}; members showing n4 joining (polls): {dict(joining)}, of which "
              f"agreed: {dict(agreed)}")
        return SlowJoin(join, dict(agreed), dict(joining), views,
                        [line for _, line in timed_log_lines(n4, "ringkv.node")])


def test_a_joining_node_shows_its_progress_while_it_streams(slow_join: SlowJoin) -> None:
    """While n4 streams (several seconds), its /admin/v1/node answers: mode joining, a range streaming with keys,
    and /ready does not answer 200 yet."""
    join = slow_join.join
    assert join.keys > 0 and not join.ready_too_early, join.summary()  # the join itself went as it should
    streaming = [r for doc in join.observed if doc["mode"] == "joining" for r in doc["streaming"]
                 if r["state"] == "streaming" and r["keys"] > 0]
    assert join.modes["joining"] > 0, f"n4's /admin/v1/node never answered with mode joining: {join.summary()}"
    assert streaming, f"n4's /admin/v1/node never showed a range streaming with keys: {join.summary()}"


def test_every_member_agrees_on_a_joiners_view_before_it_streams(slow_join: SlowJoin) -> None:
    """While n4 joins with its pending tokens, every member shows it joining and, once gossip has spread,
    agreement; n4 streams only after it saw agreement (it does not log that it streams anyway)."""
    assert all(slow_join.members_joining.get(m, 0) > 0 for m in ("n1", "n2", "n3")), slow_join.members_joining
    anyway = [line for line in slow_join.log if NODE_STREAMING_ANYWAY in line]
    assert not anyway, f"n4 streamed without agreement: {anyway}; members' views: {slow_join.views[:3]}"
    assert all(slow_join.members_agreed.get(m, 0) > 0 for m in ("n1", "n2", "n3")), (
        f"not every member ever showed agreement on n4's join (polls agreed {slow_join.members_agreed} of "
        f"{slow_join.members_joining}); views: {slow_join.views[:3]}")
