"""`stream_pull` (a removenode's request to pull a range) takes hostile input: a malformed body is refused as a
bad request, a pull no source can serve fails with its own code (not `internal_error`), and pull after pull
does not grow the node's list of ranges streamed in without bound (found by tests/fuzz)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from ringkv.cluster.ids import NodeId
from ringkv.errors import RequestError, StreamFailedError
from ringkv.net import join
from ringkv.net.streaming import RangeProgress


def lone_node() -> Any:
    """What `handle_stream_pull` uses of a ClusterNode, with no peer up (every pull finds no source)."""
    return SimpleNamespace(
        node_id=NodeId("me"), join_progress=[], antientropy=object(), config=SimpleNamespace(gossip_interval_s=0.0),
        coordinator=SimpleNamespace(healthy_first=lambda nodes: []), streamer=SimpleNamespace(stats=None))


@pytest.mark.parametrize("body", [
    None, [], {}, {"lo": 0, "hi": 1}, {"lo": 0, "hi": 1, "sources": "n1"},
    {"lo": 2**64 - 1, "hi": 1, "sources": ["n1"]},  # not a signed 64-bit token: was taken
    {"lo": 0, "hi": -(2**63) - 1, "sources": ["n1"]}, {"lo": "0", "hi": 1, "sources": ["n1"]},
    {"lo": True, "hi": 1, "sources": ["n1"]}, {"lo": 0, "hi": 1, "sources": [5]},
    {"lo": 0, "hi": 1, "sources": [""]}, {"lo": 0, "hi": 1, "sources": ["n" * 257]},
    {"lo": 0, "hi": 1, "sources": ["n1"] * 65},
])
def test_a_malformed_pull_is_a_bad_request(body: Any) -> None:
    node = lone_node()
    with pytest.raises(RequestError) as refused:
        asyncio.run(join.handle_stream_pull(node, body, "peer"))
    assert refused.value.code == "bad_request"
    assert node.join_progress == []


def test_a_pull_no_source_can_serve_fails_as_stream_failed() -> None:
    # It raised a bare RingkvError, whose code is `internal_error`.
    node = lone_node()
    with pytest.raises(StreamFailedError) as failed:
        asyncio.run(join.handle_stream_pull(node, {"lo": 0, "hi": 1, "sources": ["n1", "n2"]}, "peer"))
    assert failed.value.code == "stream_failed"
    assert [p.state for p in node.join_progress] == ["failed"]  # it stayed "pending" for ever


def test_pull_after_pull_keeps_the_progress_list_bounded_and_what_is_in_progress() -> None:
    node = lone_node()
    running = RangeProgress(5, 6, NodeId("n1"), state="streaming")
    node.join_progress.append(running)

    async def main() -> None:
        for i in range(join.MAX_PROGRESS + 50):
            with pytest.raises(StreamFailedError):
                await join.handle_stream_pull(node, {"lo": i, "hi": i + 1, "sources": ["n1"]}, "peer")

    asyncio.run(main())
    assert len(node.join_progress) == join.MAX_PROGRESS
    assert node.join_progress[0] is running
    assert node.join_progress[-1].lo == join.MAX_PROGRESS + 49  # the newest are kept
