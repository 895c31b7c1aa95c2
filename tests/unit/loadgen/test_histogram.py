from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.loadgen import histogram
from ringkv.loadgen.histogram import Histogram


def exact_percentile(values: list[int], q: float) -> int:
    """Nearest rank, the textbook way: the ceil(q/100 * n)-th smallest value."""
    ordered = sorted(values)
    return ordered[histogram.nearest_rank(len(ordered), q) - 1]


def test_known_data_exact_percentiles() -> None:
    h = Histogram()
    h.record_all(range(1, 1001))  # 1..1000, all below 2048: stored exactly
    assert h.percentiles([50, 95, 99, 99.9, 100]) == {50: 500, 95: 950, 99: 990, 99.9: 999, 100: 1000}
    assert h.percentile(0.1) == 1
    assert (h.min, h.max, h.count, h.mean) == (1, 1000, 1000, 500.5)


def test_nearest_rank_has_no_float_surprises() -> None:
    assert histogram.nearest_rank(1000, 99.9) == 999  # 99.9/100*1000 is 999.0000000000001 in floats
    assert histogram.nearest_rank(1000, 99.99) == 1000
    assert histogram.nearest_rank(10, 50) == 5
    assert histogram.nearest_rank(10, 51) == 6
    assert histogram.nearest_rank(1, 0.001) == 1
    assert histogram.nearest_rank(3, 100) == 3


def test_small_counts() -> None:
    h = Histogram()
    assert h.percentile(99) == 0
    h.record(7)
    assert h.percentiles([50, 99.9]) == {50: 7, 99.9: 7}
    h.record(3)
    assert h.percentile(50) == 3
    assert h.percentile(51) == 7


def test_buckets_tile_the_integers() -> None:
    """Every value lands in a bucket whose bounds hold it; consecutive buckets leave no gap."""
    previous_high = -1
    for index in range(histogram.bucket_of(1 << 40)):
        low, high = histogram.bucket_bounds(index)
        assert low == previous_high + 1
        assert histogram.bucket_of(low) == index == histogram.bucket_of(high)
        assert (high - low + 1) <= max(1, low // 1024)  # relative width 1/1024 at most
        previous_high = high


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=300),
       st.sampled_from([1, 25, 50, 90, 95, 99, 99.9, 100]))
def test_percentile_within_a_tenth_of_a_percent_and_never_low(values: list[int], q: float) -> None:
    h = Histogram()
    h.record_all(values)
    exact = exact_percentile(values, q)
    got = h.percentile(q)
    assert exact <= got <= exact + exact // 1024
    if exact < histogram.SUB_COUNT:
        assert got == exact


def test_latency_like_data_against_sorted_samples() -> None:
    rng = random.Random(7)
    values = [int(rng.lognormvariate(8, 1.2)) for _ in range(50_000)]  # microseconds, median ~3 ms
    h = Histogram()
    h.record_all(values)
    for q in (50, 95, 99, 99.9):
        exact = exact_percentile(values, q)
        assert exact <= h.percentile(q) <= exact * 1.001
    assert h.percentile(100) == max(values)
    assert len(h.counts) < len(set(values)) / 2  # buckets, not one entry per distinct value


def test_merge_equals_recording_everything_in_one() -> None:
    rng = random.Random(3)
    parts = [[rng.randrange(0, 5_000_000) for _ in range(rng.randrange(0, 500))] for _ in range(5)]
    merged, whole = Histogram(), Histogram()
    for part in parts:
        h = Histogram()
        h.record_all(part)
        merged.merge(h)
        whole.record_all(part)
    assert merged.counts == whole.counts
    assert (merged.count, merged.total, merged.min, merged.max) == (whole.count, whole.total, whole.min, whole.max)


def test_merge_into_empty_keeps_min() -> None:
    a, b = Histogram(), Histogram()
    b.record_all([50, 60])
    a.merge(b)
    a.merge(Histogram())
    assert (a.min, a.max, a.count) == (50, 60, 2)


def test_round_trip_through_a_dict() -> None:
    h = Histogram()
    h.record_all([1, 2, 2, 5000, 123456789])
    again = Histogram.from_dict(h.to_dict())
    assert again.counts == h.counts and again.percentile(99) == h.percentile(99)
    doc = h.to_dict()
    doc["count"] = 4
    with pytest.raises(ValueError, match="add up"):
        Histogram.from_dict(doc)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        Histogram().record(-1)
    with pytest.raises(ValueError):
        Histogram().percentile(0)
