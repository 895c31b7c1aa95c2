"""A byte-rate limiter (token bucket) for background traffic: hint delivery, streaming, anti-entropy.

Contract of `RateLimiter(rate_bytes_per_s, burst_bytes=None)`:

- `await acquire(n)` returns once `n` more bytes may go. Over any interval of length t the bytes let
  through are at most `burst + rate * t`; in the long run the rate is `rate_bytes_per_s`.
- The bucket holds up to `burst_bytes` (default: one second's worth of the rate) and starts full, so an
  idle limiter lets a burst through at once.
- A request larger than the burst is not refused and not split: it waits for a full bucket, goes, and
  leaves the bucket in debt (negative), which later requests wait off. Big requests are paced, not stuck.
- `rate_bytes_per_s` None or 0 means unlimited: `acquire` never waits (the bytes are still counted).
- Waiters are served one at a time in arrival order (FIFO); a cancelled `acquire` takes nothing.
- Counters: `bytes_total` (bytes acquired) and `waited_s` (time spent sleeping for the rate; sleeps are
  serialised, so this is the wall-clock time the limiter held its users back).

The clock and the sleep are injectable (defaults `time.monotonic` and `asyncio.sleep`), so tests run on a
fake clock without sleeping. The bucket is kept as a "theoretical arrival time" (GCRA): the time at which
it would be full again, so waits are computed once, exactly, with no polling loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

_MIN_WAIT_S = 1e-6


class RateLimiter:
    def __init__(self, rate_bytes_per_s: float | None, burst_bytes: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        if rate_bytes_per_s is not None and rate_bytes_per_s < 0:
            raise ValueError(f"rate must be >= 0 bytes/s (0 or None: unlimited), not {rate_bytes_per_s}")
        if burst_bytes is not None and burst_bytes < 0:
            raise ValueError(f"burst must be >= 0 bytes, not {burst_bytes}")
        self.rate: float | None = float(rate_bytes_per_s) if rate_bytes_per_s else None
        if burst_bytes is not None:
            self.burst = burst_bytes
        else:
            self.burst = max(1, int(self.rate)) if self.rate is not None else 0
        self._clock = clock
        self._sleep = sleep
        self._full_at = clock()  # when the bucket is (or was) full; later than now = some tokens are taken
        self._lock = asyncio.Lock()
        self.bytes_total = 0
        self.waited_s = 0.0

    @property
    def unlimited(self) -> bool:
        return self.rate is None

    def available(self) -> float:
        """Bytes that could go right now without waiting (negative: the bucket is in debt)."""
        if self.rate is None:
            return float("inf")
        return self.burst - max(0.0, self._full_at - self._clock()) * self.rate

    async def acquire(self, n: int) -> None:
        """Wait until `n` bytes may go (see the module docstring), then take them."""
        if n < 0:
            raise ValueError(f"cannot acquire {n} bytes")
        rate = self.rate
        if rate is None or n == 0:
            self.bytes_total += n
            return
        async with self._lock:
            need = min(n, self.burst)  # wait for this many tokens; the rest of a big request becomes debt
            start = self._clock()
            wait = self._full_at - (self.burst - need) / rate - start
            if wait > _MIN_WAIT_S:  # below: float noise; going a microsecond early does not add up
                await self._sleep(wait)
                self.waited_s += max(0.0, self._clock() - start)
            self._full_at = max(self._full_at, self._clock()) + n / rate
            self.bytes_total += n
