"""SSTables: immutable sorted files of entries.

File format (little-endian)::

    sstable := data_block*  filter_block  index_block  footer
    filter_block := bloom_bytes  crc:u32                      (bloom format: `ringkv.storage.bloom`)
    index_block  := first_key_len:u32 first_key  index_entry*  count:u32  crc:u32
    index_entry  := last_key_len:u32 last_key  offset:u64  length:u32   (one per data block)
    footer       := filter_offset:u64 filter_length:u32  index_offset:u64 index_length:u32
                    entries:u64  min_seq:u64  max_seq:u64  tombstones:u64
                    format_version:u16  reserved:u16  crc:u32  magic:8 bytes = b"RKVSST\\r\\n"

Data blocks: `ringkv.storage.block`. Every part carries a CRC-32; the footer's covers the footer itself.
A table is written under `NAME.tmp`, fsynced, renamed to `NAME`, and the directory fsynced, so a crash
leaves either no table or a whole one; the manifest decides whether a table is live.

Reading: the index and the bloom filter are loaded at open; a point read asks the filter, bisects the index
and reads one block with `pread`, or takes it from the block cache (`storage/cache.py`) when one is given:
point reads fill the cache, scans use cached blocks but do not fill it (a compaction or an anti-entropy scan
would otherwise evict every hot block), and a writer given the cache puts its blocks there as it writes them.
Any checksum or structure failure raises `CorruptionError` naming the file.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import struct
import weakref
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from ringkv.errors import CorruptionError
from ringkv.storage.block import Block, BlockBuilder, BlockError
from ringkv.storage.bloom import BloomFilter
from ringkv.storage.cache import BlockCache
from ringkv.storage.entry import Entry
from ringkv.storage.fsutil import fsync_dir

MAGIC = b"RKVSST\r\n"
FORMAT_VERSION = 1
_FOOTER = struct.Struct("<QIQIQQQQHHI8s")
_FOOTER_CRC_AT = _FOOTER.size - 12  # crc covers the bytes before it
_U32 = struct.Struct("<I")
_INDEX_TAIL = struct.Struct("<QI")  # offset, length


@dataclass(frozen=True)
class TableInfo:
    table_id: int
    path: str
    size_bytes: int
    entries: int
    tombstones: int
    min_seq: int
    max_seq: int
    first_key: bytes
    last_key: bytes


def table_name(table_id: int) -> str:
    return f"{table_id:010d}.sst"


class SSTableWriter:
    """Writes one table. Entries must be added in strictly increasing key order."""

    def __init__(
        self, directory: str, table_id: int, block_bytes: int = 4096, bits_per_key: float = 10.0,
        cache: BlockCache | None = None,
    ) -> None:
        self.table_id = table_id
        self._cache = cache
        self.path = os.path.join(directory, table_name(table_id))
        self._tmp = self.path + ".tmp"
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in finish/abort
        self._block_bytes = block_bytes
        self._bits_per_key = bits_per_key
        self._keys: list[bytes] = []  # for the bloom filter, built at finish once the count is known
        self._buffer = bytearray()  # finished blocks not yet handed to the file
        self._block = BlockBuilder()
        self._index: list[tuple[bytes, int, int]] = []
        self._offset = 0
        self._last_key: bytes | None = None
        self._tombstones = 0
        self._min_seq = 2**64 - 1
        self._max_seq = 0

    def add(self, entry: Entry) -> None:
        key = entry.key
        if self._last_key is not None and key <= self._last_key:
            raise ValueError("SSTable keys must be added in strictly increasing order")
        self._last_key = key
        self._keys.append(key)
        if self._block.add(entry) >= self._block_bytes:
            self._finish_block()
        seq = entry.seq
        if seq < self._min_seq:
            self._min_seq = seq
        if seq > self._max_seq:
            self._max_seq = seq
        if entry.value is None:
            self._tombstones += 1

    @property
    def entries(self) -> int:
        return len(self._keys)

    def _finish_block(self) -> None:
        if not len(self._block):
            return
        last = self._block.last_key
        assert last is not None
        data = self._block.finish()
        if self._cache is not None:
            self._cache.put(self.table_id, len(self._index), Block(data), len(data))
        self._buffer += data
        if len(self._buffer) >= 1 << 20:
            self._file.write(self._buffer)
            self._buffer = bytearray()
        self._index.append((last, self._offset, len(data)))
        self._offset += len(data)
        self._block = BlockBuilder()

    def finish(self) -> TableInfo:
        """Write filter, index and footer; make the file durable under its final name."""
        if not self._keys or self._last_key is None:
            self.abort()
            raise ValueError("refusing to write an empty SSTable")
        first_key = self._keys[0]
        self._finish_block()
        self._file.write(self._buffer)
        bloom = BloomFilter.for_keys(len(self._keys), self._bits_per_key)
        bloom.add_many(self._keys)
        filter_body = bloom.to_bytes()
        filter_block = filter_body + _U32.pack(zlib.crc32(filter_body))
        filter_offset = self._offset
        self._file.write(filter_block)
        index = bytearray(_U32.pack(len(first_key)) + first_key)
        for last_key, off, length in self._index:
            index += _U32.pack(len(last_key)) + last_key + _INDEX_TAIL.pack(off, length)
        index += _U32.pack(len(self._index))
        index += _U32.pack(zlib.crc32(index))
        index_offset = filter_offset + len(filter_block)
        self._file.write(index)
        footer = _FOOTER.pack(
            filter_offset, len(filter_block), index_offset, len(index), len(self._keys), self._min_seq,
            self._max_seq, self._tombstones, FORMAT_VERSION, 0, 0, MAGIC,
        )
        crc = zlib.crc32(footer[:_FOOTER_CRC_AT])
        footer = footer[:_FOOTER_CRC_AT] + _U32.pack(crc) + MAGIC
        self._file.write(footer)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        fsync_dir(os.path.dirname(self.path))
        return TableInfo(
            self.table_id, self.path, index_offset + len(index) + len(footer), len(self._keys),
            self._tombstones, self._min_seq, self._max_seq, first_key, self._last_key,
        )

    def abort(self) -> None:
        if self._cache is not None:
            self._cache.drop_table(self.table_id)
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


class SSTableReader:
    """An open table: footer, index and filter in memory; blocks read on demand."""

    def __init__(self, path: str, table_id: int, cache: BlockCache | None = None) -> None:
        self.path = path
        self._cache = cache
        fd = os.open(path, os.O_RDONLY)
        self._fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd)
        try:
            self.info, self.bloom, self._last_keys, self._blocks = self._load(table_id)
        except BaseException:
            self.close()
            raise

    def _corrupt(self, detail: str) -> CorruptionError:
        return CorruptionError(self.path, detail)

    def _load(self, table_id: int) -> tuple[TableInfo, BloomFilter, list[bytes], list[tuple[int, int]]]:
        size = os.fstat(self._fd).st_size
        if size < _FOOTER.size:
            raise self._corrupt("file shorter than its footer")
        footer = os.pread(self._fd, _FOOTER.size, size - _FOOTER.size)
        (f_off, f_len, i_off, i_len, entries, min_seq, max_seq, tombstones, version, _r, crc,
         magic) = _FOOTER.unpack(footer)
        if magic != MAGIC:
            raise self._corrupt("bad magic in footer")
        if zlib.crc32(footer[:_FOOTER_CRC_AT]) != crc:
            raise self._corrupt("footer checksum mismatch")
        if version != FORMAT_VERSION:
            raise self._corrupt(f"unsupported format version {version}")
        if f_off + f_len != i_off or i_off + i_len + _FOOTER.size != size:
            raise self._corrupt("footer offsets do not match the file size")
        fblock = os.pread(self._fd, f_len, f_off)
        if len(fblock) < 4 or zlib.crc32(fblock[:-4]) != _U32.unpack_from(fblock, len(fblock) - 4)[0]:
            raise self._corrupt("bloom filter checksum mismatch")
        try:
            bloom = BloomFilter.from_bytes(fblock[:-4])
        except ValueError as e:
            raise self._corrupt(f"bloom filter: {e}") from None
        index = os.pread(self._fd, i_len, i_off)
        if len(index) < 12 or zlib.crc32(index[:-4]) != _U32.unpack_from(index, len(index) - 4)[0]:
            raise self._corrupt("index checksum mismatch")
        last_keys: list[bytes] = []
        blocks: list[tuple[int, int]] = []
        try:
            pos = 0
            (first_len,) = _U32.unpack_from(index, pos)
            first_key = index[4 : 4 + first_len]
            pos = 4 + first_len
            count = _U32.unpack_from(index, len(index) - 8)[0]
            for _ in range(count):
                (klen,) = _U32.unpack_from(index, pos)
                last_keys.append(index[pos + 4 : pos + 4 + klen])
                pos += 4 + klen
                off, length = _INDEX_TAIL.unpack_from(index, pos)
                pos += _INDEX_TAIL.size
                blocks.append((off, length))
        except struct.error:
            raise self._corrupt("index structure is malformed") from None
        if pos != len(index) - 8 or not blocks:
            raise self._corrupt("index structure is malformed")
        info = TableInfo(table_id, self.path, size, entries, tombstones, min_seq, max_seq, first_key,
                         last_keys[-1])
        return info, bloom, last_keys, blocks

    def close(self) -> None:
        self._finalizer()

    def _read_block(self, i: int, fill_cache: bool = True) -> Block:
        cache = self._cache
        if cache is not None:
            block = cache.get(self.info.table_id, i)
            if block is not None:
                return block
        block = self._load_block(i)
        if cache is not None and fill_cache:
            cache.put(self.info.table_id, i, block, self._blocks[i][1])
        return block

    def _load_block(self, i: int) -> Block:
        off, length = self._blocks[i]
        try:
            data = os.pread(self._fd, length, off)
        except OSError as e:
            raise self._corrupt(f"cannot read block {i}: {e}") from None
        if len(data) != length:
            raise self._corrupt(f"block {i} is truncated")
        try:
            return Block(data)
        except BlockError as e:
            raise self._corrupt(f"block {i} at offset {off}: {e}") from None

    def get(self, key: bytes) -> Entry | None:
        """The entry for `key` in this table, or None. Does not consult the bloom filter (the caller does)."""
        i = bisect.bisect_left(self._last_keys, key)
        if i == len(self._blocks):
            return None
        try:
            return self._read_block(i).get(key)
        except (struct.error, IndexError):
            raise self._corrupt(f"block {i} is malformed") from None

    def get_cached(self, key: bytes) -> tuple[bool, Entry | None]:
        """`(True, get(key))` when the block that may hold `key` is cached (no I/O); `(False, None)` when
        answering would need a read."""
        i = bisect.bisect_left(self._last_keys, key)
        if i == len(self._blocks):
            return True, None
        block = None if self._cache is None else self._cache.get(self.info.table_id, i)
        if block is None:
            return False, None
        try:
            return True, block.get(key)
        except (struct.error, IndexError):
            raise self._corrupt(f"block {i} is malformed") from None

    def entries(self, start: bytes | None = None, end: bytes | None = None) -> Iterator[Entry]:
        """Entries with start <= key < end, in key order (cached blocks are used; read ones are not cached)."""
        i = 0 if start is None else bisect.bisect_left(self._last_keys, start)
        for b in range(i, len(self._blocks)):
            try:
                for entry in self._read_block(b, fill_cache=False).entries(start if b == i else None):
                    if end is not None and entry.key >= end:
                        return
                    yield entry
            except (struct.error, IndexError):
                raise self._corrupt(f"block {b} is malformed") from None
