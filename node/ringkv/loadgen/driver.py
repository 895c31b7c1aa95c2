"""One benchmark run end to end: preload (optional), the load in this process or in `workers` processes side by
side, the progress line, and the merged result.

With several workers the parent process only preloads, starts the workers (spawned, each with its share of the
connections and operations and its own random stream), releases them together through a barrier, shows their
combined progress (read from shared memory) and merges their results (`stats.merge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import time
from collections.abc import Coroutine
from typing import Any, TextIO, TypeVar

from ringkv.loadgen import adapters, runner
from ringkv.loadgen.plan import BenchPlan
from ringkv.loadgen.progress import Progress, Snapshot
from ringkv.loadgen.stats import RunResult, merge

PHASES = (runner.WARMUP, runner.MEASURE, runner.DONE)
SLOTS = 4  # per worker in shared memory: phase index, phase elapsed, done, errors
START_TIMEOUT_S = 60.0
T = TypeVar("T")


class BenchError(RuntimeError):
    pass


def run(plan: BenchPlan, label: str = "", show_progress: bool = True, stream: TextIO | None = None) -> RunResult:
    progress = Progress(label or plan.target, plan, stream, show_progress)
    try:
        if plan.preload:
            failed = _run_async(_preload(plan, progress))
            progress.finish()
            if failed:
                raise BenchError(f"preload: {failed} of {plan.keys} writes failed")
        if plan.workers == 1:
            return _run_async(_run_here(plan, progress))
        return _run_workers(plan, progress)
    finally:
        progress.finish()


def preload(plan: BenchPlan, label: str = "", show_progress: bool = True, stream: TextIO | None = None) -> None:
    """Write every key of `plan` once (what `plan.preload` does before a run), on its own: another load generator
    (wrk) then reads them."""
    progress = Progress(label or plan.target, plan, stream, show_progress)
    try:
        failed = _run_async(_preload(plan, progress))
    finally:
        progress.finish()
    if failed:
        raise BenchError(f"preload: {failed} of {plan.keys} writes failed")


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=runner.loop_factory()) as r:
        return r.run(coro)


async def _preload(plan: BenchPlan, progress: Progress) -> int:
    store = await adapters.open_store(plan.target, plan.urls, plan.connections, plan.timeout_s)
    try:
        return await runner.preload(store, plan, progress.preload)
    finally:
        await store.close()


def _snapshot(load: runner.Load) -> Snapshot:
    return Snapshot(load.phase, time.monotonic() - load.phase_started, load.done, load.errors)


async def _run_here(plan: BenchPlan, progress: Progress) -> RunResult:
    store = await adapters.open_store(plan.target, plan.urls, plan.connections, plan.timeout_s)
    load = runner.Load(plan, store)

    async def show() -> None:
        while True:
            progress.load(_snapshot(load))
            await asyncio.sleep(0.2)

    shower = asyncio.create_task(show())
    try:
        result = await load.run()
        progress.load(_snapshot(load), force=True)
        return result
    finally:
        shower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await shower
        await store.close()


# -- worker processes -----------------------------------------------------------------------------------------


def _worker_main(plan: BenchPlan, index: int, shared: Any, barrier: Any, results: Any) -> None:
    try:
        result = _run_async(_worker(plan, index, shared, barrier))
        results.put((index, result.to_dict(), None))
    except BaseException as e:
        barrier.abort()  # release the parent (and the other workers) at once
        results.put((index, None, f"{type(e).__name__}: {e}"))


async def _worker(plan: BenchPlan, index: int, shared: Any, barrier: Any) -> RunResult:
    store = await adapters.open_store(plan.target, plan.urls, plan.connections, plan.timeout_s)
    try:
        await asyncio.to_thread(barrier.wait, START_TIMEOUT_S)
        load = runner.Load(plan, store)

        def publish() -> None:
            base = index * SLOTS
            shared[base] = PHASES.index(load.phase)
            shared[base + 1] = time.monotonic() - load.phase_started
            shared[base + 2] = load.done
            shared[base + 3] = load.errors

        async def publisher() -> None:
            while True:
                publish()
                await asyncio.sleep(0.1)

        task = asyncio.create_task(publisher())
        try:
            result = await load.run()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        publish()
        return result
    finally:
        await store.close()


def _combined(shared: Any, workers: int) -> Snapshot:
    phases = [int(shared[i * SLOTS]) for i in range(workers)]
    phase = PHASES[min(phases)]
    elapsed = max(shared[i * SLOTS + 1] for i in range(workers) if int(shared[i * SLOTS]) == min(phases))
    return Snapshot(phase, elapsed, int(sum(shared[i * SLOTS + 2] for i in range(workers))),
                    int(sum(shared[i * SLOTS + 3] for i in range(workers))))


def _run_workers(plan: BenchPlan, progress: Progress) -> RunResult:
    ctx = multiprocessing.get_context("spawn")
    shared = ctx.Array("d", plan.workers * SLOTS, lock=False)
    barrier = ctx.Barrier(plan.workers + 1)
    results = ctx.Queue()
    processes = [ctx.Process(target=_worker_main, args=(plan.for_worker(i), i, shared, barrier, results),
                             name=f"ringkv-bench-{i}", daemon=True) for i in range(plan.workers)]
    for p in processes:
        p.start()
    collected: dict[int, RunResult] = {}
    failures: list[str] = []
    try:
        try:
            barrier.wait(START_TIMEOUT_S)
        except Exception:
            failures.append("workers did not all start in time")
        while len(collected) + len(failures) < plan.workers:
            try:
                index, doc, failure = results.get(timeout=0.2)
            except queue.Empty:
                if not any(p.is_alive() for p in processes) and results.empty():
                    failures.append("a worker process exited without a result")
                    break
                progress.load(_combined(shared, plan.workers))
                continue
            if failure is not None:
                failures.append(f"worker {index}: {failure}")
                barrier.abort()
            else:
                collected[index] = RunResult.from_dict(doc)
        progress.load(_combined(shared, plan.workers), force=True)
    finally:
        for p in processes:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    if failures:
        raise BenchError("; ".join(failures))
    return merge(collected[i] for i in sorted(collected))
