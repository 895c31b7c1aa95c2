"""The size-tiered policy (pure: table sizes in, a task out) and the tombstone rule."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ringkv.storage.compaction import CompactionPolicy, CompactionTask, TableStat, full, may_drop_tombstone, pick

EXACT = CompactionPolicy(small_table_bytes=1)  # no "small" size class: sizes compare as they are


def _tables(*sizes: int) -> list[TableStat]:
    """Newest first, with ids that tell positions apart (id = 100 + position)."""
    return [TableStat(100 + i, size) for i, size in enumerate(sizes)]


def test_nothing_to_do_below_min_tables() -> None:
    assert pick([], EXACT) is None
    assert pick(_tables(100, 100, 100), EXACT) is None


def test_four_similar_tables_are_merged() -> None:
    task = pick(_tables(100, 120, 90, 110), EXACT)
    assert task == CompactionTask(0, (100, 101, 102, 103), includes_oldest=True)


def test_run_stops_at_a_dissimilar_neighbour() -> None:
    task = pick(_tables(100, 100, 100, 100, 1000), EXACT)
    assert task == CompactionTask(0, (100, 101, 102, 103), includes_oldest=False)


def test_similar_tables_that_are_not_neighbours_are_not_merged() -> None:
    assert pick(_tables(100, 100, 5000, 100, 100), EXACT) is None
    assert pick(_tables(100, 100, 100, 5000, 100, 100, 100), EXACT) is None


def test_the_run_with_the_smallest_average_wins() -> None:
    small_first = pick(_tables(10, 10, 10, 10, 1000, 1000, 1000, 1000), EXACT)
    assert small_first == CompactionTask(0, (100, 101, 102, 103), includes_oldest=False)
    small_last = pick(_tables(1000, 1000, 1000, 1000, 10, 12, 10, 12), EXACT)
    assert small_last == CompactionTask(4, (104, 105, 106, 107), includes_oldest=True)


def test_tables_under_the_small_size_count_as_one_class() -> None:
    policy = CompactionPolicy(small_table_bytes=10_000)
    assert pick(_tables(1, 50, 500, 5000), policy) == CompactionTask(0, (100, 101, 102, 103), True)
    assert pick(_tables(1, 50, 500, 5000), EXACT) is None


def test_run_length_is_capped_at_max_tables() -> None:
    policy = CompactionPolicy(min_tables=2, max_tables=6, small_table_bytes=1)
    task = pick(_tables(*[100] * 10), policy)
    assert task is not None
    assert len(task.table_ids) == 6
    assert task.table_ids == tuple(range(100 + task.start, 106 + task.start))
    assert task.includes_oldest == (task.start + 6 == 10)


def _similar(sizes: list[int], policy: CompactionPolicy) -> bool:
    effective = [max(s, policy.small_table_bytes) for s in sizes]
    avg = sum(effective) / len(effective)
    return all(policy.bucket_low * avg <= s <= policy.bucket_high * avg for s in effective)


@given(st.lists(st.sampled_from([1, 2, 3, 10, 11, 12, 100, 150, 1000]), max_size=14),
       st.integers(2, 5), st.integers(5, 8), st.sampled_from([1, 5, 50]))
def test_pick_only_returns_contiguous_similar_runs(sizes: list[int], min_tables: int, max_tables: int,
                                                   small: int) -> None:
    policy = CompactionPolicy(min_tables=min_tables, max_tables=max_tables, small_table_bytes=small)
    tables = _tables(*sizes)
    task = pick(tables, policy)
    any_window = any(_similar(sizes[i : i + min_tables], policy) for i in range(len(sizes) - min_tables + 1))
    if task is None:
        assert not any_window
        return
    n = len(task.table_ids)
    assert min_tables <= n <= max_tables
    assert task.table_ids == tuple(t.table_id for t in tables[task.start : task.start + n])
    assert _similar(sizes[task.start : task.start + n], policy)
    assert task.includes_oldest == (task.start + n == len(tables))


def test_pick_is_pure() -> None:
    tables = _tables(5, 5, 5, 5, 5)
    assert pick(tables, EXACT) == pick(tuple(tables), EXACT)
    assert tables == _tables(5, 5, 5, 5, 5)


def test_full_merges_everything() -> None:
    assert full([]) is None
    assert full(_tables(1, 10**9, 7)) == CompactionTask(0, (100, 101, 102), includes_oldest=True)


def test_tombstones_drop_only_from_runs_with_the_oldest_table_after_the_grace() -> None:
    grace = 1000
    assert may_drop_tombstone(tombstone_ts_ms=0, now_ms=1000, grace_ms=grace, includes_oldest=True)
    assert may_drop_tombstone(0, 5000, grace, True)
    assert not may_drop_tombstone(0, 999, grace, True)  # still inside the grace period
    assert not may_drop_tombstone(0, 5000, grace, False)  # an older version could be resurrected
    assert not may_drop_tombstone(2000, 1000, grace, True)  # a tombstone from the future (clock skew)


def test_full_rewrites_a_single_table_only_when_it_holds_tombstones() -> None:
    assert full([TableStat(1, 100)]) is None
    task = full([TableStat(1, 100, tombstones=3)])
    assert task is not None and task.table_ids == (1,) and task.includes_oldest
