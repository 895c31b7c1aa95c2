"""What a check run records: one `Op` per request a client sent, with when it started and ended and how it
ended. Pure data.

Outcomes (`Outcome`):

- `OK`: the node acknowledged (put/delete 200; read 200, 300 or 404).
- `FAIL`: the node refused in a way that means nothing was applied: a 4xx other than 404 on a write
  (`invalid_context`, `too_many_siblings`...), a 503 `not_ready` (a node starting, joining, drained or
  stopping refuses before it does anything), or a refused connection (the request never left us).
- `INFO` (indeterminate): it may or may not have been applied — a timeout, a connection lost mid-request,
  a 5xx (503 `quorum_unavailable` included: some replicas may hold it).

A write's `element` is the unique thing it added (set workload) or wrote (register workload); reads carry
the elements they saw and how many siblings there were.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Outcome(enum.StrEnum):
    OK = "ok"
    FAIL = "fail"
    INFO = "info"


class Kind(enum.StrEnum):
    ADD = "add"  # set workload: read-merge-write adding one element
    WRITE = "write"  # register workload: a blind put of a unique key
    READ = "read"


NOT_APPLIED_ERRORS = frozenset({"not_ready"})  # 503 error codes a node answers before it does anything


def classify(status: int, write: bool, refused: bool = False, error: str | None = None) -> Outcome:
    """The outcome of an HTTP answer (`error`: the JSON error code, if any). `status` 0 means no answer:
    `refused` (the connection was refused, the request never left) is a failure, anything else (timeout,
    connection lost) indeterminate."""
    if status == 0:
        return Outcome.FAIL if refused else Outcome.INFO
    if status in (200, 300) or (status == 404 and not write):
        return Outcome.OK
    if (400 <= status < 500 and status != 404) or (status == 503 and error in NOT_APPLIED_ERRORS):
        return Outcome.FAIL
    return Outcome.INFO  # 5xx (503 included), or a write answered 404: it may have been applied


@dataclass(frozen=True)
class Op:
    client: int
    kind: Kind
    key: str
    element: str | None  # what a write added / wrote
    start_s: float  # seconds since the run began
    end_s: float
    outcome: Outcome
    node: str = ""  # the URL the request went to
    status: int = 0  # HTTP status, 0 when none came back
    seen: tuple[str, ...] = ()  # a read: the elements it saw
    siblings: int = 0  # a read: how many siblings the answer had

    @property
    def latency_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    final: dict[str, frozenset[str]] = field(default_factory=dict)  # key -> elements the final read saw
    final_unreadable: set[str] = field(default_factory=set)  # keys whose final read failed
    events: list[tuple[float, str]] = field(default_factory=list)  # (seconds since the start, what happened)

    def record(self, op: Op) -> None:
        self.ops.append(op)
