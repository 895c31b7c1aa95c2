"""The byte-rate limiter on a fake clock: the long-run rate, the burst, debt from requests over the burst,
unlimited mode, FIFO order of concurrent waiters, cancellation, and the counters. Nothing really sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from ringkv.net.throttle import RateLimiter

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], limit_s: float = 10.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit_s):
            return await coro

    return asyncio.run(bounded())


class FakeTime:
    """A clock that only moves when the limiter sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # let other tasks run, as a real sleep would

    def limiter(self, rate: float | None, burst_bytes: int | None = None) -> RateLimiter:
        return RateLimiter(rate, burst_bytes, clock=self.clock, sleep=self.sleep)


@pytest.mark.parametrize("rate", [None, 0])
def test_unlimited_never_waits_but_counts(rate: float | None) -> None:
    t = FakeTime()
    limiter = t.limiter(rate)

    async def main() -> None:
        for _ in range(1000):
            await limiter.acquire(1 << 20)

    run(main())
    assert limiter.unlimited
    assert t.sleeps == []
    assert (limiter.bytes_total, limiter.waited_s) == (1000 << 20, 0.0)


def test_many_acquires_go_at_the_configured_rate() -> None:
    t = FakeTime()
    limiter = t.limiter(1000.0, burst_bytes=100)
    start = t.now

    async def main() -> None:
        for _ in range(1000):
            await limiter.acquire(100)

    run(main())
    elapsed = t.now - start
    assert limiter.bytes_total == 100_000
    # the first 100 bytes go on the full bucket; the other 99,900 at 1000 B/s
    assert elapsed == pytest.approx(99.9)
    assert limiter.waited_s == pytest.approx(elapsed)
    assert limiter.bytes_total / elapsed <= 1000.0 + 100 / elapsed + 1e-6


def test_odd_sizes_still_average_the_rate() -> None:
    t = FakeTime()
    limiter = t.limiter(5000.0, burst_bytes=1000)
    sizes = [(i * 7919) % 3000 + 1 for i in range(500)]  # some over the burst, most under

    async def main() -> None:
        for size in sizes:
            await limiter.acquire(size)

    start = t.now
    run(main())
    elapsed = t.now - start
    assert limiter.bytes_total == sum(sizes)
    # never faster than rate * t + burst, and not much slower: the last request's debt is the only slack
    assert sum(sizes) <= 5000.0 * elapsed + 1000 + 1e-6
    assert elapsed == pytest.approx((sum(sizes) - sizes[-1]) / 5000.0, abs=1000 / 5000.0)


def test_an_idle_limiter_lets_one_burst_through_at_once_and_no_more() -> None:
    t = FakeTime()
    limiter = t.limiter(1000.0, burst_bytes=500)

    async def main() -> None:
        for _ in range(5):
            await limiter.acquire(100)  # the full bucket
        assert t.sleeps == []
        assert limiter.available() == pytest.approx(0, abs=1e-6)
        await limiter.acquire(100)
        assert t.sleeps == [pytest.approx(0.1)]

        t.now += 3600  # a long idle time fills the bucket up to the burst, not beyond
        assert limiter.available() == pytest.approx(500)
        for _ in range(5):
            await limiter.acquire(100)
        assert len(t.sleeps) == 1
        await limiter.acquire(100)
        assert t.sleeps[1:] == [pytest.approx(0.1)]

    run(main())


def test_the_default_burst_is_one_second_of_the_rate() -> None:
    t = FakeTime()
    limiter = t.limiter(2000.0)
    assert limiter.burst == 2000

    async def main() -> None:
        await limiter.acquire(2000)
        assert t.sleeps == []
        await limiter.acquire(1)
        assert t.sleeps == [pytest.approx(1 / 2000)]

    run(main())


def test_a_request_over_the_burst_goes_then_its_debt_is_paid() -> None:
    t = FakeTime()
    limiter = t.limiter(1000.0, burst_bytes=100)

    async def main() -> None:
        await limiter.acquire(1000)  # ten bursts at once: allowed on a full bucket
        assert t.sleeps == []
        assert limiter.available() == pytest.approx(-900)  # in debt
        await limiter.acquire(1)  # waits off the debt first
        assert t.sleeps == [pytest.approx(0.901)]

        t.now += 10.0  # full again
        await limiter.acquire(50)
        assert len(t.sleeps) == 1
        await limiter.acquire(1000)  # over the burst on a bucket that is not full: waits until it is
        assert t.sleeps[1:] == [pytest.approx(0.05)]

    run(main())


def test_concurrent_waiters_are_served_in_order_at_the_rate() -> None:
    t = FakeTime()
    limiter = t.limiter(100.0, burst_bytes=100)
    done: list[tuple[int, float]] = []

    async def one(i: int) -> None:
        await limiter.acquire(100)
        done.append((i, t.now))

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(10)))

    start = t.now
    run(main())
    assert [i for i, _ in done] == list(range(10))
    assert [at - start for _, at in done] == pytest.approx([float(i) for i in range(10)])
    assert limiter.waited_s == pytest.approx(9.0)


def test_a_cancelled_acquire_takes_nothing() -> None:
    t = FakeTime()
    entered = asyncio.Event()
    never = asyncio.Event()

    async def blocking_sleep(seconds: float) -> None:
        entered.set()
        await never.wait()

    limiter = RateLimiter(100.0, 100, clock=t.clock, sleep=blocking_sleep)

    async def main() -> None:
        await limiter.acquire(100)
        before = limiter.available()
        waiter = asyncio.create_task(limiter.acquire(50))
        await entered.wait()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert limiter.available() == before
        assert limiter.bytes_total == 100
        t.now += 1.0  # the bucket refills as if the cancelled request had never been
        assert limiter.available() == pytest.approx(100)

    run(main())


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(-1.0)
    with pytest.raises(ValueError):
        RateLimiter(100.0, burst_bytes=-1)
    limiter = RateLimiter(100.0)

    async def main() -> None:
        with pytest.raises(ValueError):
            await limiter.acquire(-1)
        await limiter.acquire(0)

    run(main())
    assert limiter.bytes_total == 0
