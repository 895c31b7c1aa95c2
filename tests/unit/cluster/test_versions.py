"""Dotted version vector sets: order and merge laws, no lost updates, tombstones, limits and encodings.

Records for the property tests come from simulated clusters: a few replicas apply random writes (plain, with
a fresh read context, or with a stale one read earlier anywhere) and exchange state by random merges. An
oracle tracks every version ever created and every write's context, so the tests can say exactly which
versions must survive.
"""

from __future__ import annotations

import base64
import functools
import random
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv import errors
from ringkv.cluster import versions
from ringkv.cluster.versions import Dot, NodeId, Record, Version, VersionVector

A, B, C = NodeId("a"), NodeId("b"), NodeId("c")
NODES = [A, B, C]

# -- strategies ---------------------------------------------------------------------------------------------

node_ids = st.sampled_from([A, B, C, NodeId("d"), NodeId("node-é")])
vectors = st.dictionaries(node_ids, st.integers(0, 6), max_size=5).map(VersionVector.of)


@dataclass
class Cluster:
    """Replicas of one key plus the oracle: every version created and every dot some write superseded."""

    replicas: list[Record] = field(default_factory=lambda: [versions.empty_record() for _ in NODES])
    contexts: list[VersionVector] = field(default_factory=lambda: [VersionVector()])  # what clients read
    created: dict[Dot, Version] = field(default_factory=dict)
    superseded: set[Dot] = field(default_factory=set)
    history: list[Record] = field(default_factory=list)  # every replica state ever reached
    clock: int = 0

    def put(self, i: int, value: bytes | None, ctx: VersionVector | None) -> Record:
        before = self.replicas[i]
        self.clock += 1
        after = versions.update(before, ctx, NODES[i], value, self.clock)
        seen = before.context if ctx is None else ctx
        self.superseded |= {dot for dot in self.created if seen.covers(dot)}
        (new,) = [v for v in after.versions if v.dot not in self.created]
        self.created[new.dot] = new
        self._set(i, after)
        return after

    def read(self, i: int) -> VersionVector:
        ctx = versions.read_context(self.replicas[i])
        self.contexts.append(ctx)
        return ctx

    def sync(self, src: int, dst: int) -> None:
        self._set(dst, versions.merge(self.replicas[dst], self.replicas[src]))

    def _set(self, i: int, record: Record) -> None:
        self.replicas[i] = record
        self.history.append(record)

    def converged(self) -> Record:
        return functools.reduce(versions.merge, self.replicas, versions.empty_record())


put_ops = st.tuples(
    st.just("put"),
    st.integers(0, len(NODES) - 1),
    st.one_of(st.none(), st.binary(min_size=1, max_size=3)),
    st.one_of(st.none(), st.just("fresh"), st.integers(0, 10_000)),  # plain / read-modify-write / stale
)
sync_ops = st.tuples(st.just("sync"), st.integers(0, len(NODES) - 1), st.integers(0, len(NODES) - 1))
read_ops = st.tuples(st.just("read"), st.integers(0, len(NODES) - 1))
scripts = st.lists(st.one_of(put_ops, put_ops, sync_ops, read_ops), min_size=4, max_size=40)


def run(script: Sequence[tuple[object, ...]]) -> Cluster:
    cluster = Cluster()
    for op in script:
        if op[0] == "put":
            _, i, value, choice = op
            assert isinstance(i, int) and (value is None or isinstance(value, bytes))
            if choice is None:
                ctx = None
            elif choice == "fresh":
                ctx = cluster.read(i)
            else:
                assert isinstance(choice, int)
                ctx = cluster.contexts[choice % len(cluster.contexts)]
            cluster.put(i, value, ctx)
        elif op[0] == "sync":
            _, src, dst = op
            assert isinstance(src, int) and isinstance(dst, int)
            cluster.sync(src, dst)
        else:
            _, i = op
            assert isinstance(i, int)
            cluster.read(i)
    return cluster


clusters = scripts.map(run)


@st.composite
def records_of_one_key(draw: st.DrawFn, n: int) -> list[Record]:
    """`n` states of the same key from one simulated history (so their dots mean the same thing)."""
    cluster = draw(clusters)
    states = [versions.empty_record(), *cluster.history]
    return [draw(st.sampled_from(states)) for _ in range(n)]


