"""The block cache: verified SSTable data blocks kept in memory, least recently used evicted first.

Keyed by (table id, block index); table ids are never reused within a data directory, so an entry can never
be taken for another table's block. Blocks enter it when a read loads them and when a flush or compaction
writes them (a table just written is the one the next reads of its keys go to). Its point: a read whose
blocks are all cached needs no I/O, so the asyncio shell answers it on the event loop instead of paying a
thread hop (`storage/aio.py`). Safe to use from any thread (one lock, held for dictionary operations only).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ringkv.storage.block import Block


class BlockCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._blocks: OrderedDict[tuple[int, int], tuple[Block, int]] = OrderedDict()
        self._by_table: dict[int, set[int]] = {}
        self._lock = threading.Lock()

    def get(self, table_id: int, index: int) -> Block | None:
        key = (table_id, index)
        with self._lock:
            found = self._blocks.get(key)
            if found is None:
                self.misses += 1
                return None
            self._blocks.move_to_end(key)
            self.hits += 1
            return found[0]

    def put(self, table_id: int, index: int, block: Block, size: int) -> None:
        if size > self.capacity_bytes:
            return
        key = (table_id, index)
        with self._lock:
            old = self._blocks.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._blocks[key] = (block, size)
            self._by_table.setdefault(table_id, set()).add(index)
            self.bytes += size
            while self.bytes > self.capacity_bytes:
                (tid, i), (_, evicted) = self._blocks.popitem(last=False)
                self.bytes -= evicted
                indexes = self._by_table.get(tid)
                if indexes is not None:
                    indexes.discard(i)
                    if not indexes:
                        del self._by_table[tid]

    def drop_table(self, table_id: int) -> None:
        """Forget a table's blocks (it was compacted away or its write failed)."""
        with self._lock:
            for i in self._by_table.pop(table_id, ()):
                found = self._blocks.pop((table_id, i), None)
                if found is not None:
                    self.bytes -= found[1]

    def __len__(self) -> int:
        return len(self._blocks)
