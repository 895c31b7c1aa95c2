"""The unit every storage structure holds: one version of one key.

`seq` is the engine-wide sequence number assigned at write time; among entries for the same key the one with
the highest `seq` is the current one. `value is None` marks a tombstone (a delete). `ts_ms` is the wall-clock
time of the write in milliseconds; it is used only to decide when a tombstone is old enough to purge.
"""

from __future__ import annotations

from typing import NamedTuple


class Entry(NamedTuple):
    key: bytes
    seq: int
    value: bytes | None
    ts_ms: int

    @property
    def is_tombstone(self) -> bool:
        return self.value is None