# -- VersionVector ------------------------------------------------------------------------------------------


@given(vectors)
def test_descends_is_reflexive(a: VersionVector) -> None:
    assert a.descends(a)
    assert not a.dominates(a)
    assert not a.concurrent(a)


@given(vectors, vectors)
def test_descends_is_antisymmetric(a: VersionVector, b: VersionVector) -> None:
    if a.descends(b) and b.descends(a):
        assert a == b


@given(vectors, vectors, vectors)
def test_descends_is_transitive(a: VersionVector, b: VersionVector, c: VersionVector) -> None:
    if a.descends(b) and b.descends(c):
        assert a.descends(c)
    # Random triples rarely form chains; build one.
    bc = b.merge(c)
    abc = a.merge(bc)
    assert abc.descends(bc) and bc.descends(c) and abc.descends(c)


@given(vectors, vectors)
def test_exactly_one_relation_holds(a: VersionVector, b: VersionVector) -> None:
    relations = [a == b, a.dominates(b), b.dominates(a), a.concurrent(b)]
    assert relations.count(True) == 1


@given(vectors, vectors, vectors)
def test_vector_merge_laws(a: VersionVector, b: VersionVector, c: VersionVector) -> None:
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(a) == a
    assert a.merge(VersionVector()) == a


@given(vectors, vectors, vectors)
def test_vector_merge_is_least_upper_bound(a: VersionVector, b: VersionVector, c: VersionVector) -> None:
    joined = a.merge(b)
    assert joined.descends(a) and joined.descends(b)
    if c.descends(a) and c.descends(b):
        assert c.descends(joined)


@given(vectors, node_ids, st.integers(1, 8))
def test_covers_matches_counters(a: VersionVector, node: NodeId, counter: int) -> None:
    assert a.covers(Dot(node, counter)) == (a.as_dict().get(node, 0) >= counter)


def test_vector_rejects_non_canonical_pairs() -> None:
    with pytest.raises(ValueError):
        VersionVector(((B, 1), (A, 1)))
    with pytest.raises(ValueError):
        VersionVector(((A, 1), (A, 2)))
    with pytest.raises(ValueError):
        VersionVector(((A, 0),))
    assert VersionVector.of({A: 0, B: 2}) == VersionVector(((B, 2),))


# -- Record merge -------------------------------------------------------------------------------------------


@settings(max_examples=150)
@given(records_of_one_key(3))
def test_record_merge_laws(states: list[Record]) -> None:
    a, b, c = states
    assert versions.merge(a, b) == versions.merge(b, a)
    assert versions.merge(versions.merge(a, b), c) == versions.merge(a, versions.merge(b, c))
    assert versions.merge(a, a) == a
    assert versions.merge(a, versions.empty_record()) == a


@settings(max_examples=150)
@given(records_of_one_key(2))
def test_record_descends_means_merge_changes_nothing(states: list[Record]) -> None:
    a, b = states
    assert versions.descends(a, b) == (versions.merge(a, b) == a)
    joined = versions.merge(a, b)
    assert versions.descends(joined, a) and versions.descends(joined, b)
    assert versions.descends(a, a)


def test_descends_looks_at_versions_not_only_contexts() -> None:
    # In a real history a record's context determines its versions; a hand-built pair shows descends still
    # matches merge when it does not: b has superseded (a, 1), so a, which still holds it, is not ahead of b.
    ctx = VersionVector.of({A: 1, B: 1})
    old, new = Version(Dot(A, 1), b"old", 1), Version(Dot(B, 1), b"new", 2)
    a, b = Record((old, new), ctx), Record((new,), ctx)
    assert not versions.descends(a, b)
    assert versions.merge(a, b) == b
    assert versions.descends(b, a)


# -- no lost updates ----------------------------------------------------------------------------------------


