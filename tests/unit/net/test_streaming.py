"""Streaming a token range: every record of the range arrives, merged (never overwriting), in throttled
batches, with progress; a source that fails mid-way fails the range; hostile requests are refused."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest

from ringkv.cluster import versions
from ringkv.cluster.ids import NodeId
from ringkv.cluster.ring import token_for
from ringkv.errors import RequestError
from ringkv.net import streaming
from ringkv.net.streaming import RangeProgress, Streamer
from ringkv.net.throttle import RateLimiter
from ringkv.net.transport import TransportError
from ringkv.replica import Replica
from ringkv.storage.aio import AsyncEngine
from ringkv.storage.engine import EngineOptions
from ringkv.storage.wal import Durability

T = TypeVar("T")
SOURCE, SINK = NodeId("src"), NodeId("sink")


def run(coro: Coroutine[Any, Any, T], limit_s: float = 30.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit_s):
            return await coro

    return asyncio.run(bounded())


def in_range(lo: int, hi: int, token: int) -> bool:
    if lo < hi:
        return lo < token <= hi
    return token > lo or token <= hi


async def replica_at(path: Path, actor: str) -> Replica:
    engine = await AsyncEngine.open(str(path), EngineOptions(durability=Durability.OFF, memtable_bytes=64 * 1024))
    replica = Replica(engine, NodeId(actor))
    await replica.open_layout()
    return replica


def pair(tmp_path: Path, fail_after: int | None = None) -> Any:
    async def make() -> tuple[Replica, Replica, Streamer, Streamer, list[int]]:
        source = await replica_at(tmp_path / "src", "src#a")
        sink = await replica_at(tmp_path / "sink", "sink#b")
        calls = [0]
        src_streamer = Streamer(source, _no_call, RateLimiter(None))

        async def call(node: NodeId, method: str, body: dict[str, Any], timeout_s: float) -> Any:
            calls[0] += 1
            if fail_after is not None and calls[0] > fail_after:
                raise TransportError("source died")
            assert node == SOURCE and method == "stream_range"
            wire = msgpack.unpackb(msgpack.packb(body, use_bin_type=True), raw=False)  # as the transport would
            reply = await src_streamer.handle_stream_range(wire, "sink")
            return msgpack.unpackb(msgpack.packb(reply, use_bin_type=True), raw=False)

        sink_streamer = Streamer(sink, call, RateLimiter(None))
        return source, sink, src_streamer, sink_streamer, calls

    return make()


async def _no_call(node: NodeId, method: str, body: dict[str, Any], timeout_s: float) -> Any:
    raise AssertionError("the source does not call anyone")


@pytest.mark.parametrize("lo,hi", [(0, 0), (-(2**62), 2**62), (2**62, -(2**62))])
def test_a_streamed_range_arrives_whole_and_merges_with_what_the_sink_has(tmp_path: Path, lo: int, hi: int) -> None:
    async def main() -> None:
        source, sink, _, streamer, calls = await pair(tmp_path)
        try:
            for i in range(700):
                await source.write(b"k%d" % i, b'"%d"' % i, None)
            # the sink already took a write of one key of the range the source also has: it must stay
            mine = next(b"k%d" % i for i in range(700) if in_range(lo, hi, token_for(b"k%d" % i)))
            await sink.write(mine, b'"sink"', None)
            progress = RangeProgress(lo, hi, SOURCE)
            await streamer.receive(progress)
            expected = [b"k%d" % i for i in range(700) if in_range(lo, hi, token_for(b"k%d" % i))]
            assert progress.keys == len(expected) and calls[0] >= len(expected) // streaming.BATCH + 1
            for key in expected:
                want = await source.read(key)
                got = await sink.read(key)
                if key == mine:
                    assert sorted(versions.live_values(got)) == sorted([*versions.live_values(want), b'"sink"'])
                else:
                    assert got == want
            outside = [b"k%d" % i for i in range(700) if not in_range(lo, hi, token_for(b"k%d" % i))]
            for key in outside[:50]:
                assert not (await sink.read(key)).versions
        finally:
            await source.engine.close()
            await sink.engine.close()

    run(main())


def test_a_source_dying_mid_stream_fails_the_range_and_a_retry_completes_it(tmp_path: Path) -> None:
    async def main() -> None:
        source, sink, _, streamer, _ = await pair(tmp_path, fail_after=2)
        try:
            total = 4 * streaming.BATCH  # the source dies after two batches (the third call fails)
            for i in range(total):
                await source.write(b"k%d" % i, b'"%d"' % i, None)
            progress = RangeProgress(0, 0, SOURCE)
            with pytest.raises(TransportError):
                await streamer.receive(progress)
            assert 0 < progress.keys < total
            src_streamer = Streamer(source, _no_call, RateLimiter(None))  # the source is back

            async def call(node: NodeId, method: str, body: dict[str, Any], timeout_s: float) -> Any:
                return await src_streamer.handle_stream_range(body, "sink")

            again = RangeProgress(0, 0, SOURCE)
            await Streamer(sink, call, RateLimiter(None)).receive(again)
            assert again.keys == total
            for i in range(0, total, 37):
                assert await sink.read(b"k%d" % i) == await source.read(b"k%d" % i)
        finally:
            await source.engine.close()
            await sink.engine.close()

    run(main())


def test_streaming_takes_its_bytes_from_the_rate_limiter(tmp_path: Path) -> None:
    async def main() -> None:
        source, sink, src_streamer, _, _ = await pair(tmp_path)
        try:
            for i in range(300):
                await source.write(b"k%d" % i, b'"' + b"x" * 500 + b'"', None)
            limiter = RateLimiter(None)

            async def call(node: NodeId, method: str, body: dict[str, Any], timeout_s: float) -> Any:
                return await src_streamer.handle_stream_range(body, "sink")

            progress = RangeProgress(0, 0, SOURCE)
            await Streamer(sink, call, limiter).receive(progress)
            assert limiter.bytes_total == progress.bytes > 300 * 500
        finally:
            await source.engine.close()
            await sink.engine.close()

    run(main())


@pytest.mark.parametrize("body", [
    None, [], {"lo": 0, "hi": 0, "cursor": None}, {"lo": 0.5, "hi": 0, "cursor": None, "limit": 5},
    {"lo": 2**63, "hi": 0, "cursor": None, "limit": 5}, {"lo": 0, "hi": 0, "cursor": "x", "limit": 5},
    {"lo": 0, "hi": 0, "cursor": b"", "limit": 5}, {"lo": 0, "hi": 0, "cursor": None, "limit": 0},
    {"lo": 0, "hi": 0, "cursor": None, "limit": 10**6}, {"lo": True, "hi": 0, "cursor": None, "limit": 5},
])
def test_malformed_stream_requests_are_refused_as_bad_requests(tmp_path: Path, body: Any) -> None:
    async def main() -> None:
        source = await replica_at(tmp_path / "src", "src#a")
        try:
            with pytest.raises(RequestError):
                await Streamer(source, _no_call, RateLimiter(None)).handle_stream_range(body, "peer")
        finally:
            await source.engine.close()

    run(main())
