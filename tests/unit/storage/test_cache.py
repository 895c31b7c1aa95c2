"""The block cache: LRU within its byte budget, tables dropped whole, and the engine's use of it (flushed
blocks cached as written, compaction inputs forgotten, scans not filling it, answers identical without it)."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.storage.block import Block, BlockBuilder
from ringkv.storage.cache import BlockCache
from ringkv.storage.engine import Engine, EngineOptions
from ringkv.storage.entry import Entry
from ringkv.storage.wal import Durability


def _block(n: int) -> tuple[Block, int]:
    builder = BlockBuilder()
    builder.add(Entry(b"k%d" % n, n, b"v" * n, 0))
    data = builder.finish()
    return Block(data), len(data)


def test_the_least_recently_used_block_goes_first_and_the_budget_holds() -> None:
    block, size = _block(10)
    cache = BlockCache(3 * size)
    for i in range(3):
        cache.put(1, i, block, size)
    assert cache.get(1, 0) is block  # 0 is now the most recent
    cache.put(1, 3, block, size)  # evicts 1, the least recently used
    assert cache.get(1, 1) is None and cache.get(1, 0) is block and cache.get(1, 3) is block
    assert cache.bytes == 3 * size and len(cache) == 3
    cache.drop_table(1)
    assert cache.bytes == 0 and len(cache) == 0 and cache.get(1, 0) is None


def test_a_block_larger_than_the_cache_is_not_kept() -> None:
    block, size = _block(100)
    cache = BlockCache(size - 1)
    cache.put(1, 0, block, size)
    assert len(cache) == 0 and cache.bytes == 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 20), st.booleans()), max_size=200))
def test_bytes_always_match_what_is_held(ops: list[tuple[int, int, bool]]) -> None:
    block, size = _block(5)
    cache = BlockCache(7 * size)
    for table, index, drop in ops:
        if drop:
            cache.drop_table(table)
        else:
            cache.put(table, index, block, size)
        assert cache.bytes == len(cache) * size <= cache.capacity_bytes


def _options(cache_bytes: int) -> EngineOptions:
    return EngineOptions(durability=Durability.OFF, memtable_bytes=64 * 1024, block_cache_bytes=cache_bytes,
                         background_compaction=False)


def test_flushed_blocks_are_cached_and_compaction_inputs_forgotten(tmp_path: Path) -> None:
    engine = Engine.open(str(tmp_path / "db"), _options(8 << 20))
    try:
        for round_ in range(2):
            for i in range(300):
                engine.put(b"key%04d" % i, b"%d" % round_ * 50)
            engine.flush()
        cache = engine.cache
        assert cache is not None
        before = {t.info.table_id for t in engine._view.tables}
        assert len(before) == 2
        resolved, entry = engine.read_tables_cached(b"key0007", engine.tables_to_read(b"key0007"))
        assert resolved and entry is not None and entry.value == b"1" * 50  # the newest table's, no I/O
        engine.compact(full=True)
        (merged,) = engine._view.tables
        assert merged.info.table_id not in before
        assert not any(tid in before for tid, _ in cache._blocks)  # the inputs' blocks are gone
        hits = cache.hits
        list(engine.scan(None, None))  # a full scan: cached blocks used, none added
        assert cache.hits > hits
    finally:
        engine.close()


def test_without_the_cache_every_table_read_needs_io(tmp_path: Path) -> None:
    engine = Engine.open(str(tmp_path / "db"), _options(0))
    try:
        engine.put(b"a", b"1")
        engine.flush()
        assert engine.cache is None
        assert engine.read_tables_cached(b"a", engine.tables_to_read(b"a")) == (False, None)
        assert engine.get(b"a") == b"1"
    finally:
        engine.close()


def test_a_small_cache_gives_the_same_answers_as_none(tmp_path: Path) -> None:
    rng = random.Random(7)
    engines = [Engine.open(str(tmp_path / name), _options(size)) for name, size in (("none", 0), ("tiny", 9000))]
    model: dict[bytes, bytes | None] = {}
    try:
        for step in range(3000):
            key = b"key%03d" % rng.randrange(400)
            value = None if rng.random() < 0.1 else b"%d" % step * rng.randrange(1, 40)
            model[key] = value
            for engine in engines:
                engine.write(key, value)
            if step % 700 == 699:
                for engine in engines:
                    engine.flush()
                    engine.compact()
        for key, value in model.items():
            for engine in engines:
                assert engine.get(key) == value
    finally:
        for engine in engines:
            engine.close()