@settings(max_examples=200)
@given(scripts, st.randoms(use_true_random=False))
def test_exactly_the_superseded_versions_disappear(
    script: list[tuple[object, ...]], rnd: random.Random
) -> None:
    cluster = run(script)
    final = cluster.converged()
    # Every version nobody superseded survives, with its value; every superseded one is gone.
    assert {v.dot: v for v in final.versions} == {
        dot: v for dot, v in cluster.created.items() if dot not in cluster.superseded
    }
    # Replicas converge whatever order they exchange state in.
    shuffled = list(cluster.replicas)
    rnd.shuffle(shuffled)
    assert functools.reduce(versions.merge, shuffled, versions.empty_record()) == final
    for replica in cluster.replicas:
        assert versions.descends(final, replica)
        assert versions.merge(replica, final) == final
    # Each replica only ever holds versions that were created, with the values they were created with.
    for state in cluster.history:
        assert all(cluster.created[v.dot] == v for v in state.versions)


@given(st.lists(st.binary(max_size=4), min_size=1, max_size=10))
def test_sequential_plain_puts_leave_the_last(values: list[bytes]) -> None:
    record = versions.empty_record()
    for t, value in enumerate(values):
        record = versions.update(record, None, A, value, t)
    assert versions.live_values(record) == [values[-1]]
    assert len(record.versions) == 1
    assert record.versions[0].dot == Dot(A, len(values))


def test_plain_puts_on_different_replicas_become_siblings_after_merge() -> None:
    on_a = versions.update(versions.empty_record(), None, A, b"from-a", 1)
    on_b = versions.update(versions.empty_record(), None, B, b"from-b", 2)
    joined = versions.merge(on_a, on_b)
    assert versions.live_values(joined) == [b"from-a", b"from-b"]
    # A later plain put on a replica that has seen both overwrites both.
    final = versions.update(joined, None, A, b"last", 3)
    assert versions.live_values(final) == [b"last"]
    assert versions.live_values(versions.merge(final, on_b)) == [b"last"]


def test_same_stale_context_makes_siblings_and_read_context_resolves_them() -> None:
    record = versions.update(versions.empty_record(), None, A, b"v0", 1)
    stale = versions.read_context(record)
    record = versions.update(record, stale, A, b"client-1", 2)
    record = versions.update(record, stale, A, b"client-2", 3)
    assert versions.live_values(record) == [b"client-1", b"client-2"]
    resolved = versions.update(record, versions.read_context(record), A, b"resolved", 4)
    assert versions.live_values(resolved) == [b"resolved"]
    assert len(resolved.versions) == 1


def test_context_supersedes_versions_the_coordinator_has_not_seen_yet() -> None:
    on_b = versions.update(versions.empty_record(), None, B, b"b1", 1)
    # The client read b1 at replica b, then writes through coordinator a, which has not received b1 yet.
    on_a = versions.update(versions.empty_record(), versions.read_context(on_b), A, b"a1", 2)
    assert versions.live_values(on_a) == [b"a1"]
    assert versions.live_values(versions.merge(on_a, on_b)) == [b"a1"]


def test_concurrent_write_survives_a_read_modify_write() -> None:
    base = versions.update(versions.empty_record(), None, A, b"v0", 1)
    on_b = versions.merge(versions.empty_record(), base)
    ctx = versions.read_context(base)
    on_a = versions.update(base, ctx, A, b"client-1", 2)  # client 1 read v0 and writes through a
    on_b = versions.update(on_b, ctx, B, b"client-2", 3)  # client 2 read v0 and writes through b
    assert versions.live_values(versions.merge(on_a, on_b)) == [b"client-1", b"client-2"]


# -- tombstones ---------------------------------------------------------------------------------------------


def test_delete_with_context_hides_the_value() -> None:
    record = versions.update(versions.empty_record(), None, A, b"v", 1)
    deleted = versions.update(record, versions.read_context(record), A, None, 2)
    assert versions.live_values(deleted) == []
    assert versions.is_deleted(deleted)
    assert len(deleted.versions) == 1 and deleted.versions[0].is_tombstone
    # The tombstone keeps its causal context, so the old value does not come back from a stale replica.
    assert versions.is_deleted(versions.merge(deleted, record))


def test_put_concurrent_with_a_delete_reads_as_that_value() -> None:
    record = versions.update(versions.empty_record(), None, A, b"v0", 1)
    ctx = versions.read_context(record)
    deleted = versions.update(record, ctx, A, None, 2)
    both = versions.update(deleted, ctx, A, b"v1", 3)
    assert len(both.versions) == 2
    assert versions.live_values(both) == [b"v1"]
    assert not versions.is_deleted(both)


