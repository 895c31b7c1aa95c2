"""The hint store on a real engine: storing, batching, accounting, recovery after a restart, the size bound;
delivery until nothing is left (whatever the hints' age, past failing and bad hints, within a byte rate);
corrupt stored hints; and the hint window, which is about how long a target has been down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest

from ringkv.cluster.ids import NodeId
from ringkv.errors import HintsFullError, InvalidRecordError
from ringkv.net.hints import Hint, HintStore, deliver_pending, drop_for_downtime
from ringkv.net.throttle import RateLimiter
from ringkv.net.transport import RemoteError, TransportError
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


# -- delivery -----------------------------------------------------------------------------------------------


class Recorder:
    """A `send` that records what it was given and fails the hints it is told to."""

    def __init__(self, fail: dict[bytes, Exception] | None = None) -> None:
        self.sent: list[bytes] = []
        self.tried: list[bytes] = []
        self.fail = fail or {}

    async def __call__(self, hint: Hint) -> None:
        self.tried.append(hint.key)
        error = self.fail.get(hint.key)
        if error is not None:
            raise error
        self.sent.append(hint.key)


async def keys_of(store: HintStore, target: NodeId) -> list[bytes]:
    return [h.key for h in await store.batch(target, limit=1 << 20)]


def test_an_old_hint_is_delivered_once_its_target_is_back(tmp_path: Path) -> None:
    clock = Clock()

    async def main() -> None:
        async with hint_store(tmp_path / "hints", clock=clock) as store:
            await store.store(A, b"old1", b"r")
            await store.store(A, b"old2", b"r")
            clock.ms += int(WINDOW_S * 1000) * 10  # far older than the window: its age does not matter
            await store.store(A, b"new", b"r")
            send = Recorder()
            assert await deliver_pending(store, A, send) == 3
            assert sorted(send.sent) == [b"new", b"old1", b"old2"]
            assert (store.delivered, store.dropped) == (3, 0)
            assert store.pending == {}
            assert await store.batch(A) == []

    run(main())


def test_a_backlog_bigger_than_a_batch_is_delivered_in_one_call(tmp_path: Path) -> None:
    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            for i in range(1000):
                await store.store(A, b"k%04d" % i, b"record-%d" % i)
            await store.store(B, b"other", b"r")
            send = Recorder()
            assert await deliver_pending(store, A, send) == 1000  # batches of 128, all of them in one call
            assert sorted(send.sent) == [b"k%04d" % i for i in range(1000)]
            assert store.pending == {B: 1}
            assert await store.batch(A) == []
            payload = sum(len(b"k%04d" % i) + len(b"record-%d" % i) for i in range(1000))  # data keys + records
            assert (store.delivered, store.delivered_bytes) == (1000, payload)

    run(main())


def test_delivery_goes_on_batch_after_batch_until_nothing_is_left(tmp_path: Path) -> None:
    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            for i in range(5):
                await store.store(A, b"k%d" % i, b"r")
            send = Recorder()

            async def send_and_add(hint: Hint) -> None:
                await send(hint)
                if hint.key == b"k0":  # a hint stored while delivery runs goes in the same call
                    await store.store(A, b"late", b"r")

            assert await deliver_pending(store, A, send_and_add, batch=2) == 6
            assert sorted(send.sent) == sorted([b"k%d" % i for i in range(5)] + [b"late"])
            assert store.pending == {}
            assert await deliver_pending(store, A, send_and_add, batch=2) == 0

    run(main())


def test_a_hint_the_target_cannot_decode_is_dropped_and_the_others_are_delivered(tmp_path: Path) -> None:
    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            for i in range(5):
                await store.store(A, b"k%d" % i, b"r" * 10)
            send = Recorder({b"k1": RemoteError("invalid_record", "record checksum mismatch")})
            assert await deliver_pending(store, A, send) == 4
            assert sorted(send.sent) == [b"k0", b"k2", b"k3", b"k4"]
            assert store.pending == {}
            assert store.bytes == 0
            assert (store.delivered, store.dropped, store.corrupt, store.delivery_failures) == (4, 1, 1, 0)
            assert await store.batch(A) == []

    run(main())


def test_a_hint_whose_record_does_not_decode_locally_is_dropped_too(tmp_path: Path) -> None:
    async def main() -> None:  # delivery to this node itself decodes the record before merging it
        async with hint_store(tmp_path / "hints") as store:
            for i in range(3):
                await store.store(A, b"k%d" % i, b"r")
            send = Recorder({b"k0": InvalidRecordError("record checksum mismatch")})
            assert await deliver_pending(store, A, send) == 2
            assert store.pending == {}
            assert (store.delivered, store.dropped, store.corrupt) == (2, 1, 1)

    run(main())


def test_a_hint_failing_otherwise_stays_and_the_others_are_delivered(tmp_path: Path) -> None:
    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            for i in range(5):
                await store.store(A, b"k%d" % i, b"r")
            send = Recorder({b"k1": RemoteError("overloaded", "try later")})
            # batch=2: the failing hint ends the first batch; the next batches must start after it
            assert await deliver_pending(store, A, send, batch=2) == 4
            assert sorted(send.sent) == [b"k0", b"k2", b"k3", b"k4"]
            assert send.tried.count(b"k1") == 1  # tried once per call, not in a loop
            assert await keys_of(store, A) == [b"k1"]
            assert store.pending == {A: 1}
            assert (store.delivered, store.dropped, store.corrupt, store.delivery_failures) == (4, 0, 0, 1)

            send.fail.clear()  # the next pass delivers it
            assert await deliver_pending(store, A, send) == 1
            assert store.pending == {}

    run(main())


def test_delivery_terminates_when_every_hint_fails(tmp_path: Path) -> None:
    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            for i in range(300):
                await store.store(A, b"k%03d" % i, b"r")

            async def refuse(hint: Hint) -> None:
                tried.append(hint.key)
                raise RemoteError("internal_error", "boom")

            tried: list[bytes] = []
            assert await deliver_pending(store, A, refuse) == 0
            assert sorted(tried) == [b"k%03d" % i for i in range(300)]  # each tried exactly once
            assert store.pending == {A: 300}
            assert store.delivery_failures == 300

    run(main())


def test_a_transport_error_stops_delivery_and_keeps_the_rest(tmp_path: Path) -> None:
    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            for i in range(5):
                await store.store(A, b"k%d" % i, b"r")
            await store.store(B, b"other", b"r")
            send = Recorder({b"k2": TransportError("target went away")})
            with pytest.raises(TransportError):
                await deliver_pending(store, A, send, concurrency=1)
            assert send.tried == [b"k0", b"k1", b"k2"]  # nothing after the failure was tried
            assert await keys_of(store, A) == [b"k2", b"k3", b"k4"]
            assert store.pending == {A: 3, B: 1}
            assert (store.delivered, store.dropped) == (2, 0)

            send.fail.clear()
            assert await deliver_pending(store, A, send) == 3
            assert sorted(send.sent) == [b"k%d" % i for i in range(5)]
            assert store.pending == {B: 1}

    run(main())


def test_a_transport_error_waits_for_the_sends_in_flight(tmp_path: Path) -> None:
    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            for i in range(6):
                await store.store(A, b"k%d" % i, b"r")
            gate, failed = asyncio.Event(), asyncio.Event()
            started: list[bytes] = []

            async def send(hint: Hint) -> None:
                started.append(hint.key)
                if hint.key == b"k2":
                    failed.set()
                    raise TransportError("connection reset")
                await gate.wait()

            delivery = asyncio.create_task(deliver_pending(store, A, send, concurrency=3))
            await failed.wait()
            assert started == [b"k0", b"k1", b"k2"]
            assert not delivery.done()  # k0 and k1 are still in flight
            gate.set()
            with pytest.raises(TransportError):
                await delivery
            assert started == [b"k0", b"k1", b"k2"]  # nothing new was started after the failure
            assert await keys_of(store, A) == [b"k2", b"k3", b"k4", b"k5"]  # the in-flight ones were removed
            assert store.delivered == 2

    run(main())


def test_up_to_concurrency_hints_are_in_flight(tmp_path: Path) -> None:
    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            for i in range(20):
                await store.store(A, b"k%02d" % i, b"r")
            in_flight, most = 0, 0

            async def send(hint: Hint) -> None:
                nonlocal in_flight, most
                in_flight += 1
                most = max(most, in_flight)
                for _ in range(3):
                    await asyncio.sleep(0)  # yield to the other senders
                in_flight -= 1

            assert await deliver_pending(store, A, send, concurrency=4) == 20
            assert most == 4
            assert await deliver_pending(store, A, send, concurrency=4) == 0

    run(main())


def test_delivery_takes_each_hints_bytes_from_the_limiter_before_sending(tmp_path: Path) -> None:
    events: list[tuple[str, int]] = []

    class RecordingLimiter(RateLimiter):
        async def acquire(self, n: int) -> None:
            events.append(("acquire", n))
            await super().acquire(n)

    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            for i in range(3):
                await store.store(A, b"k%d" % i, b"r" * (10 * (i + 1)))

            async def send(hint: Hint) -> None:
                events.append(("send", hint.payload_bytes))

            limiter = RecordingLimiter(None)
            assert await deliver_pending(store, A, send, limiter, concurrency=1) == 3
            sizes = [2 + 10, 2 + 20, 2 + 30]  # data key + record
            assert events == [(kind, n) for n in sizes for kind in ("acquire", "send")]
            assert limiter.bytes_total == store.delivered_bytes == sum(sizes)

    run(main())


def test_delivery_keeps_to_the_limiters_rate(tmp_path: Path) -> None:
    now = [50.0]

    async def fake_sleep(seconds: float) -> None:
        now[0] += seconds
        await asyncio.sleep(0)

    limiter = RateLimiter(10_000.0, burst_bytes=1000, clock=lambda: now[0], sleep=fake_sleep)

    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            for i in range(200):
                await store.store(A, b"k%03d" % i, b"r" * 496)  # 500 payload bytes each
            sent_at: list[float] = []

            async def send(hint: Hint) -> None:
                sent_at.append(now[0])

            assert await deliver_pending(store, A, send, limiter) == 200
            assert limiter.bytes_total == store.delivered_bytes == 200 * 500
            # a full bucket (1000 bytes) goes at once, the other 99,000 bytes at 10,000 B/s
            assert now[0] - 50.0 == pytest.approx(9.9)
            for i, at in enumerate(sent_at):
                assert 500 * (i + 1) <= 1000 + 10_000 * (at - 50.0) + 1e-6

    run(main())


# -- corrupt hints --------------------------------------------------------------------------------------------


GARBAGE = [
    (b"\x00" * 8, b"\xc1\xc1\xc1"),  # not msgpack at all
    (b"\x00" * 7 + b"\x01", msgpack.packb({"key": b"k"}, use_bin_type=True)),  # msgpack, wrong shape
    (b"\x00" * 7 + b"\x02", msgpack.packb([b"k", b"r"], use_bin_type=True)),  # too few fields
    (b"\x00" * 7 + b"\x03", msgpack.packb(["k", b"r", 1], use_bin_type=True)),  # key not bytes
    (b"junk", msgpack.packb([b"k", b"r", 1], use_bin_type=True)),  # hint key without a sequence
    (b"\xff" * 8, msgpack.packb([b"k", b"r", 1], use_bin_type=True) + b"extra"),  # trailing bytes
]


async def put_garbage(store: HintStore, target: NodeId) -> None:
    for suffix, value in GARBAGE:
        await store.engine.put(target.encode() + b"\x00" + suffix, value)


def test_garbage_in_the_hint_engine_does_not_break_load(tmp_path: Path) -> None:
    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            for i in range(3):
                await store.store(A, b"k%d" % i, b"r")
            await store.store(B, b"kb", b"r")
            await put_garbage(store, A)
            good = dict(store.pending), store.bytes

        async with hint_store(tmp_path / "hints") as reopened:  # load() runs here
            assert (reopened.pending, reopened.bytes) == good
            assert (reopened.corrupt, reopened.dropped) == (len(GARBAGE), len(GARBAGE))
            assert await keys_of(reopened, A) == [b"k0", b"k1", b"k2"]
            assert len(await reopened.engine.scan(b"n1\x00", b"n1\x01")) == 3  # the garbage is gone
            assert reopened.corrupt == len(GARBAGE)  # and is not counted twice

    run(main())


def test_garbage_in_the_hint_engine_does_not_break_batch_or_delivery(tmp_path: Path) -> None:
    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            for i in range(3):
                await store.store(A, b"k%d" % i, b"r")
            await store.store(AB, b"kab", b"r")
            await put_garbage(store, A)  # after load: only batch and delivery meet it
            assert await keys_of(store, A) == [b"k0", b"k1", b"k2"]
            assert store.corrupt == len(GARBAGE)

            await put_garbage(store, A)
            send = Recorder()
            assert await deliver_pending(store, A, send, batch=2) == 3
            assert sorted(send.sent) == [b"k0", b"k1", b"k2"]
            assert store.pending == {AB: 1}
            assert store.bytes == (await store.batch(AB))[0].size
            assert (store.corrupt, store.dropped) == (2 * len(GARBAGE), 2 * len(GARBAGE))
            assert await store.engine.scan(b"n1\x00", b"n1\x01") == []

    run(main())


# -- the hint window: how long a target has been down -------------------------------------------------------


def test_drop_for_downtime_drops_all_of_a_targets_hints_only_past_the_window(tmp_path: Path) -> None:
    clock = Clock()

    async def main() -> None:
        async with hint_store(tmp_path / "hints", clock=clock) as store:
            for i in range(5):
                await store.store(A, b"k%d" % i, b"r")
            await store.store(AB, b"other-target", b"r")
            clock.ms += int(WINDOW_S * 1000) * 10  # hint age plays no part
            assert await drop_for_downtime(store, A, 0.0) == 0
            assert await drop_for_downtime(store, A, WINDOW_S) == 0  # exactly at the window: still kept
            assert store.pending == {A: 5, AB: 1}

            assert await drop_for_downtime(store, A, WINDOW_S + 0.001, batch=2) == 5
            assert await store.batch(A) == []
            assert store.pending == {AB: 1}
            assert store.bytes == (await store.batch(AB))[0].size
            assert (store.dropped, store.delivered) == (5, 0)
            assert await drop_for_downtime(store, A, WINDOW_S * 2) == 0  # nothing left

    run(main())


def test_a_store_accepts_hints_for_a_target_down_up_to_the_window(tmp_path: Path) -> None:
    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            assert store.accepts(0.0)
            assert store.accepts(WINDOW_S)
            assert not store.accepts(WINDOW_S + 0.001)

    run(main())


def test_sequences_continue_past_the_stored_ones_whatever_the_clock(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Review finding: the sequence came from the wall clock at start; a restart whose clock fell within the
    # previous run's range overwrote stored hints (which count toward W).
    import ringkv.net.hints as hints_module

    start = 1_800_000_000_000_000_000
    monkeypatch.setattr(hints_module.time, "time_ns", lambda: start)

    async def main() -> None:
        async with hint_store(tmp_path / "hints") as store:
            for i in range(3):
                await store.store(A, b"k%d" % i, b"r%d" % i)  # sequences start+1..start+3
        async with hint_store(tmp_path / "hints") as again:  # the clock reads the same again
            await again.store(A, b"new", b"r")
            assert len(await again.batch(A)) == 4  # nothing overwritten

    run(main())
