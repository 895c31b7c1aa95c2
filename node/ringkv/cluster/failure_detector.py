"""Phi accrual failure detector (Hayashibara et al., SRDS 2004), with Akka's normal-distribution model.

Model
-----
Rather than a yes/no verdict after a fixed timeout, the detector outputs a suspicion level

    phi(now) = -log10( P(the next heartbeat arrives later than now) )

so phi = 1 means a 10% chance that we are wrong to suspect the peer, phi = 8 one in 10**8. The caller picks
the threshold (8 by default, as Cassandra and Akka; 10-12 on noisy networks).

For each peer we keep a bounded window (default 1000) of the intervals between its heartbeats, and model
the next interval as normally distributed with the window's mean and standard deviation, as Akka does:

* `acceptable_pause_s` is added to the mean, so a peer may pause (GC, one lost gossip round) that long
  without raising suspicion;
* the standard deviation is floored at `min_std_dev_s`, so perfectly regular heartbeats do not make the
  smallest delay look fatal;
* the normal tail uses the logistic approximation of its CDF, `F(y) ~ 1 / (1 + exp(-y (1.5976 + 0.070566
  y^2)))`, in the numerically stable form `phi = softplus(y (1.5976 + 0.070566 y^2)) / ln 10`: finite,
  continuous and strictly increasing in the time since the last heartbeat.

Why not Cassandra's exponential model (`phi = elapsed / mean * log10(e)`)? It ignores the variance: at
1 s heartbeats it reaches 8 only after 18.4 s of silence however regular the peer was. The normal model
convicts a regular peer after about `mean + acceptable_pause + 5.2 sigma` (about 4.5 s with the defaults
below at 1 s gossip) and tolerates jittery ones in proportion to their jitter.

Bootstrap: on a peer's first heartbeat the window is seeded, as in Akka, with two intervals
`first_heartbeat_estimate_s * (1 -+ 1/4)` (the gossip interval, give or take a quarter), so phi is defined
(and a peer that dies at once is convicted) before real samples exist.

Clamping: an interval longer than `max_interval_s` (a peer back from a partition or a long pause) is
recorded as `max_interval_s`, so one outage does not inflate the mean and slow the next conviction for
the following thousand heartbeats. A heartbeat timestamped before the last one (reordered delivery) is
ignored, and a `now` before the last heartbeat counts as no time elapsed.

Pure: time is passed in (seconds, any monotonic origin); no clock reads, no I/O. Not thread-safe.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from ringkv.cluster.ids import NodeId

DEFAULT_THRESHOLD: Final = 8.0
_LN10: Final = math.log(10.0)


@dataclass(frozen=True)
class PhiConfig:
    window_size: int = 1000  # intervals remembered per peer
    first_heartbeat_estimate_s: float = 1.0  # the gossip interval
    min_std_dev_s: float = 0.1
    acceptable_pause_s: float = 3.0
    max_interval_s: float = 10.0

    def __post_init__(self) -> None:
        if self.window_size < 2:
            raise ValueError("window_size must be at least 2")
        if not (self.first_heartbeat_estimate_s > 0 and self.min_std_dev_s > 0):
            raise ValueError("first_heartbeat_estimate_s and min_std_dev_s must be positive")
        if self.acceptable_pause_s < 0 or self.max_interval_s < self.first_heartbeat_estimate_s:
            raise ValueError("need acceptable_pause_s >= 0 and max_interval_s >= first_heartbeat_estimate_s")


def phi(elapsed_s: float, mean_s: float, std_dev_s: float) -> float:
    """Suspicion after `elapsed_s` of silence when intervals are ~ Normal(mean_s, std_dev_s)."""
    y = (elapsed_s - mean_s) / std_dev_s
    z = y * (1.5976 + 0.070566 * y * y)
    # -ln(1 - F) with F = 1 / (1 + e^-z) is ln(1 + e^z), computed without overflow either side.
    softplus = z + math.log1p(math.exp(-z)) if z > 0 else math.log1p(math.exp(z))
    return softplus / _LN10


@dataclass
class _History:
    """A peer's last heartbeat and a sliding window of intervals with running sums."""

    last_s: float
    size: int
    intervals: deque[float] = field(default_factory=deque)
    total: float = 0.0
    squares: float = 0.0

    def add(self, interval: float) -> None:
        if len(self.intervals) == self.size:
            old = self.intervals.popleft()
            self.total -= old
            self.squares -= old * old
        self.intervals.append(interval)
        self.total += interval
        self.squares += interval * interval

    def mean(self) -> float:
        return self.total / len(self.intervals)

    def std_dev(self) -> float:
        mean = self.mean()
        return math.sqrt(max(self.squares / len(self.intervals) - mean * mean, 0.0))


class PhiAccrualFailureDetector:
    """Per-peer heartbeat histories and the phi they imply. Peers never heard from are not monitored:
    their phi is 0 and they count as available (as in Akka); membership decides what an unknown peer is."""

    def __init__(self, config: PhiConfig | None = None) -> None:
        self.config = config or PhiConfig()
        self._peers: dict[NodeId, _History] = {}

    def heartbeat(self, node: NodeId, now_s: float) -> None:
        """Record that a heartbeat from `node` arrived (or was learnt of, through gossip) at `now_s`."""
        cfg = self.config
        history = self._peers.get(node)
        if history is None:
            history = self._peers[node] = _History(last_s=now_s, size=cfg.window_size)
            estimate = cfg.first_heartbeat_estimate_s
            history.add(estimate * 0.75)
            history.add(estimate * 1.25)
            return
        if now_s < history.last_s:
            return
        history.add(min(now_s - history.last_s, cfg.max_interval_s))
        history.last_s = now_s

    def phi(self, node: NodeId, now_s: float) -> float:
        history = self._peers.get(node)
        if history is None:
            return 0.0
        cfg = self.config
        return phi(
            max(now_s - history.last_s, 0.0),
            history.mean() + cfg.acceptable_pause_s,
            max(history.std_dev(), cfg.min_std_dev_s),
        )

    def is_available(self, node: NodeId, now_s: float, threshold: float = DEFAULT_THRESHOLD) -> bool:
        return self.phi(node, now_s) < threshold

    def is_monitoring(self, node: NodeId) -> bool:
        return node in self._peers

    def last_heartbeat(self, node: NodeId) -> float | None:
        history = self._peers.get(node)
        return None if history is None else history.last_s

    def remove(self, node: NodeId) -> None:
        """Forget `node` (it left the cluster, or restarted with a new generation): its next heartbeat
        starts a fresh history."""
        self._peers.pop(node, None)

    def __iter__(self) -> Iterator[NodeId]:
        return iter(list(self._peers))

    def __len__(self) -> int:
        return len(self._peers)
