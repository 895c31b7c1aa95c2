"""A node that dies while joining, removed with `removenode`, with real node processes (127.0.0.1).

- `test_removenode_cancels_a_dead_joiners_join_and_it_joins_afresh`: 3 nodes, 2,000 keys of ~1 KB; n4 joins
  with a slow stream and is SIGKILLed mid-stream. Its pending tokens would keep every write for its future
  ranges waiting for one more acknowledgement and keep the cluster's ring "in change"; `removenode n4` on n1
  cancels the join at once (no data moves): every ring agrees with nothing pending (`joining` empty,
  `ringkv_ring_pending_ranges` 0), and W=2 writes go on. Started again on its data directory, n4 sees that the
  cluster removed it and joins afresh: a new turn, tokens allocated again, a new stream, normal; then it holds
  every key it replicates (its own storage) and every key reads back at R=3 with its last value.

Anti-entropy is off (`--aae-enabled false`): an exchange would fill in what a stream missed. Waiting is on
conditions with deadlines; every HTTP call has a timeout and goes to 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ringkv.local import LocalNode
from tests.integration.cluster_helpers import http_json, metric, running_cluster, sees, wait_until
from tests.integration.topology_helpers import (
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
)

pytestmark = pytest.mark.slow

AAE_OFF = ["--aae-enabled", "false", "--aae-interval-s", "3600"]
SLOW_STREAM = ["--stream-mb-s", "0.2"]  # ~1.4 MB for n4 at 0.2 MB/s: seconds to kill it in
KEYS = 2000
PAD = "x" * 1000
KILL_AFTER_KEYS = 200  # streamed into n4 before the kill
TIMEOUT_S = 90.0
AFRESH_LOG = "joining afresh"
ALLOCATED_LOG = "allocated 16 tokens"


def streamed_keys(node: LocalNode) -> float:
    """Records `node` has received by streaming; -1 while it does not answer (its HTTP comes up first)."""
    try:
        return metric(node, "ringkv_streaming_received_keys_total")
    except OSError:
        return -1.0




def test_removenode_cancels_a_dead_joiners_join_and_it_joins_afresh(tmp_path: Path) -> None:
    with running_cluster(tmp_path, nodes=3, extra_args=AAE_OFF) as cluster:
        founders = list(cluster.nodes)
        n1 = founders[0]
        keys = [f"k-{i}" for i in range(KEYS)]
        answers = put_all([(founders[i % 3], k, {"seq": 1, "pad": PAD}, None) for i, k in enumerate(keys)])
        assert all(s == 200 for s, _ in answers), [a for a in answers if a[0] != 200][:3]
        expected = dict.fromkeys(keys, 1)
        contexts = {k: b["context"] for k, (_, b) in zip(keys, answers, strict=True)}

        (n4,) = add_nodes(cluster, ["n4"])
        shared = list(cluster.extra_args)
        cluster.extra_args = [*shared, *SLOW_STREAM]
        try:
            cluster.start(n4)
        finally:
            cluster.extra_args = shared
        wait_until(lambda: streamed_keys(n4) >= KILL_AFTER_KEYS, TIMEOUT_S,
                   "n4 is streaming its ranges", observe=lambda: (alive(n4), log_lines(n4, "ringkv.")[-3:]))
        cluster.kill(n4)
        assert identity_file(n4)["joining"] is True and identity_file(n4)["tokens"], "n4 was not killed mid-join"
        wait_until(lambda: all(sees(n, "n4", up=False) for n in founders), 30.0, "every founder sees n4 down")
        assert all(metric(n, "ringkv_ring_pending_ranges") > 0 for n in founders), \
            "the dead joiner's pending ranges are not visible"

        status, op = post_json(n1.url + "/admin/v1/removenode", {"node": "n4"})
        assert status == 202, (status, op)
        wait_until(lambda: http_json(f"{n1.url}/admin/v1/operations/{op['id']}")[1].get("state") == "done"
                   and all((r := ring_of(n)) is not None and not r["joining"] and r["agreed"]
                           and r["view"] == r["digest"] for n in founders), 30.0,
                   "the removal is done and every ring is without the joiner's pending tokens")
        assert all(metric(n, "ringkv_ring_pending_ranges") == 0 for n in founders)

        # Writes go on at W=2, new keys and overwrites with the last context.
        more = [f"after-{i}" for i in range(300)]
        writes = [(founders[i % 3], k, {"seq": 2, "pad": PAD}, contexts.get(k))
                  for i, k in enumerate(more + keys[:200])]
        answers = put_all(writes)
        assert all(s == 200 for s, _ in answers), [a for a in answers if a[0] != 200][:3]
        for _, key, _, _ in writes:
            expected[key] = 2

        cluster.start(n4)  # on its data directory, at the default stream rate
        wait_until(lambda: (r := ring_of(n1)) is not None and "n4" in {m["node_id"] for m in r["nodes"]}
                   and not r["joining"] and r["agreed"], TIMEOUT_S, "n4 rejoined: in every ring, normal",
                   observe=lambda: (alive(n4), log_lines(n4, "ringkv.")[-3:]))
        assert log_lines(n4, AFRESH_LOG), "n4's log does not say it joined afresh"
        # A fresh join: it waited its turn and allocated again (against the same ring, the same tokens may come).
        assert len(log_lines(n4, ALLOCATED_LOG)) == 2, log_lines(n4, ALLOCATED_LOG)
        assert identity_file(n4)["joining"] is False

        prefs = preferences(n1, sorted(expected))
        mine = sorted(k for k, p in prefs.items() if "n4" in p)
        assert len(mine) > KEYS // 5, f"only {len(mine)} keys placed on n4"
        held = local_values(n4, mine)
        missing = [k for k in mine if [v["seq"] for v in held[k]] != [expected[k]]]
        assert not missing, f"n4 lacks {len(missing)} of the {len(mine)} keys it replicates: {missing[:10]}"
        reads = read_all(n1, sorted(expected), r=3)
        wrong = {k: s for k, (s, values) in reads.items() if s != 200 or [v["seq"] for v in values] != [expected[k]]}
        assert not wrong, f"{len(wrong)} keys read back wrong at R=3: {list(wrong.items())[:10]}"
