"""Can the ring serve quorum requests, as one node sees it? Pure.

Given a ring, the replication setting, the default quorums and the set of members this node sees up,
`quorum_health` walks every range's preference list and counts the ranges whose requests at the default
quorums would fail or degrade:

* `reads_unavailable`: fewer than R replicas of the range are up. A read asks only the range's replicas, so
  a read at the default R of a key there answers 503 `quorum_unavailable`.
* `writes_on_stand_ins`: fewer than W replicas are up. A write still succeeds (sloppy quorum: healthy nodes
  past the preference list hold hints that count toward W), but until the replicas are back its copies live
  as hints, and a read at R may not see it.
* `under_replicated`: fewer replicas up than the range has (a node down, nothing failing yet): requests still
  succeed at the default quorums, writes for the down replicas are kept as hints, and one more failure among
  the range's replicas may cost a quorum.
* `writes_unavailable`: fewer than W members of the ring are up at all: no write succeeds anywhere.

`lost` is True when reads or writes fail somewhere: that is the status page's red banner.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from ringkv.cluster.ids import NodeId
from ringkv.cluster.ring import Replication, Ring


@dataclass(frozen=True)
class QuorumHealth:
    ranges: int
    reads_unavailable: int
    writes_on_stand_ins: int
    writes_unavailable: bool
    read_quorum: int
    write_quorum: int
    under_replicated: int = 0

    @property
    def lost(self) -> bool:
        return self.reads_unavailable > 0 or self.writes_unavailable

    def to_json(self) -> dict[str, object]:
        return {"ranges": self.ranges, "reads_unavailable": self.reads_unavailable,
                "writes_on_stand_ins": self.writes_on_stand_ins, "writes_unavailable": self.writes_unavailable,
                "under_replicated": self.under_replicated, "read_quorum": self.read_quorum,
                "write_quorum": self.write_quorum, "lost": self.lost}


def quorum_health(ring: Ring, replication: Replication, read_quorum: int, write_quorum: int,
                  up: Collection[NodeId]) -> QuorumHealth:
    """The ranges of `ring` that requests at the default quorums cannot serve (see the module docstring).
    An empty ring has no ranges and no quorum for anything."""
    if not len(ring):
        return QuorumHealth(0, 0, 0, True, read_quorum, write_quorum)
    up_set = set(up)
    reads = writes = short = 0
    ranges = ring.tokens
    for token in ranges:
        replicas = ring.preference_list(token, replication)
        alive = sum(1 for node in replicas if node in up_set)
        reads += alive < read_quorum
        writes += alive < write_quorum
        short += alive < len(replicas)
    members_up = sum(1 for node in ring.nodes if node in up_set)
    return QuorumHealth(len(ranges), reads, writes, members_up < write_quorum, read_quorum, write_quorum, short)
