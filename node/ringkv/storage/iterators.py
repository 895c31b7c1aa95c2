"""Merging sorted entry streams: the one iterator idea every ordered read uses.

Each source yields entries in strictly increasing key order. `merge_newest` yields one entry per key, the
one with the highest `seq` among all sources (scans and compaction both rely on it); `live` then drops
tombstones for readers.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from ringkv.storage.entry import Entry


def _sort_key(entry: Entry) -> tuple[bytes, int]:
    return entry.key, -entry.seq


def merge_newest(sources: Iterable[Iterable[Entry]]) -> Iterator[Entry]:
    """One entry per key across all sources, the newest (highest seq) version, in key order."""
    previous: bytes | None = None
    for entry in heapq.merge(*sources, key=_sort_key):
        if entry.key != previous:
            previous = entry.key
            yield entry


def live(entries: Iterable[Entry]) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of every entry that is not a tombstone."""
    for entry in entries:
        if entry.value is not None:
            yield entry.key, entry.value
