"""Keys, values and key-choice distributions (pure: randomness is passed in as a `random.Random`).

The key space is `count` keys named `key_name(i)` for i in [0, count). A sampler draws indexes:

- `Uniform`: every key equally likely.
- `Zipfian`: key of popularity rank k (1-based) drawn with probability proportional to 1 / k**theta (YCSB's
  default theta is 0.99: the hottest 1% of 10,000 keys take about half of the operations). Ranks are mapped to
  key indexes through a fixed permutation (the same for every worker, run and system), so the hot keys are spread
  over the ring instead of being key0000000000, key0000000001... Sampling is a bisection of the precomputed
  cumulative distribution: O(log n) per draw, O(n) memory.

Values are one printable ASCII string of exactly the requested size (so JSON, base64 and Redis all carry the same
bytes), the same for every operation.
"""

from __future__ import annotations

import bisect
import itertools
import random
import string
from typing import Protocol

PERMUTATION_SEED = 0x5EED  # fixed: all workers and systems see the same hot keys


def key_name(index: int) -> str:
    return f"key{index:010d}"


def make_value(size: int, seed: int = 1) -> str:
    if size < 0:
        raise ValueError("value size must be >= 0")
    return "".join(random.Random(seed).choices(string.ascii_letters + string.digits, k=size))


class Sampler(Protocol):
    def next(self, rng: random.Random) -> int:
        """A key index in [0, count)."""
        ...


class Uniform:
    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("need at least one key")
        self.count = count

    def next(self, rng: random.Random) -> int:
        return int(rng.random() * self.count)


class Zipfian:
    def __init__(self, count: int, theta: float = 0.99) -> None:
        if count < 1:
            raise ValueError("need at least one key")
        if theta <= 0:
            raise ValueError("zipf theta must be > 0")
        self.count = count
        self.theta = theta
        self.cdf: list[float] = list(itertools.accumulate(1.0 / (float(k) ** theta) for k in range(1, count + 1)))
        self.permutation = list(range(count))
        random.Random(PERMUTATION_SEED).shuffle(self.permutation)

    def probability(self, rank: int) -> float:
        """The probability of the key of popularity `rank` (1-based)."""
        weight: float = float(rank) ** -self.theta
        return weight / self.cdf[-1]

    def next_rank(self, rng: random.Random) -> int:
        """A popularity rank, 1-based."""
        return min(self.count, bisect.bisect_left(self.cdf, rng.random() * self.cdf[-1]) + 1)

    def next(self, rng: random.Random) -> int:
        return self.permutation[self.next_rank(rng) - 1]


def make_sampler(distribution: str, count: int, theta: float = 0.99) -> Sampler:
    if distribution == "uniform":
        return Uniform(count)
    if distribution == "zipfian":
        return Zipfian(count, theta)
    raise ValueError(f"unknown distribution {distribution!r} (uniform, zipfian)")
