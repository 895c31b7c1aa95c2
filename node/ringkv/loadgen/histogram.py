"""A log-bucketed latency histogram in the manner of HdrHistogram: fixed relative precision, mergeable.

Values are non-negative integers (the load generator records microseconds). Buckets:

    v < 2048                 one bucket per value: exact
    v >= 2048                e = v.bit_length() - 11, m = v >> e (1024 <= m < 2048);
                             the bucket holds [m << e, ((m + 1) << e) - 1], a width of at most 1/1024 of its values

so any value is known to within 0.1% (three significant digits). Counts live in a sparse dict (bucket index ->
count): a run of any length takes a few thousand entries at most, and merging worker results is adding dicts.

Percentiles use the nearest-rank definition: the q-th percentile is the smallest recorded value v such that at
least ceil(q/100 * count) samples are <= v. A histogram answers with the *highest* value of the bucket holding that
sample (as HdrHistogram does), so it never reports a latency lower than the true one: it is exact below 2048 and
at most 0.1% high above. `min` and `max` are kept exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

SUB_BITS = 11
SUB_COUNT = 1 << SUB_BITS  # 2048: values below are stored exactly
HALF_COUNT = SUB_COUNT >> 1


def bucket_of(value: int) -> int:
    if value < SUB_COUNT:
        return value
    e = value.bit_length() - SUB_BITS
    return SUB_COUNT + (e - 1) * HALF_COUNT + ((value >> e) - HALF_COUNT)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value that fall in bucket `index`."""
    if index < SUB_COUNT:
        return index, index
    e = (index - SUB_COUNT) // HALF_COUNT + 1
    m = (index - SUB_COUNT) % HALF_COUNT + HALF_COUNT
    return m << e, ((m + 1) << e) - 1


def nearest_rank(count: int, q: float) -> int:
    """The 1-based rank of the q-th percentile (0 < q <= 100) among `count` samples: ceil(q/100 * count),
    in integer arithmetic (q to 1e-4 of a percent) so that 99.9% of 1000 is rank 999, not 1000."""
    per_million = round(q * 10_000)
    return min(count, max(1, -(-per_million * count // 1_000_000)))


class Histogram:
    __slots__ = ("count", "counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0

    def record(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"negative value {value}")
        index = value if value < SUB_COUNT else bucket_of(value)
        self.counts[index] = self.counts.get(index, 0) + 1
        if self.count == 0 or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.count += 1
        self.total += value

    def record_all(self, values: Iterable[int]) -> None:
        for v in values:
            self.record(v)

    def merge(self, other: Histogram) -> None:
        if other.count == 0:
            return
        for index, n in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + n
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def percentile(self, q: float) -> int:
        """The nearest-rank q-th percentile (0 < q <= 100); 0 for an empty histogram."""
        if not 0 < q <= 100:
            raise ValueError(f"percentile {q} not in (0, 100]")
        if self.count == 0:
            return 0
        rank = nearest_rank(self.count, q)
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return min(bucket_bounds(index)[1], self.max)
        return self.max  # unreachable: the counts add up to `count`

    def percentiles(self, qs: Iterable[float]) -> dict[float, int]:
        """Several percentiles in one pass over the buckets."""
        wanted = sorted(set(qs))
        out: dict[float, int] = {}
        if self.count == 0:
            return {q: 0 for q in wanted}
        ranks = [(nearest_rank(self.count, q), q) for q in wanted]
        seen, i = 0, 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            while i < len(ranks) and seen >= ranks[i][0]:
                out[ranks[i][1]] = min(bucket_bounds(index)[1], self.max)
                i += 1
            if i == len(ranks):
                break
        return out

    # -- serialisation (worker processes, --json) -------------------------------------------------------

    def to_dict(self) -> dict[str, object]:
        return {"count": self.count, "total": self.total, "min": self.min, "max": self.max,
                "buckets": {str(k): v for k, v in sorted(self.counts.items())}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, object]) -> Histogram:
        h = cls()
        buckets = doc.get("buckets", {})
        if not isinstance(buckets, Mapping):
            raise ValueError("histogram buckets must be a mapping")
        h.counts = {int(k): int(v) for k, v in buckets.items()}
        h.count = _int(doc, "count")
        h.total = _int(doc, "total")
        h.min = _int(doc, "min")
        h.max = _int(doc, "max")
        if sum(h.counts.values()) != h.count:
            raise ValueError("histogram bucket counts do not add up to its count")
        return h


def _int(doc: Mapping[str, object], name: str) -> int:
    value = doc.get(name, 0)
    if not isinstance(value, int):
        raise ValueError(f"histogram field {name!r} must be an integer")
    return value
