"""A node's HTTP listener comes up before its storage replay: during a long commit-log replay `/health`
(liveness) answers 200 with the phase, `/metrics` answers (not ready), `/ready` and the API answer 503
`not_ready`; once replayed every acknowledged write is there. A SIGTERM during the replay stops the node
cleanly (exit 0) and loses nothing.

The replay is made long for real: ~40 MB of acknowledged writes left only in the commit log (a memtable
larger than that, no flush) by a SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ringkv.client import Client
from tests.integration.nodes import NODE_DIR, NodeProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

WRITES, VALUE_BYTES = 8000, 5000  # ~40 MB in the commit log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            body = r.read()
            return r.status, json.loads(body) if r.headers.get("Content-Type", "").startswith(
                "application/json") else body.decode()
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _node_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGKV_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(NODE_DIR), env.get("PYTHONPATH")) if p)
    return env


def _load(url: str) -> list[str]:
    async def write() -> list[str]:
        keys = [f"replay-{i}" for i in range(WRITES)]
        async with Client(url, connections=32) as client:
            sem = asyncio.Semaphore(32)

            async def one(key: str) -> None:
                async with sem:
                    await client.put(key, key + "=" + "x" * VALUE_BYTES)

            await asyncio.gather(*(one(k) for k in keys))
        return keys

    return asyncio.run(write())


def _assert_readable(url: str, keys: list[str]) -> None:
    """Every 50th acknowledged write reads back with its value."""
    sample = keys[:: len(keys) // 50]

    async def read_back() -> list[Any]:
        async with Client(url) as client:
            return [(await client.get(k)).value for k in sample]

    assert asyncio.run(read_back()) == [k + "=" + "x" * VALUE_BYTES for k in sample]


class Watcher:
    """Polls /health, /ready and /metrics of a starting node from a thread, recording what it saw."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.seen: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                health = _get(self.base + "/health")
                ready = _get(self.base + "/ready")
                metrics = _get(self.base + "/metrics")
            except OSError:  # not listening yet
                time.sleep(0.005)
                continue
            self.seen.append({"health": health, "ready": ready, "metrics": metrics})
            if ready[0] == 200:
                return

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)


def _filled_node(tmp_path: Path, port: int) -> tuple[NodeProcess, list[str]]:
    node = NodeProcess(tmp_path / "data", node_id="replay", durability="batch",
                       extra_args=["--memtable-mb", "512", "--aae-enabled", "false", "--port", str(port)])
    node.start()
    keys = _load(node.url)
    node.kill()  # no flush: everything is in the commit log
    return node, keys


def test_health_and_metrics_answer_during_a_long_replay_and_ready_waits(tmp_path: Path) -> None:
    port = _free_port()
    node, keys = _filled_node(tmp_path, port)
    try:
        with Watcher(f"http://127.0.0.1:{port}") as watcher:
            node.start(timeout_s=120)
            watcher.thread.join(30)
        replaying = [s for s in watcher.seen if s["health"][0] == 200 and
                     s["health"][1].get("phase") == "opening storage"]
        assert replaying, f"never saw the replay from outside: {watcher.seen[:3]}"
        during = replaying[0]
        assert during["ready"][0] == 503 and during["ready"][1]["error"] == "not_ready"
        assert during["ready"][1]["phase"] == "opening storage"
        assert during["metrics"][0] == 200 and "ringkv_node_ready 0.0" in during["metrics"][1]
        assert 'ringkv_node_mode{mode="starting"} 1.0' in during["metrics"][1]
        assert watcher.seen[-1]["ready"][0] == 200
        assert _get(node.url + "/health")[1]["phase"] == "serving"
        _assert_readable(node.url, keys)
    finally:
        node.kill()


def test_the_api_answers_not_ready_during_the_replay_and_sigterm_then_stops_cleanly(tmp_path: Path) -> None:
    port = _free_port()
    node, keys = _filled_node(tmp_path, port)
    try:
        started = subprocess.Popen(node.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   stdin=subprocess.DEVNULL, env=_node_env())
        try:
            deadline = time.monotonic() + 30
            while True:  # the listener is up before the replay is over
                try:
                    health = _get(f"http://127.0.0.1:{port}/health")
                    break
                except OSError:
                    assert time.monotonic() < deadline and started.poll() is None, "the listener never came up"
                    time.sleep(0.005)
            assert health[1]["phase"] == "opening storage"
            status, doc = _get(f"http://127.0.0.1:{port}/api/v1/get?key={keys[0]}")
            assert (status, doc["error"]) == (503, "not_ready")
            started.terminate()  # SIGTERM mid-replay: graceful
            assert started.wait(60) == 0
        finally:
            if started.poll() is None:
                started.kill()
                started.wait(10)
        node.start(timeout_s=120)
        _assert_readable(node.url, keys)
    finally:
        node.kill()


def test_a_one_node_cluster_whose_second_seed_does_not_exist_serves_again_after_a_restart(tmp_path: Path) -> None:
    """What a one-node KVCluster is (its seeds are pods 0 and 1; pod 1 never exists): the first start founds
    the ring alone; a restart remembers no peer and must not wait for one forever: after `ring_wait_s` it
    serves as the one-node ring it was."""
    http, peer, absent = _free_port(), _free_port(), _free_port()
    node = NodeProcess(tmp_path / "alone", node_id="alone", durability="batch", extra_args=[
        "--port", str(http), "--peer-port", str(peer), "--seeds", f"127.0.0.1:{peer},127.0.0.1:{absent}",
        "--replication-factor", "1", "--read-quorum", "1", "--write-quorum", "1", "--ring-wait-s", "2"])
    try:
        node.start(timeout_s=60)

        async def put_then_get() -> Any:
            async with Client(node.url) as client:
                await client.put("alone", "here")
                return (await client.get("alone")).value

        assert asyncio.run(put_then_get()) == "here"
        assert node.stop() == 0
        started = time.monotonic()
        node.start(timeout_s=30)  # before: waited for the absent seed for ever
        assert time.monotonic() - started < 20

        async def get() -> Any:
            async with Client(node.url) as client:
                return (await client.get("alone")).value

        assert asyncio.run(get()) == "here"
    finally:
        node.kill()
