"""The replica's rules that keep dots unique: nothing observed before it is durable, no forged context
claiming more of this node than it issued, corrupt records quarantined (issue 9, defects 2, 5 and 9)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest

from ringkv.cluster import versions
from ringkv.cluster.ids import NodeId
from ringkv.cluster.versions import MAX_COUNTER, VersionVector
from ringkv.errors import InvalidContextError
from ringkv.replica import Quarantine, Replica, storage_key
from ringkv.storage.aio import AsyncEngine
from ringkv.storage.engine import EngineOptions
from ringkv.storage.wal import Durability

T = TypeVar("T")
ME = NodeId("n1#aaaa")


def run(coro: Coroutine[Any, Any, T], limit_s: float = 10.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit_s):
            return await coro

    return asyncio.run(bounded())


class GatedEngine(AsyncEngine):
    """Makes a write visible at once (as the real engine does) and durable only when the test opens the gate."""

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.gate = asyncio.Event()
        self.gate.set()
        self.parked = asyncio.Event()

    async def write(self, key: bytes, value: bytes | None) -> None:
        self.engine.write(key, value)  # in the memtable: visible to any reader of the engine
        self.parked.set()
        await self.gate.wait()  # "the fsync"

    def write_nowait(self, key: bytes, value: bytes | None,
                     on_visible: Any = None) -> tuple[int, asyncio.Future[None] | None]:
        self.engine.write(key, value)  # visible at once, durable once the gate opens
        self.parked.set()
        durable = asyncio.get_running_loop().create_future()

        async def fsync() -> None:
            await self.gate.wait()
            durable.set_result(None)

        self._fsync = asyncio.ensure_future(fsync())
        return 0, durable


@asynccontextmanager
async def replica_at(path: Path, quarantine_dir: Path | None = None) -> AsyncIterator[tuple[Replica, GatedEngine]]:
    base = await AsyncEngine.open(str(path), EngineOptions(durability=Durability.OFF))
    engine = GatedEngine(base.engine)
    renewed: list[NodeId] = []

    async def renew(old: NodeId) -> NodeId:
        renewed.append(NodeId(f"n1#renewed{len(renewed)}"))
        return renewed[-1]

    replica = Replica(engine, ME, clock_ms=lambda: 1, renew_actor=renew,
                      quarantine=Quarantine(None if quarantine_dir is None else str(quarantine_dir)))
    try:
        yield replica, engine
    finally:
        await base.close()


def test_a_read_never_sees_a_version_before_it_is_durable(tmp_path: Path) -> None:
    # Defect 2: a read coordinated elsewhere saw the coordinator's not-yet-fsynced version, read repair made it
    # durable on the other replicas, and after a crash the coordinator reissued its dot for another value.
    async def main() -> None:
        async with replica_at(tmp_path / "data") as (replica, engine):
            first = await replica.write(b"k", b"durable", None)
            engine.gate.clear()
            engine.parked.clear()
            writing = asyncio.create_task(replica.write(b"k", b"not yet durable", versions.read_context(first)))
            await engine.parked.wait()  # the new version is in the memtable, its fsync not done
            reading = asyncio.create_task(replica.read(b"k"))
            for _ in range(20):  # let the read run as far as it can
                await asyncio.sleep(0)
            assert not reading.done(), f"a read saw {reading.result()} before it was durable"
            engine.gate.set()
            await writing
            assert versions.live_values(await reading) == [b"not yet durable"]

    run(main())


def test_a_context_claiming_more_of_this_node_than_it_issued_is_refused(tmp_path: Path) -> None:
    # Defect 9: a context naming the coordinator at MAX_COUNTER - 1 was accepted, and every later write of the
    # key through that node failed.
    async def main() -> None:
        async with replica_at(tmp_path / "data") as (replica, _):
            record = await replica.write(b"k", b"v1", None)
            forged = VersionVector.of({ME: MAX_COUNTER - 1})
            with pytest.raises(InvalidContextError):
                await replica.write(b"k", b"evil", forged)
            with pytest.raises(InvalidContextError):
                await replica.write(b"fresh", b"evil", VersionVector.of({ME: 1}))  # never issued for this key
            again = await replica.write(b"k", b"v2", versions.read_context(record))  # the key still works
            assert versions.live_values(again) == [b"v2"]
            # other actors' counters are not ours to check (a client may have read newer replicas)
            other = VersionVector.of({NodeId("n2#bbbb"): 7, ME: again.context.get(ME)})
            assert versions.live_values(await replica.write(b"k", b"v3", other)) == [b"v3"]

    run(main())


def test_a_corrupt_record_is_quarantined_and_the_merge_replaces_it(tmp_path: Path) -> None:
    # Defect 5: merge_in decoded the corrupt local record first and raised, so the key could never be repaired.
    async def main() -> None:
        async with replica_at(tmp_path / "data", tmp_path / "quarantine") as (replica, engine):
            await engine.put(storage_key(b"k"), b"\x01\x00\x00\x00\x00garbage")
            incoming = versions.update(versions.empty_record(), None, NodeId("n2#bbbb"), b"good", 1)
            merged = await replica.merge_in(b"k", incoming)
            assert merged == incoming
            assert await replica.read(b"k") == incoming
            assert replica.quarantine.count == 1
            files = list((tmp_path / "quarantine").iterdir())
            assert len(files) == 1
            kept = msgpack.unpackb(files[0].read_bytes())
            assert kept["key"] == b"k" and kept["raw"] == b"\x01\x00\x00\x00\x00garbage"

    run(main())


def test_a_corrupt_record_renews_the_actor_before_the_next_write(tmp_path: Path) -> None:
    # The corrupt record was the only proof of the counters this node had issued for the key: writing on from
    # an empty record under the same actor could reissue one of them.
    async def main() -> None:
        async with replica_at(tmp_path / "data") as (replica, engine):
            for i in range(3):
                await replica.write(b"k", b"v%d" % i, None)  # (ME, 3) is out there on other replicas
            await engine.put(storage_key(b"k"), b"\x01corrupt")
            assert await replica.read(b"k") == versions.empty_record()  # reads as empty locally
            record = await replica.write(b"k", b"after", None)
            assert replica.actor != ME
            assert [v.dot.node for v in record.versions] == [replica.actor]
            assert replica.quarantine.count == 1

    run(main())


def test_a_cancelled_write_keeps_its_key_locked_until_the_version_is_durable(tmp_path: Path) -> None:
    # Review finding: a dropped internode connection cancels its handlers; a write cancelled while waiting
    # for its fsync released the key lock, and a lock-free read saw the version that was not durable yet.
    async def main() -> None:
        async with replica_at(tmp_path / "data") as (replica, engine):
            await replica.write(b"k", b"durable", None)
            engine.gate.clear()
            engine.parked.clear()
            writing = asyncio.create_task(replica.write(b"k", b"pending", None))
            await engine.parked.wait()
            writing.cancel()
            reading = asyncio.create_task(replica.read(b"k"))
            for _ in range(20):
                await asyncio.sleep(0)
            assert not reading.done(), f"a read saw {reading.result()} before it was durable"
            engine.gate.set()
            assert versions.live_values(await reading) == [b"pending"]
            with pytest.raises(asyncio.CancelledError):
                await writing

    run(main())


def test_a_context_far_ahead_for_any_actor_is_refused(tmp_path: Path) -> None:
    # Review finding: only our own actor was checked; a forged counter of another node near MAX_COUNTER was
    # replicated and blocked every later write of the key coordinated by that node.
    async def main() -> None:
        async with replica_at(tmp_path / "data") as (replica, _):
            record = await replica.write(b"k", b"v1", None)
            other = NodeId("n2#bbbb")
            with pytest.raises(InvalidContextError):
                await replica.write(b"k", b"evil", record.context.merge(VersionVector.of({other: MAX_COUNTER - 1})))
            ahead = record.context.merge(VersionVector.of({other: 1000}))  # a client that read newer replicas
            assert versions.live_values(await replica.write(b"k", b"v2", ahead)) == [b"v2"]

    run(main())
