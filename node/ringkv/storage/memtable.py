"""The memtable: where writes land after the commit log, until flushed to an SSTable.

A hash map from key to its newest entry gives O(1) puts and point reads (the hot paths). The ordered view
that flushes and scans need is a sorted key list built on first use and kept until the next *new* key
arrives, so a flush sorts once and repeated scans of a quiet memtable sort nothing.

Thread-safety: the engine serialises writers; readers may run concurrently with the writer (dict reads
are atomic under the GIL; `entries` works on a snapshot of the keys and their values). A frozen memtable
never changes.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from ringkv.storage.entry import Entry

# Rough per-entry bookkeeping cost (tuple, dict slot, key/value objects) added to the payload size.
ENTRY_OVERHEAD_BYTES = 96


class Memtable:
    def __init__(self, segment_id: int) -> None:
        self.segment_id = segment_id  # the commit-log segment holding exactly this memtable's writes
        self._map: dict[bytes, Entry] = {}
        self._sorted: list[bytes] | None = []
        self._generation = 0  # bumped whenever a new key arrives
        self.approximate_bytes = 0  # what it holds (an overwrite replaces)
        self.logged_bytes = 0  # what was written to it, overwrites included: its commit-log segment's size
        self.max_seq = 0

    def __len__(self) -> int:
        return len(self._map)

    def put(self, entry: Entry) -> None:
        old = self._map.get(entry.key)
        self._map[entry.key] = entry
        size = len(entry.value) if entry.value is not None else 0
        self.logged_bytes += len(entry.key) + size + ENTRY_OVERHEAD_BYTES
        if old is None:
            self._generation += 1
            self._sorted = None
            self.approximate_bytes += len(entry.key) + size + ENTRY_OVERHEAD_BYTES
        else:
            self.approximate_bytes += size - (len(old.value) if old.value is not None else 0)
        if entry.seq > self.max_seq:
            self.max_seq = entry.seq

    def get(self, key: bytes) -> Entry | None:
        return self._map.get(key)

    def _sorted_keys(self) -> list[bytes]:
        keys = self._sorted
        if keys is None:
            # Lock-free against the one writer: a writer that adds a key after the sort either bumps the
            # generation before the check below or clears the cache after the store; either way a stale
            # list never survives. `sorted` over a dict of bytes runs without releasing the GIL.
            generation = self._generation
            keys = sorted(self._map)
            self._sorted = keys
            if self._generation != generation:
                self._sorted = None
        return keys

    def entries(self, start: bytes | None = None, end: bytes | None = None) -> Iterator[Entry]:
        """Entries with start <= key < end in key order, as they were when called (a snapshot)."""
        keys = self._sorted_keys()
        # Values too, not only keys: a scan must not see a later overwrite. `dict.copy` runs without
        # releasing the GIL, so the writer cannot interleave; keys are never removed, so the sorted list
        # names a subset of the copy, and the same number of keys means the same keys.
        table = self._map.copy()
        if len(keys) != len(table):
            keys = sorted(table)
        lo = 0 if start is None else bisect.bisect_left(keys, start)
        hi = len(keys) if end is None else bisect.bisect_left(keys, end)
        snapshot = keys[lo:hi]
        return (table[k] for k in snapshot)
