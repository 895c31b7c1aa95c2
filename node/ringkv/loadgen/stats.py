"""Results of a run: per operation (put, get) a latency histogram of the successful operations, error counts by
kind, and read misses; merging results of worker processes that ran side by side (pure).

Latency is recorded in microseconds, from just before the request is sent to just after the full answer is read.
Failed operations are counted by kind and kept out of the histograms (a fast failure must not make the
percentiles look better). A read that finds no key is a success and also counts as a miss.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ringkv.loadgen.histogram import Histogram

OPS = ("put", "get")
PERCENTILES = (50.0, 95.0, 99.0, 99.9)


def percentile_label(q: float) -> str:
    return f"p{q:g}"


@dataclass
class OpStats:
    latency_us: Histogram = field(default_factory=Histogram)
    errors: dict[str, int] = field(default_factory=dict)
    misses: int = 0

    @property
    def ok(self) -> int:
        return self.latency_us.count

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def merge(self, other: OpStats) -> None:
        self.latency_us.merge(other.latency_us)
        for kind, n in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + n
        self.misses += other.misses

    def summary(self, elapsed_s: float) -> dict[str, Any]:
        h = self.latency_us
        pcts = h.percentiles(PERCENTILES)
        return {
            "ok": self.ok, "errors": dict(sorted(self.errors.items())), "misses": self.misses,
            "ops_per_s": self.ok / elapsed_s if elapsed_s > 0 else 0.0,
            "latency_ms": {**{percentile_label(q): pcts[q] / 1000 for q in PERCENTILES},
                           "min": h.min / 1000, "mean": h.mean / 1000, "max": h.max / 1000},
        }

    def to_dict(self) -> dict[str, Any]:
        return {"latency_us": self.latency_us.to_dict(), "errors": dict(self.errors), "misses": self.misses}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> OpStats:
        return cls(Histogram.from_dict(doc["latency_us"]), {str(k): int(v) for k, v in doc["errors"].items()},
                   int(doc["misses"]))


@dataclass
class RunResult:
    """What one process (or, merged, all of them) measured. `elapsed_s` is the measured phase's length."""

    elapsed_s: float = 0.0
    ops: dict[str, OpStats] = field(default_factory=lambda: {op: OpStats() for op in OPS})
    workers: int = 1

    @property
    def ok(self) -> int:
        return sum(s.ok for s in self.ops.values())

    @property
    def error_count(self) -> int:
        return sum(s.error_count for s in self.ops.values())

    @property
    def ops_per_s(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def overall(self) -> OpStats:
        """All operations together (the latency of 'any operation')."""
        total = OpStats()
        for s in self.ops.values():
            total.merge(s)
        return total

    def summary(self) -> dict[str, Any]:
        ops = {op: s.summary(self.elapsed_s) for op, s in self.ops.items() if s.ok or s.errors}
        return {"elapsed_s": self.elapsed_s, "workers": self.workers, "ok": self.ok, "errors": self.error_count,
                "ops_per_s": self.ops_per_s, "ops": ops, "all": self.overall().summary(self.elapsed_s)}

    def to_dict(self) -> dict[str, Any]:
        return {"elapsed_s": self.elapsed_s, "workers": self.workers,
                "ops": {op: s.to_dict() for op, s in self.ops.items()}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> RunResult:
        return cls(float(doc["elapsed_s"]), {op: OpStats.from_dict(s) for op, s in doc["ops"].items()},
                   int(doc["workers"]))


def merge(results: Iterable[RunResult]) -> RunResult:
    """Results of workers that ran the same phase side by side: counts and histograms add up; the phase lasted as
    long as the slowest worker's (so throughput = all operations / the longest elapsed time, never flattering)."""
    merged = RunResult(workers=0)
    for r in results:
        for op, s in r.ops.items():
            merged.ops.setdefault(op, OpStats()).merge(s)
        merged.elapsed_s = max(merged.elapsed_s, r.elapsed_s)
        merged.workers += r.workers
    return merged
