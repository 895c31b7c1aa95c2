"""What one benchmark run does (`BenchPlan`), and how it is split over worker processes (pure)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

TARGETS = ("ringkv", "etcd", "redis")
DISTRIBUTIONS = ("uniform", "zipfian")
DEFAULT_URLS = {"ringkv": "http://127.0.0.1:8080", "etcd": "http://127.0.0.1:2379", "redis": "redis://127.0.0.1:6379"}


@dataclass(frozen=True)
class BenchPlan:
    target: str = "ringkv"
    endpoints: tuple[str, ...] = ()
    connections: int = 64
    duration_s: float | None = 10.0  # measured time; None when `ops` bounds the run
    ops: int | None = None  # measured operations (after warm-up); None when `duration_s` bounds it
    value_size: int = 1024
    mix: float = 0.5  # fraction of operations that are reads
    keys: int = 10_000
    distribution: str = "uniform"
    zipf_theta: float = 0.99
    warmup_s: float = 2.0
    preload: bool = False
    workers: int = 1
    seed: int = 1
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        problems = []
        if self.target not in TARGETS:
            problems.append(f"target must be one of {', '.join(TARGETS)}")
        if self.distribution not in DISTRIBUTIONS:
            problems.append(f"distribution must be one of {', '.join(DISTRIBUTIONS)}")
        if not 0.0 <= self.mix <= 1.0:
            problems.append("mix (read fraction) must be between 0 and 1")
        if self.connections < 1 or self.workers < 1 or self.keys < 1:
            problems.append("connections, workers and keys must be >= 1")
        if self.workers > self.connections:
            problems.append("need at least one connection per worker")
        if (self.duration_s is None) == (self.ops is None):
            problems.append("give exactly one of a duration and an operation count")
        if self.duration_s is not None and self.duration_s <= 0:
            problems.append("duration must be > 0")
        if self.ops is not None and self.ops < 1:
            problems.append("ops must be >= 1")
        if self.warmup_s < 0 or self.value_size < 0 or self.timeout_s <= 0:
            problems.append("warm-up and value size must be >= 0, the timeout > 0")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def urls(self) -> tuple[str, ...]:
        return self.endpoints or (DEFAULT_URLS[self.target],)

    def for_worker(self, index: int) -> BenchPlan:
        """Worker `index`'s share: its connections and operations, its own random stream."""
        return dataclasses.replace(
            self, workers=1, connections=share(self.connections, self.workers, index),
            ops=None if self.ops is None else max(1, share(self.ops, self.workers, index)),
            seed=self.seed * 1_000_003 + index, preload=False,
        )

    def to_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["endpoints"] = list(self.urls)
        return doc


def share(total: int, parts: int, index: int) -> int:
    """Part `index` of `total` split into `parts` near-equal integers."""
    return total // parts + (1 if index < total % parts else 0)
