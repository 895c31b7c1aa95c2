"""Gossip and failure detection with real node processes (issue 4, "Must show"): a killed node is marked down
by the others within a few seconds and up again after it restarts; a node of another cluster name is refused.

Detection times are measured (printed with `-s`) and asserted against a generous bound; the phi accrual
detector convicts a regular peer after about mean interval + 3 s acceptable pause + a few standard deviations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ringkv import local
from ringkv.local import LocalCluster, LocalNode
from tests.integration.cluster_helpers import (
    kill_all,
    members,
    metric,
    pick_base_port,
    print_logs,
    running_cluster,
    sees,
    wait_until,
)

pytestmark = pytest.mark.slow

DOWN_BOUND_S = 15.0  # "within a few seconds", with room for a loaded CI machine
UP_BOUND_S = 15.0


REFUSED = 'ringkv_internode_refused_connections_total{reason="cluster"}'


def _await_verdict(observers: list[LocalNode], node_id: str, up: bool, since: float, bound_s: float) -> list[float]:
    """Wait until every observer reports `node_id` up (or down); returns each one's delay from `since`."""
    seen: dict[str, float] = {}

    def all_see() -> bool:
        for o in observers:
            if o.node_id not in seen and sees(o, node_id, up):
                seen[o.node_id] = time.monotonic() - since
        return len(seen) == len(observers)

    wait_until(all_see, bound_s, f"every other node sees {node_id} {'up' if up else 'down'}",
               observe=lambda: {o.node_id: members(o) for o in observers})
    return sorted(seen.values())


@pytest.mark.parametrize(("nodes", "interval_s"), [(3, 1.0), (5, 0.5)])
def test_killed_node_is_marked_down_and_up_again_after_restart(tmp_path: Path, nodes: int,
                                                              interval_s: float) -> None:
    """SIGKILL one node: every other node reports it down within DOWN_BOUND_S, and counts the transition in
    its metrics. Restart it: every other node reports it up again within UP_BOUND_S of its being ready."""
    with running_cluster(tmp_path, nodes, gossip_interval_s=interval_s) as cluster:
        victim = cluster.nodes[-1]
        observers = cluster.nodes[:-1]
        downs_before = [metric(o, 'ringkv_gossip_transitions_total{to="down"}') for o in observers]

        killed = time.monotonic()
        cluster.kill(victim)
        down = _await_verdict(observers, victim.node_id, False, killed, DOWN_BOUND_S)
        downs = [metric(o, 'ringkv_gossip_transitions_total{to="down"}') for o in observers]
        assert all(now >= before + 1 for now, before in zip(downs, downs_before, strict=True)), downs

        started = time.monotonic()
        cluster.start(victim)
        cluster.wait_ready([victim], timeout_s=60.0)
        ready = time.monotonic()
        up = _await_verdict(observers, victim.node_id, True, ready, UP_BOUND_S)
        wait_until(lambda: all(members(victim).get(o.node_id) for o in observers), UP_BOUND_S,
                   f"{victim.node_id} sees every other node up")
        print(f"\n{nodes} nodes, gossip every {interval_s}s: {victim.node_id} seen down "
              f"{down[0]:.2f}s (first observer) / {down[-1]:.2f}s (last) after SIGKILL; seen up again "
              f"{up[0]:.2f}s / {up[-1]:.2f}s after it was ready ({ready - started:.2f}s to start and be ready)")


@dataclass
class _Joiner(LocalCluster):
    """A one-node LocalCluster whose seeds are another cluster's."""

    seed_list: str = ""

    def seeds(self) -> str:
        return self.seed_list


def test_node_from_another_cluster_name_is_refused(tmp_path: Path) -> None:
    """A node started with `--cluster-name other` and the cluster's seeds keeps knocking (every gossip
    round) and is refused at the handshake: the seeds count the refusals in
    `ringkv_internode_refused_connections_total`, no member ever lists it, and it learns of no member — so it
    never hears a ring and never takes traffic (its HTTP port stays closed)."""
    with running_cluster(tmp_path, 3) as cluster:
        base = pick_base_port(1)
        [planned] = local.plan(str(tmp_path / "other"), 1, base, 1)
        intruder = LocalNode("intruder", planned.http_port, planned.peer_port,
                             str(tmp_path / "other" / "intruder"), planned.tokens)
        other = _Joiner(str(tmp_path / "other"), [intruder], replication=3, durability="off",
                        extra_args=["--cluster-name", "other", "--gossip-interval-s", "0.5"],
                        seed_list=cluster.seeds())
        seeds = cluster.nodes[:2]  # LocalCluster's seeds: the first two nodes
        try:
            other.start(intruder)

            def refused_often_and_never_listed() -> bool:
                for n in cluster.nodes:
                    assert "intruder" not in members(n), f"{n.node_id} lists the intruder"
                return all(metric(s, REFUSED) >= 3 for s in seeds)

            wait_until(refused_often_and_never_listed, 20.0, "both seeds refused the intruder 3 times",
                       observe=lambda: [metric(s, REFUSED) for s in seeds])
            assert local._alive(intruder.pid) and not local._http_ok(intruder.url + "/ready")
            assert metric(cluster.nodes[2], REFUSED) == 0  # not a seed
            cluster.wait_converged(timeout_s=10.0)  # the cluster itself is unharmed
            with open(seeds[0].log_path) as f:
                assert "refused internode connection from node 'intruder'" in f.read()
        except BaseException:
            print_logs(other)
            raise
        finally:
            kill_all(other)
