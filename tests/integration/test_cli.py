"""The `ringkv` client verbs as a user runs them: `ringkv put KEY JSON`, `ringkv get KEY`, `ringkv delete KEY`
against a real node, checked by exit code (0 ok, 1 not found or refused by the node, 2 bad argument), stdout
(JSON) and stderr (one readable line, no traceback)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ringkv.client import Client
from tests.integration.nodes import NODE_DIR, NodeProcess

CLI_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    with NodeProcess(tmp_path_factory.mktemp("cli") / "data", node_id="cli") as n:
        yield n


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGKV_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(NODE_DIR), env.get("PYTHONPATH")) if p)
    return {**env, **(extra or {})}


def finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = proc.communicate(timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"{proc.args!r} did not finish within {CLI_TIMEOUT_S} s") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def launch(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ringkv.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=cli_env(env))


def ringkv(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = finish(launch(*args, env=env))
    assert "Traceback" not in done.stderr, done.stderr
    return done


Runs = dict[str, subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def node_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-node") / "data"


@pytest.fixture(scope="module")
def independent(node: NodeProcess, node_data_dir: Path) -> Runs:
    """The invocations that do not depend on one another, run side by side (each one pays Python's start-up)."""
    with socket.socket() as closed:  # a port nothing listens on: bound, never listening
        closed.bind(("127.0.0.1", 0))
        procs = {
            "absent": launch("get", "cli:never", "--url", node.url),
            "not_json": launch("put", "cli:bad", "text without quotes", "--url", node.url),
            "refused": launch("put", "cli:number", "5", "--url", node.url),
            "env_url": launch("put", "cli:env", '["from", "env"]', env={"RINGKV_URL": node.url}),
            "unreachable": launch("get", "cli:any", "--url", f"http://127.0.0.1:{closed.getsockname()[1]}"),
            "node_bad_env": launch("node", "--data-dir", str(node_data_dir), "--host", "127.0.0.1",
                                   env={"RINGKV_PORT": "eighty"}),
        }
        try:
            return {name: finish(proc) for name, proc in procs.items()}
        finally:
            for proc in procs.values():  # reached with processes left only if one did not finish in time
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def output(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def test_put_get_delete(node: NodeProcess) -> None:
    put = output(ringkv("put", "cli:1", '{"name": "Ada", "tags": ["ü", 1]}', "--url", node.url))
    assert put["key"] == "cli:1" and put["context"]
    got = output(ringkv("get", "cli:1", "--url", node.url))
    assert got == {"key": "cli:1", "context": put["context"], "value": {"name": "Ada", "tags": ["ü", 1]}}
    deleted = output(ringkv("delete", "cli:1", "--url", node.url))
    assert deleted["key"] == "cli:1" and deleted["context"] != put["context"]
    gone = ringkv("get", "cli:1", "--url", node.url)
    assert gone.returncode == 1 and "not found" in gone.stderr and gone.stdout == ""


def test_get_absent_key_exits_1(independent: Runs) -> None:
    done = independent["absent"]
    assert done.returncode == 1 and "cli:never" in done.stderr and "not found" in done.stderr


def test_value_that_is_not_json_exits_2_and_writes_nothing(node: NodeProcess, independent: Runs) -> None:
    done = independent["not_json"]
    assert done.returncode == 2 and "not JSON" in done.stderr and done.stdout == ""

    async def absent() -> bool:
        async with Client(node.url) as client:
            return not (await client.get("cli:bad")).found

    assert asyncio.run(absent())


def test_value_the_node_refuses_exits_1_with_its_error_code(independent: Runs) -> None:
    done = independent["refused"]
    assert done.returncode == 1 and "400 invalid_value" in done.stderr


def test_siblings_are_shown_and_resolved_with_context(node: NodeProcess) -> None:
    async def make_siblings() -> None:
        async with Client(node.url) as client:
            stale = await client.put("cli:siblings", "v0")
            await client.put("cli:siblings", "a", context=stale)
            await client.put("cli:siblings", "b", context=stale)

    asyncio.run(make_siblings())
    got = output(ringkv("get", "cli:siblings", "--url", node.url))
    assert sorted(got["siblings"]) == ["a", "b"] and "value" not in got
    output(ringkv("put", "cli:siblings", '"merged"', "--context", got["context"], "--url", node.url))

    async def read() -> list[Any]:
        async with Client(node.url) as client:
            return (await client.get("cli:siblings")).values

    assert asyncio.run(read()) == ["merged"]


def test_url_from_environment(node: NodeProcess, independent: Runs) -> None:
    assert output(independent["env_url"])["key"] == "cli:env"

    async def read() -> list[Any]:
        async with Client(node.url) as client:
            return (await client.get("cli:env")).values

    assert asyncio.run(read()) == [["from", "env"]]


def test_unreachable_node_exits_1(independent: Runs) -> None:
    done = independent["unreachable"]
    assert done.returncode == 1 and "unreachable" in done.stderr


def test_node_with_a_malformed_environment_variable_exits_2(independent: Runs, node_data_dir: Path) -> None:
    done = independent["node_bad_env"]
    assert done.returncode == 2 and "RINGKV_PORT" in done.stderr
    assert not node_data_dir.exists()


def test_errors_are_one_line_without_a_traceback(independent: Runs) -> None:
    for name, done in independent.items():
        assert done.returncode != 0 or name == "env_url", (name, done.stderr)
        assert "Traceback" not in done.stderr, (name, done.stderr)
        if name != "node_bad_env":  # argparse-style usage errors may span lines; the verbs' errors do not
            assert done.stderr.count("\n") <= 1, (name, done.stderr)


def test_output_into_a_closed_pipe_is_quiet(node: NodeProcess) -> None:
    """`ringkv get KEY | head -c 10`: the reader goes before the output is written; no traceback, exit 141."""
    assert ringkv("put", "piped", orjson.dumps(["x" * 100] * 90).decode(), "--url", node.url).returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "ringkv.cli", "get", "piped", "--url", node.url],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=CLI_TIMEOUT_S,
                              check=False, env=cli_env())
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141
