"""The per-node LSM storage engine: bytes in, bytes out.

Contract: synchronous and thread-safe; no asyncio and nothing of the cluster, network or API layers
(`storage.aio` is the one thin asyncio shell). Background work (memtable flushes, compaction, commit-log
fsync) runs on the engine's own threads.

Walk-through, in the order data flows:

- `record`     commit-log record framing (length + CRC), the torn-tail rule
- `wal`        the commit log: segments, group commit, durability modes, recovery
- `memtable`   the in-memory table writes land in
- `bloom`      per-SSTable bloom filter (Murmur3)
- `block`      SSTable data blocks (entries + offsets + CRC)
- `sstable`    the SSTable file: builder, reader, iterator
- `iterators`  merging sorted entry streams, newest version wins
- `manifest`   the atomically replaced list of live tables
- `compaction` the size-tiered policy (pure) and the merge it asks for
- `engine`     ties it together: write path, read path, flush, compaction, recovery
- `aio`        an asyncio shell over the engine
"""
