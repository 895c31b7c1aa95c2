"""The coordinator's internode handlers and replies take hostile input: a malformed body is refused with a
RingkvError (never an unexpected exception, which the transport answers `internal_error`), nothing is coerced
into something else (`bytes(5)` is five zero bytes) and nothing of a refused request is stored; a peer's reply
that is not a record fails that replica, at once (found by tests/fuzz)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ringkv.cluster import ringview, versions
from ringkv.cluster.ids import NodeId
from ringkv.cluster.ring import NodeInfo, Ring, join
from ringkv.errors import InvalidContextError, InvalidRecordError, QuorumUnavailableError, RequestError
from ringkv.net.coordinator import Coordinator, QuorumSettings
from ringkv.net.hints import HintStore
from ringkv.net.transport import Peers
from ringkv.replica import Replica, storage_key
from ringkv.storage.aio import AsyncEngine
from ringkv.storage.engine import EngineOptions
from ringkv.storage.wal import Durability

T = TypeVar("T")
ME, OTHER = NodeId("n0"), NodeId("n1")


def run(coro: Coroutine[Any, Any, T], limit_s: float = 20.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit_s):
            return await coro

    return asyncio.run(bounded())


@dataclass
class One:
    coordinator: Coordinator
    replica: Replica
    hints: HintStore
    engine: AsyncEngine


def ring_of(*nodes: NodeId) -> Ring:
    ring = Ring()
    for node in nodes:
        ring = join(ring, NodeInfo(node))
    return ring


@asynccontextmanager
async def coordinator(root: Path, ring: Ring, settings: QuorumSettings) -> AsyncIterator[One]:
    options = EngineOptions(durability=Durability.OFF)
    engine = await AsyncEngine.open(str(root / "data"), options)
    hints = HintStore(await AsyncEngine.open(str(root / "hints"), options), 1 << 20, 3600.0)
    replica = Replica(engine, NodeId(f"{ME}#inc"))
    c = Coordinator(ME, replica, Peers("test", ME), hints, settings, lambda n: True, lambda n: ("127.0.0.1", 1))
    c.ring, c.ring_digest = ring, ringview.digest(ring)
    try:
        yield One(c, replica, hints, engine)
    finally:
        await c.stop()
        await engine.close()
        await hints.engine.close()


ALONE = QuorumSettings(replication=1, read_quorum=1, write_quorum=1, timeout_s=1.0)
RECORD = versions.encode_record(versions.update(versions.empty_record(), None, OTHER, b'"v"', 1))
GOOD = {"key": b"k", "value": b'"v"', "w": 1, "context": None}

MALFORMED: list[tuple[str, Any]] = [
    ("coordinate", None), ("coordinate", ["key", "value"]), ("coordinate", {}),
    ("coordinate", {**GOOD, "key": "k"}),  # str, not bin
    ("coordinate", {**GOOD, "key": 5}),  # bytes(5) was five zero bytes, and was written
    ("coordinate", {**GOOD, "key": 2**63}),  # bytes(2**63): OverflowError
    ("coordinate", {**GOOD, "key": b""}),
    ("coordinate", {**GOOD, "key": b"k" * 10241}),
    ("coordinate", {k: v for k, v in GOOD.items() if k != "value"}),  # a missing value is no delete
    ("coordinate", {k: v for k, v in GOOD.items() if k != "context"}),  # nor a missing context a blind put
    ("coordinate", {**GOOD, "value": "v"}), ("coordinate", {**GOOD, "value": b""}),
    ("coordinate", {**GOOD, "value": b"v" * 10241}),
    ("coordinate", {**GOOD, "w": "1"}), ("coordinate", {**GOOD, "w": [1]}), ("coordinate", {**GOOD, "w": True}),
    ("coordinate", {**GOOD, "w": 0}), ("coordinate", {**GOOD, "w": 2}),  # W outside 1..N
    ("coordinate", {**GOOD, "context": 5}), ("coordinate", {**GOOD, "context": b"\x00"}),
    ("coordinate", {**GOOD, "context": "not base64!"}),
    ("coordinate", {**GOOD, "budget_ms": "x"}), ("coordinate", {**GOOD, "budget_ms": float("nan")}),
    ("coordinate", {**GOOD, "budget_ms": -1}), ("coordinate", {**GOOD, "budget_ms": [1]}),
    ("replicate", None), ("replicate", []), ("replicate", {"key": b"k"}), ("replicate", {"key": "k", "record": RECORD}),
    ("replicate", {"key": b"k", "record": 5}), ("replicate", {"key": b"k", "record": "text"}),
    ("replicate", {"key": b"k", "record": b"junk"}), ("replicate", {"key": 2**63, "record": RECORD}),
    ("read", None), ("read", {}), ("read", {"key": "abc"}), ("read", {"key": 10}), ("read", {"key": b""}),
    ("store_hint", None), ("store_hint", {}), ("store_hint", {"target": "t", "key": b"k"}),
    ("store_hint", {"target": 5, "key": b"k", "record": RECORD}),
    ("store_hint", {"target": "", "key": b"k", "record": RECORD}),
    ("store_hint", {"target": "a\x00b", "key": b"k", "record": RECORD}),  # NUL: another target's key range
    ("store_hint", {"target": "t", "key": 3, "record": RECORD}),
    ("store_hint", {"target": "t", "key": b"k", "record": b"junk"}),  # never deliverable: was kept anyway
    ("store_hint", {"target": "t", "key": b"k", "record": 7}),
]


@pytest.mark.parametrize(("method", "body"), MALFORMED, ids=[f"{m}-{i}" for i, (m, _) in enumerate(MALFORMED)])
def test_a_malformed_body_is_refused_with_a_ringkv_error_and_stores_nothing(tmp_path: Path, method: str,
                                                                             body: Any) -> None:
    async def main() -> None:
        async with coordinator(tmp_path, ring_of(ME), ALONE) as one:
            c = one.coordinator
            handler = {"coordinate": c.handle_coordinate, "replicate": c.handle_replicate, "read": c.handle_read,
                       "store_hint": c.handle_store_hint}[method]
            with pytest.raises((RequestError, InvalidRecordError, InvalidContextError)):
                await handler(body, "peer")
            assert one.hints.stored == 0
            for key in (b"k", b"\x00" * 5, b"\x00" * 10):
                assert not (await one.replica.read(key)).versions
            assert await one.engine.get(storage_key(b"\x00" * 5)) is None

    run(main())


def test_well_formed_bodies_are_still_taken(tmp_path: Path) -> None:
    async def main() -> None:
        async with coordinator(tmp_path, ring_of(ME), ALONE) as one:
            c = one.coordinator
            record = versions.decode_record(await c.handle_coordinate({**GOOD, "budget_ms": 500.0}, "peer"))
            assert versions.live_values(record) == [b'"v"']
            context = versions.encode_context(record.context)
            await c.handle_coordinate({**GOOD, "value": None, "context": context, "ring": "other"}, "peer")
            assert versions.is_deleted(await one.replica.read(b"k"))
            assert await c.handle_replicate({"key": b"r", "record": RECORD}, "peer") is True
            assert versions.decode_record(await c.handle_read({"key": b"r"}, "peer")) == versions.decode_record(RECORD)
            assert await c.handle_store_hint({"target": "n9", "key": b"h", "record": RECORD}, "peer") is True
            assert one.hints.pending == {"n9": 1}

    run(main())


def test_a_ring_digest_that_is_not_a_string_is_no_mismatch(tmp_path: Path) -> None:
    async def main() -> None:
        async with coordinator(tmp_path, ring_of(ME), ALONE) as one:
            for ring in ([1], {"a": 1}, 5, b"digest"):
                one.coordinator.check_ring({"ring": ring}, "peer")
            assert one.coordinator.stats.ring_mismatches == 0

    run(main())


@pytest.mark.parametrize("reply", [10**9, "text", 2**63, None, [1], b"junk"])
def test_a_read_answered_with_no_record_fails_that_replica_at_once(tmp_path: Path, reply: Any) -> None:
    # `bytes(reply)` made an int a buffer of that many zero bytes (a gigabyte here), and a str a TypeError that
    # killed the replica's task silently: the read then waited out its whole timeout.
    async def main() -> None:
        settings = QuorumSettings(replication=2, read_quorum=2, write_quorum=1, timeout_s=5.0)
        async with coordinator(tmp_path, ring_of(ME, OTHER), settings) as one:
            async def call(node: NodeId, method: str, body: dict[str, Any], timeout_s: float | None = None) -> Any:
                return reply

            one.coordinator.call = call  # type: ignore[method-assign]
            started = time.monotonic()
            with pytest.raises(QuorumUnavailableError):
                await one.coordinator.get(b"k", 2)
            assert time.monotonic() - started < 1.0

    run(main())


@pytest.mark.parametrize("reply", [12345, "text", None, b"junk"])
def test_a_forwarded_write_answered_with_no_record_is_quorum_unavailable(tmp_path: Path, reply: Any) -> None:
    async def main() -> None:
        settings = QuorumSettings(replication=1, read_quorum=1, write_quorum=1, timeout_s=1.0)
        async with coordinator(tmp_path, ring_of(OTHER), settings) as one:  # not a replica: it forwards
            async def call(node: NodeId, method: str, body: dict[str, Any], timeout_s: float | None = None) -> Any:
                assert method == "coordinate"
                return reply

            one.coordinator.call = call  # type: ignore[method-assign]
            with pytest.raises(QuorumUnavailableError):
                await one.coordinator.put(b"k", b'"v"', None, None)

    run(main())

