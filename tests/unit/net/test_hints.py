"""The hint store on a real engine: storing, batching, accounting, recovery after a restart, the size bound,
the hint window, and delivery that stops at the first failure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ringkv.cluster.ids import NodeId
from ringkv.errors import HintsFullError
from ringkv.net.hints import Hint, HintStore, deliver_pending, drop_expired
from ringkv.net.transport import TransportError
from ringkv.storage.aio import AsyncEngine
from ringkv.storage.engine import EngineOptions
from ringkv.storage.wal import Durability

T = TypeVar("T")
A, B, AB = NodeId("n1"), NodeId("n2"), NodeId("n10")  # "n1" is a prefix of "n10": their hints must not mix
WINDOW_S = 60.0


def run(coro: Coroutine[Any, Any, T], limit_s: float = 10.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit_s):
            return await coro

    return asyncio.run(bounded())


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


@asynccontextmanager
async def hint_store(path: Path, max_bytes: int = 1 << 20, clock: Clock | None = None) -> AsyncIterator[HintStore]:
    engine = await AsyncEngine.open(str(path), EngineOptions(durability=Durability.OFF))
    store = HintStore(engine, max_bytes, WINDOW_S, clock_ms=clock or Clock())
    await store.load()
    try:
        yield store
    finally:
        await engine.close()


def test_store_batch_and_remove(tmp_path: Path) -> None:
    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            for i in range(3):
                await store.store(A, b"k%d" % i, b"record-a-%d" % i)
            await store.store(AB, b"kx", b"record-ab")
            await store.store(B, b"ky", b"record-b")
            hints = await store.batch(A)
            assert [(h.target, h.key, h.record) for h in hints] == [
                (A, b"k%d" % i, b"record-a-%d" % i) for i in range(3)
            ]
            assert [(h.target, h.key) for h in await store.batch(AB)] == [(AB, b"kx")]
            assert [h.key for h in await store.batch(A, limit=2)] == [b"k0", b"k1"]  # oldest first

            await store.remove(hints[1], delivered=True)
            assert [h.key for h in await store.batch(A)] == [b"k0", b"k2"]
            assert await store.batch(NodeId("nobody")) == []

    run(main())


def test_pending_counts_and_bytes(tmp_path: Path) -> None:
    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            assert (store.pending, store.bytes, store.stored) == ({}, 0, 0)
            await store.store(A, b"k1", b"r" * 100)
            await store.store(A, b"k2", b"r" * 50)
            await store.store(B, b"k3", b"r" * 10)
            assert store.pending == {A: 2, B: 1}
            assert store.stored == 3
            hints = await store.batch(A) + await store.batch(B)
            assert store.bytes == sum(h.size for h in hints)
            assert store.bytes > 160

            await store.remove(hints[0], delivered=True)
            await store.remove(hints[2], delivered=False)
            assert store.pending == {A: 1}
            assert store.bytes == hints[1].size
            assert (store.delivered, store.dropped) == (1, 1)
            await store.remove(hints[1], delivered=True)
            assert (store.pending, store.bytes, store.delivered) == ({}, 0, 2)

    run(main())


def test_load_after_reopening_recovers_pending_counts_and_bytes(tmp_path: Path) -> None:
    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            for i in range(4):
                await store.store(A, b"k%d" % i, b"v" * i)
            await store.store(B, b"kb", b"vb")
            await store.remove((await store.batch(A, limit=1))[0], delivered=True)
            pending, size = dict(store.pending), store.bytes
        assert pending == {A: 3, B: 1}

        async with hint_store(tmp_path / "hints") as reopened:
            assert reopened.pending == pending
            assert reopened.bytes == size
            assert [h.key for h in await reopened.batch(A)] == [b"k1", b"k2", b"k3"]
            await reopened.store(A, b"k4", b"v")  # new hints sort after the recovered ones
            assert [h.key for h in await reopened.batch(A)] == [b"k1", b"k2", b"k3", b"k4"]

    run(main())


def test_a_full_store_refuses_hints_and_counts_them_dropped(tmp_path: Path) -> None:
    async def main() -> None:
        async with hint_store(tmp_path / "hints", max_bytes=300) as store:
            await store.store(A, b"k1", b"r" * 100)
            await store.store(A, b"k2", b"r" * 100)
            with pytest.raises(HintsFullError):
                await store.store(A, b"k3", b"r" * 100)
            assert store.pending == {A: 2}
            assert (store.stored, store.dropped) == (2, 1)
            assert [h.key for h in await store.batch(A)] == [b"k1", b"k2"]  # nothing was written
            await store.remove((await store.batch(A))[0], delivered=True)
            await store.store(A, b"k3", b"r" * 100)  # room again
            assert store.pending == {A: 2}

    run(main())


def test_expired_hints_are_dropped_not_sent(tmp_path: Path) -> None:
    clock = Clock()

    async def main() -> None:
        async with hint_store(tmp_path / "hints", clock=clock) as store:
            await store.store(A, b"old1", b"r")
            await store.store(A, b"old2", b"r")
            clock.ms += int(WINDOW_S * 1000) // 2
            await store.store(A, b"new", b"r")
            clock.ms += int(WINDOW_S * 1000) // 2 + 1  # the first two are now past the window, the last is not
            sent: list[bytes] = []

            async def send(hint: Hint) -> None:
                sent.append(hint.key)

            assert await deliver_pending(store, A, send) == 1
            assert sent == [b"new"]
            assert (store.dropped, store.delivered) == (2, 1)
            assert store.pending == {}
            assert await store.batch(A) == []

    run(main())


def test_delivery_stops_at_the_first_failing_send_and_keeps_the_rest(tmp_path: Path) -> None:
    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            for i in range(5):
                await store.store(A, b"k%d" % i, b"r")
            await store.store(B, b"other", b"r")
            sent: list[bytes] = []

            async def send(hint: Hint) -> None:
                if hint.key == b"k2":
                    raise TransportError("target went away")
                sent.append(hint.key)

            with pytest.raises(TransportError):
                await deliver_pending(store, A, send)
            assert sent == [b"k0", b"k1"]
            assert [h.key for h in await store.batch(A)] == [b"k2", b"k3", b"k4"]
            assert store.pending == {A: 3, B: 1}
            assert (store.delivered, store.dropped) == (2, 0)

            async def send_all(hint: Hint) -> None:
                sent.append(hint.key)

            assert await deliver_pending(store, A, send_all) == 3
            assert sent == [b"k0", b"k1", b"k2", b"k3", b"k4"]
            assert store.pending == {B: 1}

    run(main())


def test_delivery_goes_one_batch_at_a_time(tmp_path: Path) -> None:
    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            for i in range(5):
                await store.store(A, b"k%d" % i, b"r")

            async def send(hint: Hint) -> None:
                pass

            assert await deliver_pending(store, A, send, batch=2) == 2
            assert store.pending == {A: 3}
            assert await deliver_pending(store, A, send, batch=2) == 2
            assert await deliver_pending(store, A, send, batch=2) == 1
            assert await deliver_pending(store, A, send, batch=2) == 0
            assert store.pending == {}

    run(main())


def test_drop_expired_drops_only_hints_past_the_window(tmp_path: Path) -> None:
    clock = Clock()

    async def main() -> None:
        async with hint_store(tmp_path / "hints", clock=clock) as store:
            await store.store(A, b"old", b"r")
            await store.store(B, b"other-target", b"r")
            clock.ms += int(WINDOW_S * 1000)
            await store.store(A, b"new", b"r")
            assert await drop_expired(store, A) == 0  # exactly at the window: still kept
            clock.ms += 1
            assert await drop_expired(store, A) == 1
            assert [h.key for h in await store.batch(A)] == [b"new"]
            assert store.pending == {A: 1, B: 1}
            assert (store.dropped, store.delivered) == (1, 0)

    run(main())
