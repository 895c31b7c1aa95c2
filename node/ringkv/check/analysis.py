"""The verdicts of a check run, from its recorded `History`. Pure.

Set workload (keys holding a JSON list of unique elements, grown by read → merge siblings → write with
context): with `present` = the elements the final read of each key saw,

- **lost** = acknowledged and not present: the store lost an acknowledged write;
- **indeterminate** = the add timed out or failed with a 5xx/lost connection: it may or may not have landed
  (reported, with how many did land; never an anomaly);
- **phantom** = present but never attempted, or attempted and certainly refused (a 4xx, a refused
  connection): the store made something up.

Register workload (unique keys written once with a unique value): lost = acknowledged and the final read
does not show the value; phantom = the final read shows a value never written to that key, or one whose
write was certainly refused.

Keys whose final read failed are *unverified*: their acknowledged elements are neither lost nor safe, and
the run cannot pass. Availability is the share of requests that succeeded per second (and over any window,
e.g. while a fault was active); latency percentiles use the nearest-rank definition over successful requests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ringkv.check.history import History, Kind, Op, Outcome

CONTEXT_S = 5.0  # events this close to an anomalous operation are named with it


@dataclass(frozen=True)
class Anomaly:
    kind: str  # "lost" | "phantom"
    workload: str  # "set" | "register"
    key: str
    element: str
    op: Op | None  # the write, when there was one
    events: tuple[tuple[float, str], ...] = ()  # nemesis events around it


@dataclass(frozen=True)
class Verdict:
    workload: str
    attempted: int
    acknowledged: int
    failed: int
    indeterminate: int
    indeterminate_landed: int
    lost: tuple[Anomaly, ...]
    phantoms: tuple[Anomaly, ...]
    unverified: int  # acknowledged writes on keys whose final read failed

    @property
    def ok(self) -> bool:
        return not self.lost and not self.phantoms and not self.unverified


@dataclass(frozen=True)
class Latency:
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True)
class Availability:
    requests: int
    succeeded: int

    @property
    def ratio(self) -> float:
        return self.succeeded / self.requests if self.requests else 1.0


@dataclass(frozen=True)
class Report:
    verdicts: tuple[Verdict, ...]
    availability: Availability
    per_second: tuple[tuple[int, Availability], ...]
    latency: Latency
    max_siblings: int
    mean_siblings: float
    disagreeing_keys: tuple[str, ...] = field(default=())
    during_faults: Availability | None = None

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)


def around(events: Sequence[tuple[float, str]], op: Op | None, within_s: float = CONTEXT_S
           ) -> tuple[tuple[float, str], ...]:
    if op is None:
        return ()
    return tuple(e for e in events if op.start_s - within_s <= e[0] <= op.end_s + within_s)


def _verdict(workload: str, writes: list[Op], present: dict[str, frozenset[str]], unreadable: set[str],
             events: Sequence[tuple[float, str]]) -> Verdict:
    by_element: dict[tuple[str, str], Op] = {}
    for op in writes:
        assert op.element is not None
        by_element[(op.key, op.element)] = op
    acked = {k for k, op in by_element.items() if op.outcome is Outcome.OK}
    info = {k for k, op in by_element.items() if op.outcome is Outcome.INFO}
    failed = {k for k, op in by_element.items() if op.outcome is Outcome.FAIL}
    keys = {k for k, _ in by_element} | set(present)
    unreadable = unreadable | {k for k in keys if k not in present}  # never read back: cannot be judged
    seen = {(key, e) for key in keys if key not in unreadable for e in present.get(key, frozenset())}
    lost = sorted(k for k in acked if k[0] not in unreadable and k not in seen)
    phantom = sorted(k for k in seen if k not in acked and k not in info)
    return Verdict(
        workload=workload, attempted=len(by_element), acknowledged=len(acked), failed=len(failed),
        indeterminate=len(info), indeterminate_landed=len(info & seen),
        lost=tuple(Anomaly("lost", workload, k, e, by_element[(k, e)], around(events, by_element[(k, e)]))
                   for k, e in lost),
        phantoms=tuple(Anomaly("phantom", workload, k, e, by_element.get((k, e)),
                               around(events, by_element.get((k, e)))) for k, e in phantom),
        unverified=sum(1 for k in acked if k[0] in unreadable),
    )


def check_set(history: History) -> Verdict:
    adds = [op for op in history.ops if op.kind is Kind.ADD]
    keys = {op.key for op in adds}
    present = {k: v for k, v in history.final.items() if k in keys}
    return _verdict("set", adds, present, history.final_unreadable & keys, history.events)


def check_register(history: History) -> Verdict:
    writes = [op for op in history.ops if op.kind is Kind.WRITE]
    keys = {op.key for op in writes}
    present = {k: v for k, v in history.final.items() if k in keys}
    return _verdict("register", writes, present, history.final_unreadable & keys, history.events)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value with at least ceil(q/100 * n) values at or below it."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency(ops: Iterable[Op]) -> Latency:
    values = sorted(op.latency_s * 1000 for op in ops if op.outcome is Outcome.OK)
    return Latency(len(values), percentile(values, 50), percentile(values, 99), values[-1] if values else 0.0)


def availability(ops: Iterable[Op], windows: Sequence[tuple[float, float]] | None = None) -> Availability:
    """Requests that succeeded, of those sent (within `windows` of [start, end) seconds when given)."""
    chosen = [op for op in ops if windows is None or any(a <= op.start_s < b for a, b in windows)]
    return Availability(len(chosen), sum(1 for op in chosen if op.outcome is Outcome.OK))


def per_second(ops: Iterable[Op]) -> tuple[tuple[int, Availability], ...]:
    buckets: dict[int, list[int]] = {}
    for op in ops:
        b = buckets.setdefault(int(op.start_s), [0, 0])
        b[0] += 1
        b[1] += op.outcome is Outcome.OK
    return tuple((s, Availability(n, ok)) for s, (n, ok) in sorted(buckets.items()))


def analyse(history: History, fault_windows: Sequence[tuple[float, float]] | None = None,
            disagreeing: Sequence[str] = ()) -> Report:
    verdicts = tuple(v for v in (check_set(history), check_register(history)) if v.attempted)
    reads = [op for op in history.ops if op.kind is Kind.READ and op.outcome is Outcome.OK]
    siblings = [op.siblings for op in reads]
    return Report(
        verdicts=verdicts, availability=availability(history.ops), per_second=per_second(history.ops),
        latency=latency(history.ops), max_siblings=max(siblings, default=0),
        mean_siblings=sum(siblings) / len(siblings) if siblings else 0.0,
        disagreeing_keys=tuple(disagreeing),
        during_faults=availability(history.ops, fault_windows) if fault_windows else None,
    )
