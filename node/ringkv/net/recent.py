"""What a node served lately: client requests per second and their p99, over a sliding window. Pure.

The status page shows each node's request rate and p99 "now"; Prometheus can work those out from the
counters and histograms of /metrics, but the page has no Prometheus. So the HTTP layer also drops every client
request here: `observe(kind, seconds, now)` adds it to the slot of the current second; a slot holds a count
and a latency histogram over `BUCKETS`. `summary(now)` sums the last `WINDOW_S` whole seconds (the current,
partial second is left out, so a rate is never computed over a fraction of a second) and answers, per kind,
requests per second and the p99 as the upper bound of the bucket that holds the 99th percentile (what
`histogram_quantile` would interpolate to within one bucket).

Slots live in a ring of `SLOTS` entries indexed by the second modulo `SLOTS`; a slot whose second is older than
the window is stale and reset on reuse, so memory is fixed and `observe` costs a bisect and two increments.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

KINDS = ("read", "write")
WINDOW_S = 10
SLOTS = WINDOW_S + 2
# seconds; the last bound is +inf: a p99 above 2.5 s is reported as 2.5 s and over
BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class _Slot:
    second: int = -1
    counts: dict[str, list[int]] = field(default_factory=dict)  # kind -> per-bucket counts (len(BUCKETS) + 1)


@dataclass(frozen=True)
class KindSummary:
    rate_per_s: float
    p99_s: float | None  # None: no request in the window
    requests: int


class RecentRequests:
    def __init__(self) -> None:
        self._slots = [_Slot() for _ in range(SLOTS)]

    def observe(self, kind: str, seconds: float, now: float) -> None:
        second = int(now)
        slot = self._slots[second % SLOTS]
        if slot.second != second:
            slot.second, slot.counts = second, {}
        counts = slot.counts.get(kind)
        if counts is None:
            counts = slot.counts[kind] = [0] * (len(BUCKETS) + 1)
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1

    def summary(self, now: float) -> dict[str, KindSummary]:
        current = int(now)
        first = current - WINDOW_S
        totals = {kind: [0] * (len(BUCKETS) + 1) for kind in KINDS}
        for slot in self._slots:
            if first <= slot.second < current:
                for kind, counts in slot.counts.items():
                    into = totals.setdefault(kind, [0] * (len(BUCKETS) + 1))
                    for i, n in enumerate(counts):
                        into[i] += n
        return {kind: _summarise(counts) for kind, counts in totals.items()}


def _summarise(counts: list[int]) -> KindSummary:
    total = sum(counts)
    if total == 0:
        return KindSummary(0.0, None, 0)
    rank = 0.99 * total  # the smallest bucket whose cumulative count reaches 99% of the requests
    seen = 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= rank:
            return KindSummary(total / WINDOW_S, BUCKETS[min(i, len(BUCKETS) - 1)], total)
    raise AssertionError("unreachable: the counts sum to total")
