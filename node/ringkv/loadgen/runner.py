"""The load loop of one process: `connections` client coroutines, each with at most one request in flight
(a closed loop), issuing puts and gets on one event loop.

Phases: warm-up (operations sent, nothing recorded), then the measured phase, which ends after `duration_s` or
once `ops` operations have been issued. An operation is recorded when it *started* inside the measured phase; the
phase's length runs from its start until the last recorded operation has finished. `preload` writes every key once
(before any phase, with the same concurrency) so that reads hit.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

from ringkv.loadgen import adapters, keyspace
from ringkv.loadgen.plan import BenchPlan
from ringkv.loadgen.stats import RunResult

WARMUP, MEASURE, DONE = "warm-up", "measure", "done"


def error_name(e: BaseException) -> str:
    if isinstance(e, adapters.StoreError):
        return e.kind
    if isinstance(e, TimeoutError):
        return "timeout"
    return type(e).__name__


class Load:
    """One process's load; `phase`, `done`, `errors` and `phase_started` may be read at any time (progress)."""

    def __init__(self, plan: BenchPlan, store: adapters.Store) -> None:
        self.plan = plan
        self.store = store
        self.rng = random.Random(plan.seed)
        self.sampler = keyspace.make_sampler(plan.distribution, plan.keys, plan.zipf_theta)
        self.value = keyspace.make_value(plan.value_size, plan.seed)
        self.result = RunResult()
        self.phase = WARMUP
        self.phase_started = time.monotonic()
        self.measure_from_ns = 0
        self.issued = 0
        self.done = 0
        self.errors = 0

    async def _client(self) -> None:
        plan, store, rng, sampler, value = self.plan, self.store, self.rng, self.sampler, self.value
        put_stats, get_stats = self.result.ops["put"], self.result.ops["get"]
        clock = time.perf_counter_ns
        while self.phase != DONE:
            if self.phase == MEASURE and plan.ops is not None:
                if self.issued >= plan.ops:
                    return
                self.issued += 1
            is_get = rng.random() < plan.mix
            key = keyspace.key_name(sampler.next(rng))
            t0 = clock()
            try:
                if is_get:
                    found = await store.get(key)
                else:
                    await store.put(key, value)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if t0 >= self.measure_from_ns > 0:
                    (get_stats if is_get else put_stats).error(error_name(e))
                    self.errors += 1
                continue
            t1 = clock()
            if t0 >= self.measure_from_ns > 0:
                stats = get_stats if is_get else put_stats
                stats.latency_us.record((t1 - t0 + 500) // 1000)
                if is_get and not found:
                    stats.misses += 1
                self.done += 1

    async def run(self) -> RunResult:
        clients = [asyncio.create_task(self._client()) for _ in range(self.plan.connections)]
        try:
            if self.plan.warmup_s > 0:
                await _sleep_unless_done(clients, self.plan.warmup_s)
            self.phase, self.phase_started = MEASURE, time.monotonic()
            self.measure_from_ns = time.perf_counter_ns()
            if self.plan.duration_s is not None:
                await _sleep_unless_done(clients, self.plan.duration_s)
                self.phase = DONE
            await asyncio.gather(*clients)
            self.result.elapsed_s = (time.perf_counter_ns() - self.measure_from_ns) / 1e9
        finally:
            self.phase = DONE
            for task in clients:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*clients, return_exceptions=True)
        return self.result


async def _sleep_unless_done(tasks: list[asyncio.Task[None]], seconds: float) -> None:
    """Sleep, but wake early (and raise) if a client task failed outright."""
    done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        failure = task.exception()
        if failure is not None:
            raise failure


async def preload(store: adapters.Store, plan: BenchPlan, on_progress: Callable[[int], None] | None = None) -> int:
    """Write every key of the key space once; returns the number of failed writes (after one retry each)."""
    value = keyspace.make_value(plan.value_size, plan.seed)
    indexes = iter(range(plan.keys))
    written = failed = 0

    async def writer() -> None:
        nonlocal written, failed
        for i in indexes:
            for attempt in range(2):
                try:
                    await store.put(keyspace.key_name(i), value)
                    break
                except Exception:
                    if attempt == 1:
                        failed += 1
            written += 1
            if on_progress is not None and written % 64 == 0:
                on_progress(written)

    await asyncio.gather(*(writer() for _ in range(min(plan.connections, plan.keys))))
    if on_progress is not None:
        on_progress(written)
    return failed


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (the node uses it too), else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