def test_empty_record_reads_as_absent() -> None:
    assert versions.is_deleted(versions.empty_record())
    assert versions.live_values(versions.empty_record()) == []


# -- sibling limit ------------------------------------------------------------------------------------------


def test_sibling_warning_and_limit() -> None:
    record = versions.empty_record()
    blind = VersionVector()  # a context that saw nothing: every write adds a sibling
    for t in range(versions.SIBLING_LIMIT):
        assert versions.sibling_warning(record) == (len(record.versions) >= versions.SIBLING_WARN_THRESHOLD)
        record = versions.update(record, blind, A, b"%d" % t, t)
    assert len(record.versions) == versions.SIBLING_LIMIT
    assert versions.sibling_warning(record)
    with pytest.raises(errors.TooManySiblingsError) as raised:
        versions.update(record, blind, A, b"one too many", 1000)
    assert raised.value.code == "too_many_siblings"
    assert raised.value.count == versions.SIBLING_LIMIT + 1
    assert isinstance(raised.value, errors.RingkvError)
    # Writing back with the read context is always allowed and collapses the siblings.
    resolved = versions.update(record, versions.read_context(record), A, b"merged", 1001)
    assert versions.live_values(resolved) == [b"merged"]
    assert not versions.sibling_warning(resolved)


def test_sibling_warning_threshold_is_25() -> None:
    assert versions.SIBLING_WARN_THRESHOLD == 25
    assert versions.SIBLING_LIMIT == 100


# -- context encoding ---------------------------------------------------------------------------------------


@given(st.dictionaries(node_ids, st.integers(0, versions.MAX_COUNTER), max_size=8).map(VersionVector.of))
def test_context_round_trip(ctx: VersionVector) -> None:
    token = versions.encode_context(ctx)
    assert len(token) <= versions.MAX_CONTEXT_CHARS
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert versions.decode_context(token) == ctx


def _decodes_canonically_or_is_rejected(token: str) -> None:
    try:
        ctx = versions.decode_context(token)
    except errors.InvalidContextError:
        return
    assert versions.encode_context(ctx) == token


def _token(payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")


@settings(max_examples=300)
@given(st.text(max_size=60))
def test_garbage_text_context_is_rejected(token: str) -> None:
    _decodes_canonically_or_is_rejected(token)


@settings(max_examples=300)
@given(st.binary(max_size=60))
def test_garbage_bytes_context_is_rejected(payload: bytes) -> None:
    _decodes_canonically_or_is_rejected(_token(payload))
    _decodes_canonically_or_is_rejected(_token(b"\x01" + payload))


msgpack_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=5),
        st.binary(max_size=5),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300)
@given(msgpack_values)
def test_wrong_shape_context_is_rejected(value: object) -> None:
    _decodes_canonically_or_is_rejected(_token(b"\x01" + msgpack.packb(value)))


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "unknown format"),
        ("AYA=", "base64url"),  # padding
        ("AY+A", "base64url"),  # standard alphabet
        ("A", "base64url"),  # impossible length
        (_token(b"\x02\x80"), "unknown format"),
        (_token(b"\x01\x81\xa1a\xff"), "malformed"),  # negative counter
        (_token(b"\x01\x81\xa1a\x00"), "malformed"),  # zero counter
        (_token(b"\x01\x81\xa1a\xc3"), "malformed"),  # boolean counter
        (_token(b"\x01\x81\xa0\x01"), "malformed"),  # empty node id
        (_token(b"\x01\x82\xa1a\x01\xa1a\x02"), "malformed"),  # duplicate node
        (_token(b"\x01\x82\xa1b\x01\xa1a\x02"), "malformed"),  # unsorted
        (_token(b"\x01\x91\x01"), "malformed"),  # array, not map
        (_token(b"\x01\x80\x80"), "malformed"),  # trailing data
        (_token(b"\x01\x81\xa1a\xcd\x00\x01"), "canonical"),  # counter 1 in a 3-byte encoding
        ("A" * (versions.MAX_CONTEXT_CHARS + 4), "longer than"),
    ],
)
def test_bad_contexts_say_why(token: str, reason: str) -> None:
    with pytest.raises(errors.InvalidContextError, match=reason) as raised:
        versions.decode_context(token)
    assert raised.value.code == "invalid_context"


