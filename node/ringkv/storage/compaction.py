"""Size-tiered compaction: which tables to merge (a pure policy) and how tombstones are treated.

The engine keeps its tables in one list ordered newest first, and any key's newest version lives in the
earliest table holding that key. To keep that invariant (a point read stops at the first hit), a
compaction only ever merges a *contiguous run* of that list, replacing it in place; size-tiering is applied
among neighbours (like RocksDB's universal compaction) rather than across the whole set as Cassandra's STCS
does, which would force every read to consult every table.

Policy: among contiguous runs of at least `min_tables` (default 4) tables whose sizes are all within
[`bucket_low`, `bucket_high`] x the run's average, pick the run with the smallest average size (cheapest,
most read-amplification saved per byte), capped at `max_tables`. Tables under `small_table_bytes` count as
one size class, so a pile of tiny flushes is always mergeable.

Tombstones: a merge drops a tombstone only when the run includes the oldest table (no older version of the
key can survive elsewhere to be resurrected) and the tombstone is older than the grace period.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TableStat:
    table_id: int
    size_bytes: int
    tombstones: int = 0


@dataclass(frozen=True)
class CompactionPolicy:
    min_tables: int = 4
    max_tables: int = 32
    bucket_low: float = 0.5
    bucket_high: float = 1.5
    small_table_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True)
class CompactionTask:
    start: int  # index of the first table of the run in the newest-first list
    table_ids: tuple[int, ...]
    includes_oldest: bool


def _similar(sizes: Sequence[int], policy: CompactionPolicy) -> bool:
    effective = [max(s, policy.small_table_bytes) for s in sizes]
    avg = sum(effective) / len(effective)
    return all(policy.bucket_low * avg <= s <= policy.bucket_high * avg for s in effective)


def pick(tables: Sequence[TableStat], policy: CompactionPolicy) -> CompactionTask | None:
    """The run to compact next, or None. `tables` is ordered newest first."""
    n = len(tables)
    best: tuple[float, int, int] | None = None  # (average size, start, length)
    for start in range(n):
        length = 0
        for end in range(start + policy.min_tables, min(n, start + policy.max_tables) + 1):
            if not _similar([t.size_bytes for t in tables[start:end]], policy):
                break
            length = end - start
        if length:
            avg = sum(t.size_bytes for t in tables[start : start + length]) / length
            if best is None or avg < best[0]:
                best = (avg, start, length)
    if best is None:
        return None
    _, start, length = best
    run = tables[start : start + length]
    return CompactionTask(start, tuple(t.table_id for t in run), start + length == n)


def full(tables: Sequence[TableStat]) -> CompactionTask | None:
    """Merge every table into one (a major compaction); None when there is nothing to gain. A single table is
    rewritten only when it holds tombstones (the merge purges those past their grace period)."""
    if not tables or (len(tables) == 1 and tables[0].tombstones == 0):
        return None
    return CompactionTask(0, tuple(t.table_id for t in tables), True)


def may_drop_tombstone(tombstone_ts_ms: int, now_ms: int, grace_ms: int, includes_oldest: bool) -> bool:
    return includes_oldest and now_ms - tombstone_ts_ms >= grace_ms
