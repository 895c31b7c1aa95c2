"""A graceful stop drains (what a Kubernetes pod's termination relies on): at SIGTERM the node answers
`/ready` 503 and announces its shutdown by gossip — its peers judge it down at once, while the process still
runs, instead of after the failure detector's phi rises seconds after it died — keeps serving the clients
still talking to it for `drain_delay_s`, then stops (exit 0). Under a W=2 write load through the other
coordinators no write fails, and every acknowledged write is readable after its restart, which its peers
see up again (a new generation clears the announcement)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import pytest

from ringkv.client import Client, ClientError
from ringkv.local import LocalNode

from .cluster_helpers import http_json, running_cluster, sees, wait_until
from .topology_helpers import exit_code

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

DRAIN_S = 3.0


class Writer:
    """W=2 puts through the given coordinators from a thread; every acknowledged key is recorded."""

    def __init__(self, nodes: list[LocalNode]) -> None:
        self.nodes = nodes
        self.acked: list[str] = []
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        clients = [Client(n.url) for n in self.nodes]
        try:
            i = 0
            while not self.stop.is_set():
                key = f"drain-{i}"
                try:
                    await clients[i % len(clients)].put(key, {"i": i}, w=2)
                    self.acked.append(key)
                except ClientError as e:
                    self.failed.append(f"{key}: {e}")
                i += 1
        finally:
            for c in clients:
                await c.close()


def test_sigterm_announces_the_shutdown_keeps_serving_then_stops_and_loses_nothing(tmp_path: Path) -> None:
    with running_cluster(tmp_path, nodes=3, extra_args=["--drain-delay-s", str(DRAIN_S)]) as cluster:
        n1, n2, n3 = (cluster.node(n) for n in ("n1", "n2", "n3"))
        writer = Writer([n1, n2])
        writer.thread.start()
        wait_until(lambda: len(writer.acked) > 50, 20, "writes flowing")

        cluster.signal(n3, signal.SIGTERM)
        stopped_at = time.monotonic()
        # its peers judge it down within a gossip exchange, while it still runs (the announcement, not phi)
        wait_until(lambda: sees(n1, "n3", up=False) and sees(n2, "n3", up=False), 1.5,
                   "n1 and n2 to see n3 down at its announcement")
        assert time.monotonic() - stopped_at < DRAIN_S and exit_code(n3) is None  # still running
        # not ready, but still serving the clients that reach it
        status, doc = http_json(n3.url + "/ready")
        assert (status, doc["error"]) == (503, "not_ready")
        status, doc = http_json(n3.url + f"/api/v1/get?key={writer.acked[0]}")
        assert status == 200, doc
        [code] = wait_until(lambda: (c := exit_code(n3)) is not None and [c], DRAIN_S + 15,
                            "n3 to exit after the drain delay")
        assert time.monotonic() - stopped_at >= DRAIN_S * 0.9
        assert code == 0

        down_from = len(writer.acked)
        wait_until(lambda: len(writer.acked) > down_from + 50, 20, "writes while n3 is down")
        cluster.start(n3)
        cluster.wait_ready([n3], timeout_s=60)
        wait_until(lambda: sees(n1, "n3", up=True) and sees(n2, "n3", up=True), 15, "n3 seen up again")
        writer.stop.set()
        writer.thread.join(30)
        assert writer.failed == []

        async def read_all() -> list[str]:
            async with Client(n3.url) as client:
                missing = []
                for key in writer.acked:
                    try:
                        if not (await client.get(key, r=2)).found:
                            missing.append(key)
                    except ClientError as e:
                        missing.append(f"{key}: {e}")
                return missing

        assert asyncio.run(read_all()) == []