def test_oversize_contexts_are_refused_both_ways() -> None:
    many = VersionVector.of({NodeId(f"n{i:04d}"): 1 for i in range(versions.MAX_CONTEXT_ENTRIES + 1)})
    with pytest.raises(errors.InvalidContextError):
        versions.encode_context(many)
    long_ids = VersionVector.of({NodeId("x" * 1000 + str(i)): 1 for i in range(4)})
    with pytest.raises(errors.InvalidContextError):
        versions.encode_context(long_ids)
    with pytest.raises(errors.InvalidContextError):
        versions.decode_context(_token(b"\x01" + msgpack.packb(dict(many.counters))))


def test_context_cannot_overflow_the_counter() -> None:
    ctx = VersionVector(((A, versions.MAX_COUNTER),))
    assert versions.decode_context(versions.encode_context(ctx)) == ctx
    with pytest.raises(errors.InvalidContextError):
        versions.update(versions.empty_record(), ctx, A, b"v", 1)


# -- record encoding ----------------------------------------------------------------------------------------


@settings(max_examples=100)
@given(records_of_one_key(1))
def test_record_round_trip(states: list[Record]) -> None:
    (record,) = states
    assert versions.decode_record(versions.encode_record(record)) == record


def test_record_round_trip_keeps_tombstones_and_empty_values() -> None:
    record = versions.update(versions.empty_record(), None, A, b"", 1)
    record = versions.update(record, VersionVector(), B, None, 2**40)
    assert versions.decode_record(versions.encode_record(record)) == record


def _decodes_or_is_rejected(data: bytes) -> None:
    try:
        record = versions.decode_record(data)
    except errors.InvalidRecordError:
        return
    assert versions.decode_record(versions.encode_record(record)) == record


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_garbage_record_is_rejected(data: bytes) -> None:
    _decodes_or_is_rejected(data)


def _frame(body: bytes, fmt: int = versions.RECORD_FORMAT) -> bytes:
    return struct.pack(">BI", fmt, zlib.crc32(body)) + body


@settings(max_examples=300)
@given(msgpack_values)
def test_wrong_shape_record_is_rejected(value: object) -> None:
    _decodes_or_is_rejected(_frame(msgpack.packb(value)))


@settings(max_examples=100)
@given(records_of_one_key(1), st.data())
def test_damaged_record_is_rejected(states: list[Record], data: st.DataObject) -> None:
    encoded = versions.encode_record(states[0])
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(errors.InvalidRecordError):
        versions.decode_record(encoded[:cut])
    pos = data.draw(st.integers(0, len(encoded) - 1))
    flip = data.draw(st.integers(1, 255))
    damaged = encoded[:pos] + bytes([encoded[pos] ^ flip]) + encoded[pos + 1 :]
    with pytest.raises(errors.InvalidRecordError):
        versions.decode_record(damaged)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([{}, [["a", 1, 0, b"v"]]], "does not cover"),
        ([{"a": 2}, [["a", 2, 0, b"v"], ["a", 1, 0, b"w"]]], "sorted"),
        ([{"a": 2}, [["a", 1, 0, b"v"], ["a", 1, 0, b"v"]]], "sorted"),
        ([{"a": 1}, [["a", 1, 0, "text, not bytes"]]], "binary or nil"),
        ([{"a": 1}, [["a", 1, -1, b"v"]]], "timestamp_ms"),
        ([{"a": 1}, [["a", 1, 0]]], "4-element"),
        ([[["a", 1]], []], "map"),
        ([{"a": 1}], "2-element"),
    ],
)
def test_bad_records_say_why(body: object, reason: str) -> None:
    with pytest.raises(errors.InvalidRecordError, match=reason) as raised:
        versions.decode_record(_frame(msgpack.packb(body)))
    assert raised.value.code == "invalid_record"


def test_record_header_errors() -> None:
    good = versions.encode_record(versions.update(versions.empty_record(), None, A, b"v", 1))
    with pytest.raises(errors.InvalidRecordError, match="unknown record format"):
        versions.decode_record(b"\x02" + good[1:])
    with pytest.raises(errors.InvalidRecordError, match="checksum"):
        versions.decode_record(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(errors.InvalidRecordError, match="shorter than its header"):
        versions.decode_record(b"\x01")
