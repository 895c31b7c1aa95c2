"""The live progress line on stderr: phase, a bar, operations so far and throughput so far.

On a terminal the line is redrawn in place (at most 5 times a second); otherwise (a log, CI) one line is written
every 5 seconds, so a captured log stays readable.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

from ringkv.loadgen.plan import BenchPlan

WIDTH = 24


@dataclass(frozen=True)
class Snapshot:
    phase: str  # runner.WARMUP | runner.MEASURE | runner.DONE
    phase_elapsed_s: float
    done: int  # operations recorded so far in the measured phase
    errors: int


def bar(fraction: float) -> str:
    filled = int(WIDTH * min(1.0, max(0.0, fraction)))
    return "[" + "#" * filled + "." * (WIDTH - filled) + "]"


class Progress:
    def __init__(self, label: str, plan: BenchPlan, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.label = label
        self.plan = plan
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self._last = 0.0
        self._open = False

    def _show(self, line: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < (0.2 if self.tty else 5.0):
            return
        self._last = now
        if self.tty:
            self.stream.write("\r\033[K  " + line)
            self._open = True
        else:
            self.stream.write("  " + line + "\n")
        self.stream.flush()

    def preload(self, written: int) -> None:
        total = self.plan.keys
        self._show(f"{self.label} preload {bar(written / total)} {written:,}/{total:,} keys", written == total)

    def load(self, snap: Snapshot, force: bool = False) -> None:
        plan = self.plan
        if snap.phase == "warm-up":
            self._show(f"{self.label} warm-up {bar(snap.phase_elapsed_s / max(plan.warmup_s, 1e-9))} "
                       f"{snap.phase_elapsed_s:.1f}/{plan.warmup_s:g}s", force)
            return
        fraction = (snap.done / plan.ops if plan.ops is not None
                    else snap.phase_elapsed_s / (plan.duration_s or 1.0))
        rate = snap.done / snap.phase_elapsed_s if snap.phase_elapsed_s > 0 else 0.0
        self._show(f"{self.label} {bar(fraction)} {snap.phase_elapsed_s:5.1f}s  {snap.done:,} ops  "
                   f"{rate:,.0f} ops/s  {snap.errors:,} errors", force)

    def finish(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
