from __future__ import annotations

import pytest

from ringkv.loadgen import stats
from ringkv.loadgen.plan import BenchPlan, share
from ringkv.loadgen.stats import OpStats, RunResult


def result(elapsed: float, puts: list[int], gets: list[int], errors: dict[str, int] | None = None,
           misses: int = 0) -> RunResult:
    r = RunResult(elapsed)
    r.ops["put"].latency_us.record_all(puts)
    r.ops["get"].latency_us.record_all(gets)
    r.ops["get"].misses = misses
    for kind, n in (errors or {}).items():
        for _ in range(n):
            r.ops["put"].error(kind)
    return r


def test_merging_workers_adds_counts_and_takes_the_longest_phase() -> None:
    a = result(10.0, [1000] * 300, [500] * 100, {"503 quorum_unavailable": 2}, misses=3)
    b = result(10.5, [3000] * 100, [700] * 100, {"503 quorum_unavailable": 1, "timeout": 4})
    merged = stats.merge([a, b])
    assert merged.workers == 2
    assert merged.elapsed_s == 10.5
    assert merged.ok == 600
    assert merged.ops_per_s == pytest.approx(600 / 10.5)
    assert merged.ops["put"].errors == {"503 quorum_unavailable": 3, "timeout": 4}
    assert merged.error_count == 7
    assert merged.ops["get"].misses == 3
    assert merged.ops["put"].latency_us.percentile(75) == 1000
    assert merged.ops["put"].latency_us.percentile(76) == 3000
    # merging does not change the inputs
    assert a.ok == 400 and b.ok == 200


def test_merge_round_trips_through_worker_messages() -> None:
    a = result(2.0, [10, 20, 30], [40], {"ClientOSError": 1})
    b = RunResult.from_dict(a.to_dict())
    assert b.to_dict() == a.to_dict()
    assert stats.merge([RunResult.from_dict(a.to_dict()), b]).ok == 8


def test_summary_in_milliseconds() -> None:
    r = result(2.0, list(range(1, 1001)), [], {"timeout": 1})
    s = r.summary()
    put = s["ops"]["put"]
    assert put["ok"] == 1000 and put["ops_per_s"] == 500.0 and put["errors"] == {"timeout": 1}
    assert put["latency_ms"]["p50"] == 0.5 and put["latency_ms"]["p99.9"] == 0.999 and put["latency_ms"]["max"] == 1.0
    assert "get" not in s["ops"]  # no get was attempted
    assert s["all"]["ok"] == 1000


def test_overall_covers_every_operation() -> None:
    r = result(1.0, [100, 200], [300])
    assert r.overall().ok == 3 and r.overall().latency_us.max == 300


def test_op_stats_errors() -> None:
    s = OpStats()
    s.error("timeout")
    s.error("timeout")
    assert s.errors == {"timeout": 2} and s.error_count == 2 and s.ok == 0


def test_plan_split_over_workers() -> None:
    plan = BenchPlan(connections=64, workers=3, duration_s=None, ops=1000)
    parts = [plan.for_worker(i) for i in range(3)]
    assert sum(p.connections for p in parts) == 64
    assert sum(p.ops or 0 for p in parts) == 1000
    assert len({p.seed for p in parts}) == 3
    assert all(p.workers == 1 and not p.preload for p in parts)
    assert [share(10, 4, i) for i in range(4)] == [3, 3, 2, 2]


@pytest.mark.parametrize("kwargs", [
    {"target": "mongodb"}, {"mix": 1.5}, {"connections": 0}, {"workers": 65}, {"duration_s": None},
    {"ops": 10}, {"distribution": "normal"}, {"warmup_s": -1},
])
def test_plan_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        BenchPlan(**kwargs)  # type: ignore[arg-type]


def test_plan_default_urls() -> None:
    assert BenchPlan(target="etcd").urls == ("http://127.0.0.1:2379",)
    assert BenchPlan(target="redis", endpoints=("redis://h:1",)).urls == ("redis://h:1",)
