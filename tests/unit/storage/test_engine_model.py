"""A model check of the engine: random operations against a dict, which it must always agree with.

The engine runs with tiny memtables and blocks (so a few writes already make several tables of several
blocks), background flushes and compactions, a fake clock (so full compactions really purge tombstones)
and a handful of keys (so overwrites and deletes of the same key land in different tables).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from ringkv.storage.compaction import CompactionPolicy
from ringkv.storage.engine import Engine, EngineOptions
from ringkv.storage.wal import Durability

KEYS = [b"", b"a", b"ab", b"b", b"b\x00", b"c", b"d", b"dd", b"e", b"f"]
keys = st.sampled_from(KEYS)
bounds = st.none() | st.sampled_from([*KEYS, b"aa", b"c\xff", b"z"])
values = st.binary(max_size=40) | st.binary(min_size=200, max_size=600)  # some values span blocks


class _Clock:
    def __init__(self) -> None:
        self.now_ms = 1_000_000

    def __call__(self) -> int:
        return self.now_ms


class EngineModel(RuleBasedStateMachine):
    directory: Path  # set by the test before each run

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[bytes, bytes] = {}
        self.clock = _Clock()
        self.options = EngineOptions(
            durability=Durability.OFF,
            memtable_bytes=2048,
            max_immutable_memtables=2,
            block_bytes=256,
            tombstone_grace_s=1.0,
            compaction=CompactionPolicy(min_tables=3, max_tables=5),
            clock_ms=self.clock,
        )
        self.engine: Engine | None = None

    @initialize()
    def open(self) -> None:
        self.engine = Engine.open(str(self.directory), self.options)

    @property
    def db(self) -> Engine:
        assert self.engine is not None
        return self.engine

    @rule(key=keys, value=values)
    def put(self, key: bytes, value: bytes) -> None:
        self.db.put(key, value)
        self.model[key] = value

    @rule(key=keys)
    def delete(self, key: bytes) -> None:
        self.db.delete(key)
        self.model.pop(key, None)

    @rule(data=st.data(), n=st.integers(5, 30))
    def burst(self, data: st.DataObject, n: int) -> None:
        """Enough writes to fill several memtables while the background thread flushes them."""
        for _ in range(n):
            key = data.draw(keys)
            value = data.draw(st.none() | st.binary(min_size=100, max_size=300))
            if value is None:
                self.db.delete(key)
                self.model.pop(key, None)
            else:
                self.db.put(key, value)
                self.model[key] = value

    @rule(key=keys)
    def get(self, key: bytes) -> None:
        assert self.db.get(key) == self.model.get(key)

    @rule(start=bounds, end=bounds)
    def scan(self, start: bytes | None, end: bytes | None) -> None:
        expected = [(k, v) for k, v in sorted(self.model.items())
                    if (start is None or k >= start) and (end is None or k < end)]
        assert list(self.db.scan(start, end)) == expected

    @rule()
    def flush(self) -> None:
        self.db.flush()
        assert self.db.memtable_bytes == 0

    @rule(full=st.booleans())
    def compact(self, full: bool) -> None:
        flushes = self.db.stats.flushes
        if self.db.compact(full=full) and full:
            # One table left, plus any the background thread flushed meanwhile.
            assert self.db.table_count <= 1 + self.db.stats.flushes - flushes

    @rule(ms=st.integers(0, 2000))
    def advance_clock(self, ms: int) -> None:
        self.clock.now_ms += ms

    @rule(flush=st.booleans())
    def reopen(self, flush: bool) -> None:
        self.db.close(flush=flush)
        self.engine = None
        self.engine = Engine.open(str(self.directory), self.options)

    @invariant()
    def agrees_with_the_model(self) -> None:
        if self.engine is None:
            return
        assert dict(self.engine.scan()) == self.model
        # No deleted key is visible, whatever compaction purged.
        assert {e.key for e in self.engine.scan_entries() if e.value is not None} == set(self.model)

    def teardown(self) -> None:
        if self.engine is not None:
            self.engine.close(flush=False)


def test_engine_agrees_with_a_dict(tmp_path: Path) -> None:
    runs = itertools.count()

    class Run(EngineModel):
        def __init__(self) -> None:
            self.directory = tmp_path / f"run-{next(runs)}"
            super().__init__()

    run_state_machine_as_test(
        Run, settings=settings(max_examples=60, stateful_step_count=40, deadline=None))
