"""The asyncio shell: writes await their fsync without blocking the loop; failures surface as StorageError."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from ringkv.errors import StorageError
from ringkv.storage.aio import AsyncEngine
from ringkv.storage.engine import EngineOptions
from ringkv.storage.wal import Durability


@pytest.mark.parametrize("mode", list(Durability))
def test_concurrent_writes_are_durable_and_readable(tmp_path: Path, mode: Durability) -> None:
    async def main() -> None:
        db = await AsyncEngine.open(str(tmp_path / "db"), EngineOptions(durability=mode))
        try:
            keys = [b"k%04d" % i for i in range(300)]
            async with asyncio.timeout(30):
                await asyncio.gather(*(db.put(k, k * 3) for k in keys))
            assert db.engine.is_durable(db.engine.last_seq) or mode is Durability.OFF
            for k in keys:
                assert await db.get(k) == k * 3
            await db.delete(keys[0])
            assert await db.get(keys[0]) is None
        finally:
            await db.close()

    asyncio.run(main())


def test_a_failed_fsync_fails_every_waiting_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        db = await AsyncEngine.open(str(tmp_path / "db"), EngineOptions(durability=Durability.SYNC))

        def broken(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", broken)
        results = await asyncio.gather(*(db.put(b"k%d" % i, b"v") for i in range(20)), return_exceptions=True)
        assert results and all(isinstance(r, StorageError) for r in results)
        with pytest.raises(StorageError):
            await db.put(b"later", b"v")
        monkeypatch.undo()
        await db.close(flush=False)

    asyncio.run(main())


def test_reads_that_no_table_can_hold_stay_on_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        db = await AsyncEngine.open(str(tmp_path / "db"), EngineOptions(durability=Durability.OFF,
                                                                       block_cache_bytes=0))
        try:
            await db.put(b"a", b"1")
            await db.flush()
            hops = []
            real = asyncio.to_thread

            async def counting(*args: object, **kwargs: object) -> object:
                hops.append(args[0])
                return await real(*args, **kwargs)  # type: ignore[arg-type]

            monkeypatch.setattr(asyncio, "to_thread", counting)
            assert await db.get(b"zzz-not-there") is None  # outside every table's key range
            assert hops == []
            assert await db.get(b"a") == b"1"  # in a table, no block cache: read in a thread
            assert len(hops) == 1
        finally:
            monkeypatch.undo()
            await db.close()

    asyncio.run(main())


def test_reads_of_cached_blocks_stay_on_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread hop costs a read ~100 µs of CPU in GIL hand-offs: a block in the cache is read on the loop.
    Blocks a flush wrote are cached as written; a block the cache lost is read once in a thread, then cached."""

    async def main() -> None:
        db = await AsyncEngine.open(str(tmp_path / "db"), EngineOptions(durability=Durability.OFF))
        try:
            for i in range(2000):
                await db.put(b"k%05d" % i, b"v" * 100)
            await db.flush()
            hops = []
            real = asyncio.to_thread

            async def counting(*args: object, **kwargs: object) -> object:
                hops.append(args[0])
                return await real(*args, **kwargs)  # type: ignore[arg-type]

            monkeypatch.setattr(asyncio, "to_thread", counting)
            for i in range(0, 2000, 7):
                assert await db.get(b"k%05d" % i) == b"v" * 100
            assert hops == []  # every block was cached by the flush that wrote it
            cache = db.engine.cache
            assert cache is not None and cache.hits > 0
            (table,) = db.engine._view.tables
            cache.drop_table(table.info.table_id)
            assert await db.get(b"k00007") == b"v" * 100 and len(hops) == 1  # lost: read in a thread...
            assert await db.get(b"k00007") == b"v" * 100 and len(hops) == 1  # ...and cached again
        finally:
            monkeypatch.undo()
            await db.close()

    asyncio.run(main())
