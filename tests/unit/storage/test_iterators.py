"""Merging sorted entry streams: one entry per key, the newest one; `live` hides tombstones."""

from __future__ import annotations

from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st

from ringkv.storage.entry import Entry
from ringkv.storage.iterators import live, merge_newest


def test_merge_picks_the_highest_seq_per_key_across_sources() -> None:
    newest = [Entry(b"a", 9, b"a9", 0), Entry(b"c", 3, b"c3", 0)]
    middle = [Entry(b"a", 5, b"a5", 0), Entry(b"b", 7, None, 0), Entry(b"c", 8, b"c8", 0)]
    oldest = [Entry(b"b", 2, b"b2", 0), Entry(b"d", 1, b"d1", 0)]
    merged = list(merge_newest([oldest, newest, middle]))  # source order must not matter, seq decides
    assert merged == [Entry(b"a", 9, b"a9", 0), Entry(b"b", 7, None, 0), Entry(b"c", 8, b"c8", 0),
                      Entry(b"d", 1, b"d1", 0)]


def test_merge_of_nothing() -> None:
    assert list(merge_newest([])) == []
    assert list(merge_newest([[], []])) == []


def test_merge_is_lazy_over_generators() -> None:
    def source(n: int) -> Iterator[Entry]:
        for i in range(n):
            yield Entry(b"%05d" % i, 1, b"x", 0)

    merged = merge_newest([source(10**9), source(10**9)])  # only what is consumed is produced
    assert [next(merged).key for _ in range(3)] == [b"00000", b"00001", b"00002"]


def test_live_drops_tombstones() -> None:
    entries = [Entry(b"a", 1, b"1", 0), Entry(b"b", 2, None, 0), Entry(b"c", 3, b"", 0)]
    assert list(live(entries)) == [(b"a", b"1"), (b"c", b"")]


@given(st.lists(st.dictionaries(st.binary(max_size=3), st.none() | st.binary(max_size=3), max_size=12),
                max_size=5))
def test_merge_equals_replaying_sources_in_seq_order(tables: list[dict[bytes, bytes | None]]) -> None:
    # Source i was written after source i-1; seqs are unique across sources.
    sources: list[list[Entry]] = []
    model: dict[bytes, bytes | None] = {}
    seq = 0
    for table in tables:
        source = []
        for key in sorted(table):
            seq += 1
            source.append(Entry(key, seq, table[key], 0))
            model[key] = table[key]
        sources.append(source)
    merged = list(merge_newest(reversed(sources)))
    assert [e.key for e in merged] == sorted(model)
    assert {e.key: e.value for e in merged} == model
    assert list(live(merged)) == [(k, v) for k, v in sorted(model.items()) if v is not None]
