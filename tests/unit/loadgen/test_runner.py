"""The closed-loop runner and the driver against an in-memory store (no network)."""

from __future__ import annotations

import asyncio
import io

import pytest

from ringkv.loadgen import adapters, driver, runner
from ringkv.loadgen.plan import BenchPlan
from ringkv.loadgen.progress import Progress, Snapshot


class MemoryStore:
    def __init__(self, fail_every: int = 0) -> None:
        self.data: dict[str, str] = {}
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.fail_every = fail_every

    async def _op(self) -> None:
        self.calls += 1
        call = self.calls
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)
            if self.fail_every and call % self.fail_every == 0:
                raise adapters.StoreError("503 quorum_unavailable")
        finally:
            self.in_flight -= 1

    async def put(self, key: str, value: str) -> None:
        await self._op()
        self.data[key] = value

    async def get(self, key: str) -> bool:
        await self._op()
        return key in self.data

    async def close(self) -> None:
        pass


def run_load(plan: BenchPlan, store: MemoryStore) -> runner.Load:
    load = runner.Load(plan, store)
    asyncio.run(load.run())
    return load


def test_an_operation_count_is_exact_and_puts_only_with_mix_0() -> None:
    store = MemoryStore()
    load = run_load(BenchPlan(duration_s=None, ops=500, mix=0.0, warmup_s=0, connections=8, keys=50), store)
    r = load.result
    assert r.ops["put"].ok == 500 and r.ops["get"].ok == 0
    assert store.most_in_flight == 8  # one request in flight per connection
    assert all(len(v) == 1024 for v in store.data.values())
    assert r.elapsed_s > 0


def test_gets_only_with_mix_1_and_misses_counted() -> None:
    store = MemoryStore()
    store.data = {"key0000000000": "v"}
    r = run_load(BenchPlan(duration_s=None, ops=300, mix=1.0, warmup_s=0, connections=4, keys=2), store).result
    assert r.ops["get"].ok == 300 and r.ops["put"].ok == 0
    assert 50 < r.ops["get"].misses < 250


def test_duration_and_warmup_are_respected_and_warmup_is_not_recorded() -> None:
    store = MemoryStore()
    load = run_load(BenchPlan(duration_s=0.3, warmup_s=0.2, mix=0.5, connections=4, keys=100), store)
    r = load.result
    assert 0.3 <= r.elapsed_s < 1.0
    assert 0 < r.ok < store.calls  # warm-up operations were sent but not recorded
    assert load.phase == runner.DONE


def test_errors_are_counted_by_kind_and_kept_out_of_the_latencies() -> None:
    store = MemoryStore(fail_every=10)
    r = run_load(BenchPlan(duration_s=None, ops=1000, mix=0.0, warmup_s=0, connections=2), store).result
    assert r.ops["put"].errors == {"503 quorum_unavailable": 100}
    assert r.ops["put"].ok == 900


def test_preload_writes_every_key_once() -> None:
    store = MemoryStore()
    seen: list[int] = []
    failed = asyncio.run(runner.preload(store, BenchPlan(keys=300, connections=16, value_size=10), seen.append))
    assert failed == 0
    assert len(store.data) == 300 and store.calls == 300
    assert seen[-1] == 300


def test_error_names() -> None:
    assert runner.error_name(adapters.StoreError("409 too_many_siblings")) == "409 too_many_siblings"
    assert runner.error_name(TimeoutError()) == "timeout"
    assert runner.error_name(ConnectionResetError()) == "ConnectionResetError"


def test_driver_runs_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore()

    async def open_store(*args: object) -> MemoryStore:
        return store

    monkeypatch.setattr(adapters, "open_store", open_store)
    err = io.StringIO()
    plan = BenchPlan(duration_s=None, ops=200, warmup_s=0, keys=20, preload=True, mix=1.0, connections=4)
    result = driver.run(plan, stream=err)
    assert result.ops["get"].ok == 200 and result.ops["get"].misses == 0
    assert "preload" in err.getvalue() and "200 ops" in err.getvalue()


def test_progress_line() -> None:
    out = io.StringIO()
    plan = BenchPlan(duration_s=10, warmup_s=2)
    p = Progress("etcd put", plan, out)
    p.load(Snapshot("warm-up", 1.0, 0, 0), force=True)
    p.load(Snapshot("measure", 5.0, 10_000, 3), force=True)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("  etcd put warm-up [############............] 1.0/2s")
    assert "10,000 ops  2,000 ops/s  3 errors" in lines[1] and "[############............]" in lines[1]
