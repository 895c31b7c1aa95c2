from __future__ import annotations

import collections
import random

import pytest

from ringkv.loadgen import keyspace
from ringkv.loadgen.keyspace import Uniform, Zipfian

DRAWS = 200_000


def test_zipf_frequencies_match_the_distribution() -> None:
    z = Zipfian(1000, theta=0.99)
    rng = random.Random(11)
    counts = collections.Counter(z.next_rank(rng) for _ in range(DRAWS))
    assert set(counts) <= set(range(1, 1001))
    assert sum(z.probability(k) for k in range(1, 1001)) == pytest.approx(1.0)
    for rank in (1, 2, 3, 10, 100):
        expected = z.probability(rank) * DRAWS
        assert counts[rank] == pytest.approx(expected, rel=0.1 if rank < 100 else 0.35)
    # the empirical CDF stays close to the true one everywhere (Kolmogorov-Smirnov distance)
    seen = 0
    worst = 0.0
    for rank in range(1, 1001):
        seen += counts[rank]
        worst = max(worst, abs(seen / DRAWS - z.cdf[rank - 1] / z.cdf[-1]))
    assert worst < 0.01


def test_zipf_is_skewed_like_ycsb() -> None:
    z = Zipfian(10_000, theta=0.99)
    top_1_percent = sum(z.probability(k) for k in range(1, 101))
    assert 0.45 < top_1_percent < 0.6  # the hottest 1% of keys take about half of the operations
    assert z.probability(1) > z.probability(2) > z.probability(10_000)


def test_zipf_hot_keys_are_scattered_but_the_same_for_everyone() -> None:
    a, b = Zipfian(500), Zipfian(500)
    assert a.permutation == b.permutation  # all workers and systems hit the same hot keys
    assert sorted(a.permutation) == list(range(500))
    assert a.permutation[:5] != [0, 1, 2, 3, 4]
    rng = random.Random(5)
    indexes = collections.Counter(a.next(rng) for _ in range(20_000))
    assert indexes.most_common(1)[0][0] == a.permutation[0]
    assert all(0 <= i < 500 for i in indexes)


def test_uniform_is_flat() -> None:
    u = Uniform(10)
    rng = random.Random(2)
    counts = collections.Counter(u.next(rng) for _ in range(DRAWS))
    assert set(counts) == set(range(10))
    assert all(c == pytest.approx(DRAWS / 10, rel=0.03) for c in counts.values())


def test_single_key_spaces() -> None:
    rng = random.Random(1)
    assert {Zipfian(1).next(rng) for _ in range(50)} == {0}
    assert {Uniform(1).next(rng) for _ in range(50)} == {0}


def test_values_and_keys() -> None:
    v = keyspace.make_value(1024)
    assert len(v) == 1024 == len(v.encode()) and v.isalnum()
    assert keyspace.make_value(1024) == v  # the same for every system
    assert keyspace.make_value(0) == ""
    assert keyspace.key_name(42) == "key0000000042"


def test_make_sampler() -> None:
    assert isinstance(keyspace.make_sampler("uniform", 5), Uniform)
    assert isinstance(keyspace.make_sampler("zipfian", 5), Zipfian)
    with pytest.raises(ValueError):
        keyspace.make_sampler("pareto", 5)
    with pytest.raises(ValueError):
        Zipfian(0)
