"""An engine whose tables were deleted behind its back opens with what is left, says which tables it lost
(the node then renews its incarnation), and never reports a sequence number below the one it had."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from ringkv.storage import manifest
from ringkv.storage.engine import Engine, EngineOptions
from ringkv.storage.sstable import table_name
from ringkv.storage.wal import Durability


def opened(path: Path) -> Engine:
    return Engine.open(str(path), EngineOptions(durability=Durability.OFF, background_compaction=False))


def key(i: int) -> bytes:
    return b"key-%05d" % i


def fill(path: Path) -> tuple[list[int], int]:
    """Two tables (keys 0-99, then 100-199) and a commit-log tail (200-209); returns the table ids (oldest
    first) and the last sequence number."""
    engine = opened(path)
    try:
        for i in range(100):
            engine.put(key(i), b"first")
        engine.flush()
        for i in range(100, 200):
            engine.put(key(i), b"second")
        engine.flush()
        for i in range(200, 210):
            engine.put(key(i), b"log")
        last_seq = engine.last_seq
    finally:
        engine.close(flush=False)  # the tail stays in the commit log
    state = manifest.load(str(path))
    assert state is not None and len(state.tables) == 2
    return list(reversed(state.tables)), last_seq


def test_a_missing_table_is_recorded_and_the_rest_stays_readable(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "db"
    (first, _), last_seq = fill(path)
    os.unlink(path / table_name(first))
    with caplog.at_level(logging.ERROR, logger="ringkv.storage"):
        engine = opened(path)
    try:
        assert engine.lost_tables == [first]
        assert table_name(first) in caplog.text
        assert engine.get(key(5)) is None  # its data is gone
        assert engine.get(key(150)) == b"second"  # the other table's is not
        assert engine.get(key(205)) == b"log"  # nor the commit log's
        assert engine.last_seq >= last_seq
        engine.put(b"new", b"x")
        assert engine.last_seq > last_seq  # new writes never reuse a sequence number
    finally:
        engine.close()


def test_with_every_table_gone_the_sequence_number_does_not_go_back(tmp_path: Path) -> None:
    path = tmp_path / "db"
    tables, last_seq = fill(path)
    for t in tables:
        os.unlink(path / table_name(t))
    engine = opened(path)
    try:
        assert sorted(engine.lost_tables) == sorted(tables)
        assert [k for k, _ in engine.scan()] == [key(i) for i in range(200, 210)]
        assert engine.last_seq >= last_seq
        engine.put(b"after", b"x")
        after = engine.last_seq
    finally:
        engine.close()
    engine = opened(path)  # the next open: the loss was recorded once, the manifest moved on
    try:
        assert engine.lost_tables == []
        assert engine.last_seq >= after
        assert engine.get(b"after") == b"x"
    finally:
        engine.close()


def test_a_wiped_directory_with_only_the_manifest_left_keeps_last_seq(tmp_path: Path) -> None:
    path = tmp_path / "db"
    _, last_seq = fill(path)
    engine = opened(path)  # replays the log tail into a third table
    engine.close()
    state = manifest.load(str(path))
    assert state is not None
    for name in os.listdir(path):
        if name.endswith(".sst") or name.endswith(".log"):
            os.unlink(path / name)
    engine = opened(path)
    try:
        assert sorted(engine.lost_tables) == sorted(state.tables)
        assert list(engine.scan()) == []
        assert engine.last_seq >= last_seq == state.last_seq
    finally:
        engine.close()


def test_an_intact_directory_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "db"
    _, last_seq = fill(path)
    engine = opened(path)
    try:
        assert engine.lost_tables == []
        assert engine.last_seq == last_seq
        assert engine.get(key(5)) == b"first" and engine.get(key(205)) == b"log"
    finally:
        engine.close()
