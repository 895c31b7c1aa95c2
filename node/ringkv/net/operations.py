"""Long-running admin operations (repair now; streaming, decommission later): an id, a state, progress.

An operation is started by an admin request and runs as a task of the node; `GET` shows it while it runs
and after it ends. Its `progress` is a flat dict of counters the operation updates as it goes (for a
repair: ranges done and total, keys compared, keys repaired, bytes). The registry keeps the last
`KEEP` finished operations.

Operation ids are `<kind>-<8 hex chars>`, unique per node.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ringkv.operations")

KEEP = 32
RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"


@dataclass
class Operation:
    id: str
    kind: str
    params: dict[str, Any]
    started_ms: int
    state: str = RUNNING
    finished_ms: int | None = None
    error: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    _started: float = field(default_factory=time.monotonic, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def add(self, **counts: float) -> None:
        for name, n in counts.items():
            self.progress[name] = self.progress.get(name, 0) + n

    def to_json(self) -> dict[str, Any]:
        elapsed = (time.monotonic() - self._started) if self.finished_ms is None else \
            (self.finished_ms - self.started_ms) / 1000
        return {"id": self.id, "kind": self.kind, "params": self.params, "state": self.state,
                "started_ms": self.started_ms, "finished_ms": self.finished_ms, "error": self.error,
                "elapsed_s": round(elapsed, 3), "progress": dict(self.progress)}


class Operations:
    def __init__(self) -> None:
        self.all: dict[str, Operation] = {}

    def start(self, kind: str, params: dict[str, Any],
              run: Callable[[Operation], Awaitable[None]]) -> Operation:
        op = Operation(f"{kind}-{os.urandom(4).hex()}", kind, params, time.time_ns() // 1_000_000)
        self.all[op.id] = op
        op.task = asyncio.create_task(self._run(op, run))
        self._forget_old()
        return op

    async def _run(self, op: Operation, run: Callable[[Operation], Awaitable[None]]) -> None:
        try:
            await run(op)
            op.state = DONE
        except asyncio.CancelledError:
            op.state = CANCELLED
            raise
        except Exception as e:
            op.state = FAILED
            op.error = f"{type(e).__name__}: {e}"
            log.exception("operation %s failed", op.id)
        finally:
            op.finished_ms = time.time_ns() // 1_000_000
            log.info("operation %s %s: %s", op.id, op.state, op.progress)

    def get(self, op_id: str) -> Operation | None:
        return self.all.get(op_id)

    def running(self, kind: str | None = None) -> list[Operation]:
        return [op for op in self.all.values() if op.state == RUNNING and kind in (None, op.kind)]

    def _forget_old(self) -> None:
        finished = [op for op in self.all.values() if op.state != RUNNING]
        for op in finished[:-KEEP] if len(finished) > KEEP else []:
            del self.all[op.id]

    async def stop(self) -> None:
        tasks = [op.task for op in self.all.values() if op.task is not None and not op.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
