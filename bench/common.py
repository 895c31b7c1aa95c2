"""What the benchmark scripts share: a progress bar, polling with a deadline, free ports, the machine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ringkv import __version__, local

T = TypeVar("T")


class Progress:
    """A one-line progress bar on stderr (like bench/engine.py's)."""

    def __init__(self, label: str, total: int, enabled: bool = True) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.started = self.last = time.monotonic()
        self.finished = False

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or self.finished or (done != self.total and now - self.last < 0.5):
            return
        self.last = now
        self.finished = done == self.total
        filled = int(30 * done / max(1, self.total))
        rate = done / max(1e-9, now - self.started)
        sys.stderr.write(f"\r  {self.label:<30} [{'#' * filled}{'.' * (30 - filled)}] {done:,}/{self.total:,} "
                         f"{rate:,.0f}/s")
        if done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


async def wait_for(check: Callable[[], Awaitable[T | None]], what: str, timeout_s: float,
                   poll_s: float = 0.1) -> T:
    """Poll `check` until it returns something truthy (returned), or TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting until {what}")
        await asyncio.sleep(poll_s)


def pick_base_port(nodes: int) -> int:
    """A base port with base..base+nodes-1 and their peer ports (+1000) all free right now."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        base = rng.randrange(20_000, 28_000, 10)
        ports = [base + i for i in range(nodes)] + [base + local.PEER_PORT_OFFSET + i for i in range(nodes)]
        if all(local.port_free(p) for p in ports):
            return base
    raise RuntimeError("no free block of ports for the cluster")


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    return {"platform": platform.platform(), "cores": os.cpu_count(), "cpu": cpu,
            "python": platform.python_version(), "ringkv": __version__}
