"""Reaping deleted records (`Replica.reap`): only an all-tombstone record whose digest every replica
confirmed is removed, and its counters survive it in the node's floor, durably, so no dot is ever reissued
and a context read before the reap is still a genuine one after it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ringkv.cluster import versions
from ringkv.cluster.ids import NodeId
from ringkv.cluster.merkle import record_digest
from ringkv.cluster.versions import Record, VersionVector
from ringkv.errors import InvalidContextError
from ringkv.replica import FLOOR_KEY, Replica, storage_key
from ringkv.storage.aio import AsyncEngine
from ringkv.storage.engine import EngineOptions
from ringkv.storage.wal import Durability

T = TypeVar("T")
ME = NodeId("n1#aaaa")
OTHER = NodeId("n2#bbbb")


def run(coro: Coroutine[Any, Any, T], limit_s: float = 10.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit_s):
            return await coro

    return asyncio.run(bounded())


async def open_replica(path: Path, actor: NodeId = ME) -> Replica:
    engine = await AsyncEngine.open(str(path), EngineOptions(durability=Durability.OFF))
    replica = Replica(engine, actor)
    await replica.open_layout()
    return replica


async def digest_of(replica: Replica, key: bytes) -> bytes:
    raw = await replica.engine.get(storage_key(key))
    assert raw is not None
    return record_digest(raw)


def counters(record: Record, actor: NodeId = ME) -> list[int]:
    return [v.dot.counter for v in record.versions if v.dot.node == actor]


def test_reap_refuses_a_live_record_a_changed_digest_and_an_absent_key(tmp_path: Path) -> None:
    async def main() -> None:
        replica = await open_replica(tmp_path / "d")
        try:
            await replica.write(b"live", b'"v"', None)
            assert not await replica.reap(b"live", await digest_of(replica, b"live"))
            assert (await replica.read(b"live")).versions  # still there

            await replica.write(b"dead", None, None)
            stale = await digest_of(replica, b"dead")
            await replica.write(b"dead", None, None)  # deleted again: another record than the one confirmed
            assert not await replica.reap(b"dead", stale)
            await replica.write(b"dead", b'"back"', None)
            assert not await replica.reap(b"dead", await digest_of(replica, b"dead"))

            # a record with a tombstone and a live sibling is not deleted: refused
            await replica.write(b"mixed", None, None)
            other = versions.update(versions.empty_record(), None, OTHER, b'"sibling"', 1)
            mixed = await replica.merge_in(b"mixed", other)
            assert len(mixed.versions) == 2 and not versions.is_deleted(mixed)
            assert not await replica.reap(b"mixed", await digest_of(replica, b"mixed"))

            assert not await replica.reap(b"never", record_digest(b"anything"))
            assert replica.reaped == 0 and replica.floor == 0
            assert await replica.engine.get(FLOOR_KEY) is None  # nothing reaped: the floor was not touched
        finally:
            await replica.engine.close()

    run(main())


def test_after_a_reap_no_dot_is_reissued(tmp_path: Path) -> None:
    async def main() -> None:
        replica = await open_replica(tmp_path / "d")
        try:
            issued: list[int] = []
            for value in (b'"1"', b'"2"', None):  # write, overwrite, delete
                issued += counters(await replica.write(b"k", value, None))
            deleted = await replica.read(b"k")
            own = deleted.context.get(ME)
            assert own == max(issued)
            assert await replica.reap(b"k", await digest_of(replica, b"k"))
            assert (await replica.read(b"k")) == versions.empty_record()
            assert replica.reaped == 1 and replica.floor >= own
            again = await replica.write(b"k", b'"again"', None)
            (new,) = counters(again)
            assert new > max(issued)  # the record that held the old counters is gone; the floor is not
            # the floor is node-wide: a key never written before gets a dot above it too
            (fresh,) = counters(await replica.write(b"fresh", b'"x"', None))
            assert fresh > replica.floor
        finally:
            await replica.engine.close()

    run(main())


def test_a_reap_never_lowers_the_floor_and_a_foreign_tombstone_leaves_it_alone(tmp_path: Path) -> None:
    async def main() -> None:
        replica = await open_replica(tmp_path / "d")
        try:
            for i in range(5):
                await replica.write(b"high", b'"%d"' % i, None)
            await replica.write(b"high", None, None)
            assert await replica.reap(b"high", await digest_of(replica, b"high"))
            floor = replica.floor
            assert floor == 6
            # a tombstone another node wrote, merged here: this node issued no counter in it
            foreign = versions.update(versions.empty_record(), None, OTHER, None, 1)
            await replica.merge_in(b"foreign", foreign)
            assert await replica.reap(b"foreign", await digest_of(replica, b"foreign"))
            assert replica.floor == floor
            # a record with a lower own counter than the floor
            await replica.write(b"low", None, None)  # counter floor + 1 (above the floor already)
            await replica.write(b"low2", None, None)
            low2 = (await replica.read(b"low2")).context.get(ME)
            assert await replica.reap(b"low2", await digest_of(replica, b"low2"))
            assert replica.floor == low2
            assert await replica.reap(b"low", await digest_of(replica, b"low"))
            assert replica.floor == low2  # not lowered
        finally:
            await replica.engine.close()

    run(main())


def test_the_floor_survives_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        replica = await open_replica(tmp_path / "d")
        for value in (b'"1"', b'"2"', b'"3"', None):
            await replica.write(b"k", value, None)
        assert await replica.reap(b"k", await digest_of(replica, b"k"))
        floor = replica.floor
        assert floor == 4
        await replica.engine.close()

        replica = await open_replica(tmp_path / "d")  # the same actor: the previous run stopped cleanly
        try:
            assert replica.floor == floor
            (new,) = counters(await replica.write(b"k", b'"after restart"', None))
            assert new == floor + 1
        finally:
            await replica.engine.close()

        # without a flush: the floor is in the commit log before the removal, so it is replayed first
        replica = await open_replica(tmp_path / "d")
        await replica.write(b"j", None, None)
        own = (await replica.read(b"j")).context.get(ME)
        assert await replica.reap(b"j", await digest_of(replica, b"j"))
        await replica.engine.close(flush=False)
        replica = await open_replica(tmp_path / "d")
        try:
            assert replica.floor == own
            assert (await replica.read(b"j")) == versions.empty_record()
        finally:
            await replica.engine.close()

    run(main())


def test_a_context_read_before_the_reap_is_still_accepted_after_it(tmp_path: Path) -> None:
    async def main() -> None:
        replica = await open_replica(tmp_path / "d")
        try:
            await replica.write(b"k", b'"v"', None)
            context = (await replica.write(b"k", None, None)).context  # a client read the tombstone
            assert await replica.reap(b"k", await digest_of(replica, b"k"))
            # the record is gone, but the context is one this node issued: not refused as forged
            written = await replica.write(b"k", b'"new"', context)
            assert versions.live_values(written) == [b'"new"']
            assert counters(written) == [context.get(ME) + 1]
            # a context beyond anything issued is still refused
            forged = VersionVector.of({ME: replica.floor + 5})
            with pytest.raises(InvalidContextError):
                await replica.write(b"other", b'"x"', forged)
            with pytest.raises(InvalidContextError):
                await replica.write(b"k", b'"x"', VersionVector.of({ME: written.context.get(ME) + 1}))
        finally:
            await replica.engine.close()

    run(main())


def test_a_write_queued_before_the_reap_wins_over_it(tmp_path: Path) -> None:
    async def main() -> None:
        replica = await open_replica(tmp_path / "d")
        try:
            await replica.write(b"k", None, None)
            confirmed = await digest_of(replica, b"k")
            write = asyncio.create_task(replica.write(b"k", b'"revived"', None))
            reap = asyncio.create_task(replica.reap(b"k", confirmed))
            written, reaped = await asyncio.gather(write, reap)
            assert not reaped  # the key's lock orders them: the reap sees the new record and refuses
            assert await replica.read(b"k") == written
        finally:
            await replica.engine.close()

    run(main())
