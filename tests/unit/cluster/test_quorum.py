"""Quorum tallies: when a request has succeeded, when it can no longer succeed, what a read returns and
which replicas read repair must fix."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ringkv.cluster import versions
from ringkv.cluster.ids import NodeId
from ringkv.cluster.quorum import ReadTally, WriteTally, read_plan
from ringkv.cluster.versions import Record

A, B, C = NodeId("a"), NodeId("b"), NodeId("c")


def write(record: Record, node: NodeId, value: bytes, ts: int = 1) -> Record:
    return versions.update(record, None, node, value, ts)


# -- writes -------------------------------------------------------------------------------------------------


def test_write_tally_succeeds_at_w_acks() -> None:
    tally = WriteTally(required=2, asked=3)
    assert not tally.succeeded and not tally.impossible
    tally.ack(A)
    assert not tally.succeeded and not tally.impossible
    tally.fail(B)
    assert not tally.succeeded and not tally.impossible  # C may still answer
    tally.ack(C)
    assert tally.succeeded and not tally.impossible
    assert (tally.acked, tally.failed) == ([A, C], [B])


def test_write_tally_is_impossible_as_soon_as_too_many_failed() -> None:
    tally = WriteTally(required=2, asked=3)
    tally.fail(A)
    assert not tally.impossible
    tally.fail(B)
    assert tally.impossible and not tally.succeeded


def test_write_tally_needing_every_replica_fails_at_the_first_failure() -> None:
    tally = WriteTally(required=3, asked=3)
    tally.ack(A)
    tally.ack(B)
    tally.fail(C)
    assert tally.impossible and not tally.succeeded
    assert len(tally.acked) == 2


def test_write_tally_with_w_one_succeeds_on_the_first_ack() -> None:
    tally = WriteTally(required=1, asked=3)
    tally.fail(A)
    tally.fail(B)
    assert not tally.impossible
    tally.ack(C)
    assert tally.succeeded


# -- reads --------------------------------------------------------------------------------------------------


def test_read_tally_succeeds_at_r_replies_and_fails_when_too_few_can_answer() -> None:
    tally = ReadTally(required=2, asked=3)
    tally.reply(A, versions.empty_record())
    assert not tally.succeeded and not tally.impossible
    tally.reply(B, versions.empty_record())
    assert tally.succeeded and not tally.impossible

    failing = ReadTally(required=2, asked=3)
    failing.reply(A, versions.empty_record())
    failing.fail(B)
    assert not failing.impossible
    failing.fail(C)
    assert failing.impossible and not failing.succeeded


def test_merged_of_no_replies_is_the_empty_record() -> None:
    assert ReadTally(required=1, asked=3).merged() == versions.empty_record()


def test_merged_keeps_concurrent_writes_as_siblings() -> None:
    base = write(versions.empty_record(), A, b"base")
    from_a = write(base, A, b"left", 2)
    from_b = versions.update(base, base.context, B, b"right", 3)  # the same context: concurrent with from_a
    tally = ReadTally(required=3, asked=3)
    tally.reply(A, from_a)
    tally.reply(B, from_b)
    tally.reply(C, base)
    merged = tally.merged()
    assert sorted(versions.live_values(merged)) == [b"left", b"right"]
    assert merged == versions.merge(versions.merge(from_a, from_b), base)


def test_merged_drops_superseded_versions() -> None:
    old = write(versions.empty_record(), A, b"old")
    new = write(old, A, b"new", 2)
    tally = ReadTally(required=2, asked=3)
    tally.reply(B, old)
    tally.reply(A, new)
    assert versions.live_values(tally.merged()) == [b"new"]


def test_stale_names_exactly_the_replicas_missing_something() -> None:
    old = write(versions.empty_record(), A, b"old")
    new = write(old, A, b"new", 2)
    sibling = versions.update(old, old.context, B, b"other", 3)
    tally = ReadTally(required=3, asked=4)
    tally.reply(A, new)  # lacks B's sibling
    tally.reply(B, sibling)  # lacks A's new version
    tally.reply(C, versions.merge(new, sibling))  # has everything
    tally.reply(NodeId("d"), versions.empty_record())  # has nothing
    merged = tally.merged()
    assert sorted(tally.stale(merged)) == [A, B, NodeId("d")]


def test_nothing_is_stale_when_every_replica_agrees() -> None:
    record = write(versions.empty_record(), A, b"v")
    tally = ReadTally(required=3, asked=3)
    for node in (A, B, C):
        tally.reply(node, record)
    assert tally.stale(tally.merged()) == []


def test_a_replica_that_holds_an_old_copy_of_a_deleted_key_is_stale() -> None:
    live = write(versions.empty_record(), A, b"v")
    deleted = versions.update(live, live.context, A, None, 2)
    tally = ReadTally(required=2, asked=3)
    tally.reply(A, deleted)
    tally.reply(B, live)
    merged = tally.merged()
    assert versions.is_deleted(merged)
    assert tally.stale(merged) == [B]


# -- read_plan ---------------------------------------------------------------------------------------------


@given(st.lists(st.sampled_from([f"n{i}" for i in range(6)]), min_size=1, max_size=6, unique=True),
        st.sampled_from([f"n{i}" for i in range(6)]), st.integers(1, 6), st.booleans())
def test_a_read_plan_asks_r_this_node_first_and_keeps_the_rest_as_spares(
        order: list[str], local: str, required: int, everyone: bool) -> None:
    nodes = [NodeId(n) for n in order]
    first, spares = read_plan(nodes, NodeId(local), required, everyone)
    assert sorted(first + spares) == sorted(nodes)  # every replica, each once
    if NodeId(local) in nodes:
        assert first[0] == NodeId(local)
    assert [n for n in first + spares if n != NodeId(local)] == [n for n in nodes if n != NodeId(local)]
    if everyone or required >= len(nodes):
        assert spares == []
    else:
        assert len(first) == required
