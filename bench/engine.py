"""Storage engine benchmark: ringkv's LSM engine next to sqlite3 (WAL mode) on the same machine, same run.

    python bench/engine.py [--keys 100000] [--value-bytes 1024] [--sync-ops 2000] [--json] [--markdown]

Workloads, 1 KB values (each run on a fresh directory, for both systems):

- put (sequential keys) and put (random keys), durability off (no fsync; sqlite synchronous=OFF)
- get hit (random existing keys, every key already flushed to SSTables / in the sqlite file) and get miss
- put, durability sync, one writer: each put fsyncs before returning (sqlite synchronous=FULL, autocommit)
- put, durability sync and batch, 64 concurrent writers through the asyncio shell (group commit);
  sqlite's counterpart commits a transaction every 2 ms with synchronous=FULL (application group commit)

Latency is measured per operation (perf_counter_ns), reported as p50/p99 in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

from ringkv.storage.aio import AsyncEngine
from ringkv.storage.engine import Engine, EngineOptions
from ringkv.storage.wal import Durability


@dataclass
class Result:
    workload: str
    system: str
    ops: int
    seconds: float
    p50_us: float
    p99_us: float

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    if not sorted_ns:
        return 0.0
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.last = label, total, 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if done == self.total or now - self.last > 0.2:
            self.last = now
            width = 30
            filled = int(width * done / max(1, self.total))
            bar = "#" * filled + "." * (width - filled)
            sys.stderr.write(f"\r  {self.label:<34} [{bar}] {done}/{self.total}")
            if done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def timed(label: str, system: str, items: Sequence[bytes], op: Callable[[bytes], object]) -> Result:
    progress = Progress(f"{system}: {label}", len(items))
    lat: list[int] = []
    clock = time.perf_counter_ns
    start = clock()
    for i, item in enumerate(items):
        t0 = clock()
        op(item)
        lat.append(clock() - t0)
        if i % 4096 == 0:
            progress.update(i)
    elapsed = (clock() - start) / 1e9
    progress.update(len(items))
    lat.sort()
    return Result(label, system, len(items), elapsed, percentile(lat, 0.5), percentile(lat, 0.99))


def concurrent_puts(label: str, engine: Engine, keys: Sequence[bytes], value: bytes, writers: int) -> Result:
    shell = AsyncEngine(engine)
    lat: list[int] = []
    progress = Progress(f"ringkv: {label}", len(keys))

    async def worker(part: Iterable[bytes]) -> None:
        for key in part:
            t0 = time.perf_counter_ns()
            await shell.put(key, value)
            lat.append(time.perf_counter_ns() - t0)
            if len(lat) % 1024 == 0:
                progress.update(len(lat))

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(worker(keys[i::writers]) for i in range(writers)))
        return time.perf_counter() - start

    elapsed = asyncio.run(main())
    progress.update(len(keys))
    lat.sort()
    return Result(label, "ringkv", len(keys), elapsed, percentile(lat, 0.5), percentile(lat, 0.99))


def sqlite_group_commit(label: str, db: sqlite3.Connection, keys: Sequence[bytes], value: bytes,
                        window_s: float = 0.002) -> Result:
    """sqlite's counterpart of group commit: one transaction (one fsync) every `window_s`; an operation's
    latency runs from its insert to the end of the commit that made it durable."""
    lat: list[int] = []
    pending: list[int] = []
    progress = Progress(f"sqlite: {label}", len(keys))
    start = time.perf_counter()
    window_start = time.perf_counter()
    db.execute("BEGIN")
    for i, key in enumerate(keys):
        pending.append(time.perf_counter_ns())
        db.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, value))
        if time.perf_counter() - window_start >= window_s or i == len(keys) - 1:
            db.execute("COMMIT")
            done = time.perf_counter_ns()
            lat.extend(done - t for t in pending)
            pending.clear()
            window_start = time.perf_counter()
            if i != len(keys) - 1:
                db.execute("BEGIN")
        if i % 4096 == 0:
            progress.update(i)
    elapsed = time.perf_counter() - start
    progress.update(len(keys))
    lat.sort()
    return Result(label, "sqlite", len(keys), elapsed, percentile(lat, 0.5), percentile(lat, 0.99))


def open_sqlite(path: str, synchronous: str) -> sqlite3.Connection:
    db = sqlite3.connect(os.path.join(path, "bench.db"), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
    return db


def sqlite_put(db: sqlite3.Connection, value: bytes) -> Callable[[bytes], object]:
    return lambda key: db.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, value))


def sqlite_get(db: sqlite3.Connection) -> Callable[[bytes], object]:
    return lambda key: db.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()


def settle(engine: Engine) -> None:
    """Flush everything and let compaction finish, so reads come from a steady set of SSTables."""
    engine.flush()
    for _ in range(100):
        if not engine.compact():
            break


def run(args: argparse.Namespace) -> list[Result]:
    rng = random.Random(42)
    value = rng.randbytes(args.value_bytes)
    n = args.keys
    seq_keys = [b"user%012d" % i for i in range(n)]
    rand_keys = [rng.randbytes(8).hex().encode() for _ in range(n)]
    hits = rng.sample(rand_keys, min(n, args.reads))
    misses = [rng.randbytes(8).hex().encode() + b"-miss" for _ in range(args.reads)]
    sync_keys = rand_keys[: args.sync_ops]
    group_keys = rand_keys[: args.group_ops]
    results: list[Result] = []
    root = tempfile.mkdtemp(prefix="ringkv-bench-", dir=args.dir)

    def fresh(name: str) -> str:
        path = os.path.join(root, name)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        return path

    try:
        off = EngineOptions(durability=Durability.OFF)
        # -- durability off: puts, then reads from SSTables
        eng = Engine.open(fresh("seq"), off)
        results.append(timed("put seq keys (durability off)", "ringkv", seq_keys,
                             lambda k: eng.put(k, value)))
        eng.close()
        db = open_sqlite(fresh("sqlite-seq"), "OFF")
        results.append(timed("put seq keys (durability off)", "sqlite", seq_keys, sqlite_put(db, value)))
        db.close()

        eng = Engine.open(fresh("rand"), off)
        results.append(timed("put random keys (durability off)", "ringkv", rand_keys,
                             lambda k: eng.put(k, value)))
        settle(eng)
        print(f"  ringkv: {eng.table_count} SSTables, {eng.table_bytes / 2**20:.0f} MiB after compaction",
              file=sys.stderr)
        results.append(timed("get hit (from SSTables)", "ringkv", hits, eng.get))
        before = eng.stats.bloom_negatives
        results.append(timed("get miss (bloom filter)", "ringkv", misses, eng.get))
        negatives = eng.stats.bloom_negatives - before
        print(f"  ringkv: bloom filters answered {negatives} of {len(misses)} table probes for misses",
              file=sys.stderr)
        eng.close()
        db = open_sqlite(fresh("sqlite-rand"), "OFF")
        results.append(timed("put random keys (durability off)", "sqlite", rand_keys, sqlite_put(db, value)))
        results.append(timed("get hit (from SSTables)", "sqlite", hits, sqlite_get(db)))
        results.append(timed("get miss (bloom filter)", "sqlite", misses, sqlite_get(db)))
        db.close()

        # -- durability sync, one writer: one fsync per put
        eng = Engine.open(fresh("sync1"), EngineOptions(durability=Durability.SYNC))
        results.append(timed("put, sync, 1 writer", "ringkv", sync_keys, lambda k: eng.put(k, value)))
        eng.close()
        db = open_sqlite(fresh("sqlite-sync1"), "FULL")
        results.append(timed("put, sync, 1 writer", "sqlite", sync_keys, sqlite_put(db, value)))
        db.close()

        # -- group commit: 64 concurrent writers
        for mode in (Durability.SYNC, Durability.BATCH):
            eng = Engine.open(fresh(f"group-{mode}"), EngineOptions(durability=mode))
            results.append(concurrent_puts(f"put, {mode}, 64 writers", eng, group_keys, value, 64))
            eng.close()
            db = open_sqlite(fresh(f"sqlite-group-{mode}"), "FULL")
            results.append(sqlite_group_commit(f"put, {mode}, 64 writers", db, group_keys, value))
            db.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def table(results: list[Result]) -> str:
    by: dict[str, dict[str, Result]] = {}
    for r in results:
        by.setdefault(r.workload, {})[r.system] = r
    lines = [
        "| workload | ringkv ops/s | p50 µs | p99 µs | sqlite ops/s | p50 µs | p99 µs | ringkv/sqlite |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workload, systems in by.items():
        a, b = systems.get("ringkv"), systems.get("sqlite")
        cells = [workload]
        for r in (a, b):
            cells += [f"{r.ops_per_s:,.0f}", f"{r.p50_us:.1f}", f"{r.p99_us:.1f}"] if r else ["-", "-", "-"]
        cells.append(f"{a.ops_per_s / b.ops_per_s:.2f}x" if a and b and b.ops_per_s else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=100_000, help="keys per put workload")
    parser.add_argument("--reads", type=int, default=50_000, help="gets per read workload")
    parser.add_argument("--value-bytes", type=int, default=1024)
    parser.add_argument("--sync-ops", type=int, default=2_000, help="puts in the one-writer sync workload")
    parser.add_argument("--group-ops", type=int, default=20_000, help="puts in the 64-writer workloads")
    parser.add_argument("--dir", default=None, help="where to put data (default: system temp dir)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    results = run(args)
    if args.json:
        print(json.dumps([asdict(r) | {"ops_per_s": r.ops_per_s} for r in results], indent=2))
        return
    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"sqlite {sqlite3.sqlite_version}; {args.keys} keys, {args.value_bytes}-byte values\n")
    print(table(results))


if __name__ == "__main__":
    main()
