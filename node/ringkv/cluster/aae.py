"""Anti-entropy policy: which ranges a node compares, with whom and when, and when a tombstone may go. Pure.

Replica ranges
--------------
A node compares trees per *replica range*: a maximal run of consecutive ring ranges `(t_{i-1}, t_i]` that
have the same replica set (`replica_ranges`). Every replica of a run computes the same run from the same
ring, with the same bounds and so the same tree shape (`merkle.shape_for`), so two replicas' trees of a run
can be compared leaf by leaf. (Two nodes whose rings differ compute different runs; their exchange is
refused and retried after gossip has converged.)

Schedule
--------
Every (range, peer) pair is due `interval_s` after its last exchange, less up to `jitter` of it (so that
nodes started together drift apart), and a new pair is due after a random fraction of `first_delay_s`. The
loop runs the most overdue pair, at most `ranges_per_s` a second. A pair whose exchange stopped at the key
bound is due again after `retry_s`: it has more to repair. With the defaults (60 s, 10% jitter, 4 exchanges a
second) a pair comes due 54-60 s after its last exchange, and the loop keeps up while a node has fewer than
about 4 x 54 = 216 (range, peer) pairs (~35 nodes with 16 tokens each and RF 3): then every range it
replicates is compared with every other replica at least once a minute. Past that, pairs queue and gaps
grow (`ringkv_antientropy_oldest_unverified_seconds` shows it): raise `ranges_per_s`.

Tombstones
----------
A record whose versions are all tombstones may be *reaped* (removed from storage) when (1) it was deleted
more than `grace_s` ago (by its tombstones' wall-clock times: a clock decides only *when* garbage is
collected, never which write wins), and (2) every other replica of its key, asked just now, holds the
same record (same digest) or nothing at all. The reaping node first raises its dot floor past its own
counter in the record (`ringkv.replica`), so no dot is reissued. Why nothing resurrects: a value the
tombstone superseded can only come back from a copy that escaped the check — a replica that holds it
answers "different" and the reap waits until an exchange has given it the tombstone; an in-flight write is
bounded by the request timeout; a hint older than `grace_s` is dropped, never delivered. What is left is a
replica restored from a backup older than the grace period, which Cassandra documents the same way.
An exchange never copies a tombstone past its grace to a replica that lacks the key (absent and deleted
read the same; copying it back would undo the reap).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ringkv.cluster import merkle
from ringkv.cluster.ids import NodeId
from ringkv.cluster.ring import Replication, Ring

RangeId = tuple[int, int]  # (lo, hi] of a replica range
Pair = tuple[RangeId, NodeId]  # a range and the peer to compare it with


@dataclass(frozen=True)
class ReplicaRange:
    lo: int
    hi: int
    replicas: tuple[NodeId, ...]  # sorted

    @property
    def id(self) -> RangeId:
        return self.lo, self.hi

    @property
    def name(self) -> str:
        return f"{self.lo}:{self.hi}"

    def shape(self, total_leaves: int = 65536, fanout: int = 16) -> merkle.Shape:
        return merkle.shape_for(self.lo, self.hi, total_leaves, fanout=fanout)

    def peers(self, me: NodeId) -> tuple[NodeId, ...]:
        return tuple(n for n in self.replicas if n != me)


def parse_range(name: str) -> RangeId:
    """`"lo:hi"` (as `ReplicaRange.name`) -> (lo, hi); raises ValueError."""
    lo, sep, hi = name.partition(":")
    if not sep:
        raise ValueError(f"range {name!r} is not lo:hi")
    return int(lo), int(hi)


def replica_ranges(ring: Ring, replication: Replication) -> list[ReplicaRange]:
    """Every replica range of the ring (maximal runs of ranges with one replica set), in token order."""
    tokens = ring.tokens
    if not tokens:
        return []
    sets = [tuple(sorted(ring.preference_list(t, replication))) for t in tokens]
    if all(s == sets[0] for s in sets):
        return [ReplicaRange(tokens[-1], tokens[-1], sets[0])]
    # Start at a boundary (a range whose set differs from its predecessor's) so no run is cut by the wrap.
    start = next(i for i in range(len(tokens)) if sets[i] != sets[i - 1])
    out: list[ReplicaRange] = []
    n = len(tokens)
    run_first = start
    for k in range(1, n + 1):
        i = (start + k) % n
        if k == n or sets[i] != sets[run_first]:
            last = (i - 1) % n
            out.append(ReplicaRange(tokens[run_first - 1], tokens[last], sets[run_first]))
            run_first = i
    out.sort(key=lambda r: (r.lo >= r.hi, r.hi))
    return out


def ranges_of(ranges: Iterable[ReplicaRange], node: NodeId) -> list[ReplicaRange]:
    """The replica ranges `node` replicates."""
    return [r for r in ranges if node in r.replicas]


@dataclass
class Schedule:
    """When each (range, peer) pair is next due (monotonic seconds)."""

    interval_s: float = 60.0
    jitter: float = 0.1
    first_delay_s: float = 5.0
    retry_s: float = 1.0
    due_at: dict[Pair, float] = field(default_factory=dict)

    def sync(self, pairs: Iterable[Pair], now: float, rng: random.Random) -> None:
        """Track exactly `pairs` (after a ring change): new ones become due soon, gone ones are forgotten."""
        wanted = set(pairs)
        for pair in list(self.due_at):
            if pair not in wanted:
                del self.due_at[pair]
        for pair in sorted(wanted - self.due_at.keys()):
            self.due_at[pair] = now + rng.uniform(0.0, self.first_delay_s)

    def next_due(self, now: float, eligible: Mapping[NodeId, bool] | None = None) -> Pair | None:
        """The most overdue pair whose peer is eligible (up and normal), or None if nothing is due."""
        best: Pair | None = None
        for pair, at in self.due_at.items():
            if at > now or (eligible is not None and not eligible.get(pair[1], False)):
                continue
            if best is None or at < self.due_at[best]:
                best = pair
        return best

    def done(self, pair: Pair, now: float, rng: random.Random, more: bool = False) -> None:
        """An exchange of `pair` ended (`more`: it stopped at the key bound and should go on soon)."""
        if pair in self.due_at:
            self.due_at[pair] = now + (self.retry_s if more else
                                       self.interval_s * (1.0 - rng.uniform(0.0, self.jitter)))

    def failed(self, pair: Pair, now: float, rng: random.Random) -> None:
        """An exchange could not run (peer busy, rings differ, peer died): try again in a while."""
        if pair in self.due_at:
            self.due_at[pair] = now + min(self.interval_s, 5.0) * rng.uniform(0.5, 1.0)

    def next_time(self) -> float | None:
        return min(self.due_at.values(), default=None)


def past_grace(deleted_at_ms: int | None, now_ms: int, grace_s: float) -> bool:
    """Whether a deleted record is old enough to be reaped (condition 1 above)."""
    return deleted_at_ms is not None and now_ms - deleted_at_ms >= grace_s * 1000


def all_confirm(replicas: Iterable[NodeId], me: NodeId, answers: Mapping[NodeId, bool]) -> bool:
    """Condition 2: every other replica answered that it holds the same record or none (a replica that did
    not answer blocks the reap)."""
    return all(answers.get(n, False) for n in replicas if n != me)


def should_copy(mine_deleted_past_grace: bool, theirs_present: bool) -> bool:
    """Whether an exchange copies our record to a peer: not a tombstone past its grace to a peer that lacks
    the key (see the module docstring)."""
    return theirs_present or not mine_deleted_past_grace
