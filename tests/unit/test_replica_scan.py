"""Records in token order: a token-range scan returns exactly the records of the range, in ring order, in
resumable batches; a data directory written before the token layout is rewritten once on open (issue 11)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringkv.cluster import versions
from ringkv.cluster.ids import NodeId
from ringkv.cluster.ring import token_for
from ringkv.replica import LAYOUT_KEY, Change, Replica, token_segments
from ringkv.storage.aio import AsyncEngine
from ringkv.storage.engine import EngineOptions
from ringkv.storage.wal import Durability

T = TypeVar("T")
TOP, BOTTOM = 2**63 - 1, -(2**63)


def run(coro: Coroutine[Any, Any, T], limit_s: float = 20.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit_s):
            return await coro

    return asyncio.run(bounded())


def in_range(lo: int, hi: int, token: int) -> bool:
    if lo < hi:
        return lo < token <= hi
    return token > lo or token <= hi  # wrapping; lo == hi: the whole ring


def ring_order(lo: int, token: int) -> int:
    return (token - lo - 1) % 2**64


KEYS = [b"key-%d" % i for i in range(300)]
tokens = st.one_of(st.integers(BOTTOM, TOP), st.sampled_from([BOTTOM, TOP, 0, -1]),
                   st.sampled_from([token_for(k) for k in KEYS[:20]]))


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(lo=tokens, hi=tokens, limit=st.integers(1, 70))
def test_a_token_range_scan_returns_exactly_the_range_in_ring_order(tmp_path: Path, lo: int, hi: int,
                                                                   limit: int) -> None:
    async def main() -> None:
        engine = await AsyncEngine.open(str(tmp_path / f"d{lo}-{hi}-{limit}"),
                                        EngineOptions(durability=Durability.OFF))
        try:
            replica = Replica(engine, NodeId("n1#a"))
            await replica.open_layout()
            for key in KEYS:
                await replica.write(key, b'"v"', None)
            got: list[bytes] = []
            cursor = None
            for _ in range(len(KEYS) + 2):
                batch, cursor = await replica.scan_range(lo, hi, cursor, limit)
                assert len(batch) <= limit
                got += [k for k, _ in batch]
                if cursor is None:
                    break
            want = sorted((k for k in KEYS if in_range(lo, hi, token_for(k))),
                          key=lambda k: (ring_order(lo, token_for(k)), k))
            assert got == want
        finally:
            await engine.close()

    run(main())


def test_segments_of_plain_wrapping_and_whole_ring_ranges() -> None:
    assert len(token_segments(-5, 5)) == 1
    assert len(token_segments(5, -5)) == 2  # wraps past the top
    assert len(token_segments(7, 7)) == 2  # the whole ring, from 7 on
    assert len(token_segments(TOP, 0)) == 1  # nothing above the top token: only the bottom segment


def test_an_old_data_directory_is_rewritten_into_the_token_layout_once(tmp_path: Path) -> None:
    async def main() -> None:
        engine = await AsyncEngine.open(str(tmp_path / "d"), EngineOptions(durability=Durability.OFF))
        try:
            records = {b"old-%d" % i: versions.update(versions.empty_record(), None, NodeId("n1"), b'"%d"' % i, 1)
                       for i in range(2500)}
            for key, record in records.items():  # the layout before issue 11: records under their bare keys
                await engine.put(key, versions.encode_record(record))
            replica = Replica(engine, NodeId("n1#new"))
            assert await replica.open_layout() == 2500
            assert await replica.open_layout() == 0  # once
            assert await engine.get(LAYOUT_KEY) == b"2"
            for key, record in list(records.items())[::97]:
                assert await replica.read(key) == record
                assert await engine.get(key) is None  # moved, not copied
            batch, _ = await replica.scan_range(0, 0, None, 10_000)
            assert sorted(k for k, _ in batch) == sorted(records)
        finally:
            await engine.close()

    run(main())


def test_observers_see_every_durable_change_and_a_tree_kept_by_them_equals_a_rebuild(tmp_path: Path) -> None:
    from ringkv.cluster import merkle

    async def main() -> None:
        engine = await AsyncEngine.open(str(tmp_path / "d"), EngineOptions(durability=Durability.OFF))
        try:
            replica = Replica(engine, NodeId("n1#a"))
            await replica.open_layout()
            shape = merkle.Shape(0, 0, 64, 4)
            tree = merkle.MerkleTree(shape)

            def observe(change: Change) -> None:
                key, old, new = change.key, change.old, change.new
                tree.update(token_for(key), key, None if old is None else merkle.record_digest(old),
                            None if new is None else merkle.record_digest(new))

            replica.observers.append(observe)
            for i in range(200):
                record = await replica.write(b"k%d" % (i % 50), b'"%d"' % i, None)
            other = versions.update(versions.empty_record(), None, NodeId("n2#b"), b'"x"', 1)
            await replica.merge_in(b"k3", other)  # a sibling from another replica
            await replica.merge_in(b"k3", other)  # no change: no notification needed
            batch, _ = await replica.scan_range(0, 0, None, 10_000)
            rebuilt = merkle.MerkleTree.build(
                shape, ((token_for(k), k, merkle.record_digest(v)) for k, v in batch))
            assert tree == rebuilt and tree.count == 50
            assert versions.live_values(record)
        finally:
            await engine.close()

    run(main())
