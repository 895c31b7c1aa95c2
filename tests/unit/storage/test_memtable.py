"""The memtable: newest entry per key, size accounting, ordered and bounded views."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ringkv.storage.entry import Entry
from ringkv.storage.memtable import ENTRY_OVERHEAD_BYTES, Memtable


def test_put_get_and_overwrite_keep_the_newest_entry() -> None:
    m = Memtable(segment_id=3)
    assert m.segment_id == 3
    assert m.get(b"k") is None and len(m) == 0
    m.put(Entry(b"k", 1, b"one", 10))
    m.put(Entry(b"k", 2, b"two", 20))
    assert m.get(b"k") == Entry(b"k", 2, b"two", 20)
    m.put(Entry(b"k", 3, None, 30))
    assert m.get(b"k") == Entry(b"k", 3, None, 30)
    assert len(m) == 1
    assert m.max_seq == 3


def test_size_accounting_follows_puts_overwrites_and_deletes() -> None:
    m = Memtable(0)
    assert m.approximate_bytes == 0
    m.put(Entry(b"key", 1, b"x" * 10, 0))
    assert m.approximate_bytes == 3 + 10 + ENTRY_OVERHEAD_BYTES
    m.put(Entry(b"key", 2, b"x" * 4, 0))  # shrinks by the value difference only
    assert m.approximate_bytes == 3 + 4 + ENTRY_OVERHEAD_BYTES
    m.put(Entry(b"key", 3, None, 0))  # a tombstone holds no value bytes
    assert m.approximate_bytes == 3 + ENTRY_OVERHEAD_BYTES
    m.put(Entry(b"key", 4, b"y" * 100, 0))
    assert m.approximate_bytes == 3 + 100 + ENTRY_OVERHEAD_BYTES
    m.put(Entry(b"other", 5, None, 0))
    assert m.approximate_bytes == 3 + 100 + 5 + 2 * ENTRY_OVERHEAD_BYTES


def test_max_seq_is_the_highest_seen_not_the_latest() -> None:
    m = Memtable(0)
    m.put(Entry(b"a", 9, b"", 0))
    m.put(Entry(b"b", 4, b"", 0))
    assert m.max_seq == 9


def _filled(keys: list[bytes]) -> Memtable:
    m = Memtable(0)
    for i, k in enumerate(keys):
        m.put(Entry(k, i + 1, b"v" + k, 0))
    return m


def test_entries_are_ordered_and_bounded() -> None:
    m = _filled([b"d", b"b", b"a", b"e", b"c"])
    assert [e.key for e in m.entries()] == [b"a", b"b", b"c", b"d", b"e"]
    assert [e.key for e in m.entries(b"b", b"d")] == [b"b", b"c"]  # start inclusive, end exclusive
    assert [e.key for e in m.entries(b"bb")] == [b"c", b"d", b"e"]
    assert [e.key for e in m.entries(None, b"c")] == [b"a", b"b"]
    assert [e.key for e in m.entries(b"d", b"b")] == []
    assert [e.key for e in m.entries(b"z")] == []
    assert list(Memtable(0).entries()) == []


@given(st.lists(st.tuples(st.binary(max_size=4), st.none() | st.binary(max_size=4)), max_size=40),
       st.none() | st.binary(max_size=4), st.none() | st.binary(max_size=4))
def test_entries_match_a_sorted_dict(ops: list[tuple[bytes, bytes | None]], start: bytes | None,
                                     end: bytes | None) -> None:
    m = Memtable(0)
    model: dict[bytes, Entry] = {}
    for seq, (key, value) in enumerate(ops, start=1):
        entry = Entry(key, seq, value, 0)
        m.put(entry)
        model[key] = entry
        if seq % 7 == 0:
            list(m.entries())  # interleave reads so the ordered view is cached and invalidated
    expected = [model[k] for k in sorted(model)
                if (start is None or k >= start) and (end is None or k < end)]
    assert list(m.entries(start, end)) == expected


def test_ordered_view_stays_correct_after_new_keys_arrive() -> None:
    m = _filled([b"b", b"d"])
    assert [e.key for e in m.entries()] == [b"b", b"d"]  # builds and caches the ordered view
    m.put(Entry(b"c", 10, b"new", 0))
    m.put(Entry(b"a", 11, b"new", 0))
    assert [e.key for e in m.entries()] == [b"a", b"b", b"c", b"d"]
    assert [e.key for e in m.entries(b"b", b"d")] == [b"b", b"c"]
    m.put(Entry(b"b", 12, b"overwrite", 0))  # an overwrite keeps the cached order and shows the new value
    assert [(e.key, e.seq) for e in m.entries()] == [(b"a", 11), (b"b", 12), (b"c", 10), (b"d", 2)]


def test_entries_is_a_snapshot_taken_when_called() -> None:
    m = _filled([b"a", b"b", b"c"])
    it = m.entries()
    assert next(it).key == b"a"
    m.put(Entry(b"bb", 10, b"late", 0))  # a new key after the call is not part of the snapshot
    m.put(Entry(b"c", 11, b"late", 0))  # nor is a newer version of a key in it
    assert [(e.key, e.value) for e in it] == [(b"b", b"vb"), (b"c", b"vc")]
