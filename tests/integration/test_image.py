"""The Dockerfile, built and run for real with podman.

No registry can be reached here, so python:3.11-slim cannot be pulled: tools/k8s-tools makes a local Python 3.11
base (Debian bookworm + python3 by debootstrap, `podman import`) and `podman build --from` puts it in place of the
Dockerfile's base stage; every other line of the real Dockerfile runs as written. The first run takes a few
minutes (debootstrap, then the dependencies' wheels); later runs reuse the base image and podman's layer cache.

Then a node container answers put/get through its port published on 127.0.0.1, runs as uid 10001, drains on
SIGTERM (exit 0), and keeps its data in the volume across containers.

Skipped, naming the reason, where podman cannot be installed or used (not root, no apt-get, no debootstrap).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

TOP = Path(__file__).resolve().parents[2]
IMAGE = "localhost/ringkv:test"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
READY_TIMEOUT_S = 60.0
# One node that is its own quorum.
SINGLE_NODE = {"RINGKV_REPLICATION_FACTOR": "1", "RINGKV_READ_QUORUM": "1", "RINGKV_WRITE_QUORUM": "1"}


@dataclasses.dataclass(frozen=True)
class Podman:
    env: dict[str, str]
    base_image: str

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=self.env)
        if check and proc.returncode != 0:
            pytest.fail(f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc


def tools_failure(stderr: str) -> str:
    """tools/k8s-tools' own last word on why it failed (its lines start with 'k8s-tools:')."""
    ours = [line for line in stderr.splitlines() if line.startswith("k8s-tools:")]
    return ours[-1] if ours else stderr.strip()[-600:]


@pytest.fixture(scope="module")
def podman() -> Podman:
    try:
        proc = subprocess.run(["bash", str(TOP / "tools" / "k8s-tools"), "podman", "base-image"],
                              capture_output=True, text=True, timeout=1200)
    except subprocess.TimeoutExpired:
        pytest.skip("tools/k8s-tools podman base-image took over 20 minutes")
    if proc.returncode != 0:
        pytest.skip(f"podman cannot be installed or used here: {tools_failure(proc.stderr)}")
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return Podman(env={**os.environ, "CONTAINERS_CONF": found["CONTAINERS_CONF"]}, base_image=found["BASE_IMAGE"])


@pytest.fixture(scope="module")
def image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image built from the real Dockerfile, base stage replaced by the local Python base."""
    args = ["build", "--from", podman.base_image, "--layers", "-t", IMAGE, "-f", str(TOP / "Dockerfile")]
    if HOST_CA.is_file():
        # The builder's pip trusts what this machine trusts (some networks re-sign TLS with their own CA);
        # the mounts exist only while RUN steps run and leave nothing in the image.
        pip_conf = tmp_path_factory.mktemp("pip") / "pip.conf"
        pip_conf.write_text(f"[global]\ncert = {HOST_CA}\n")
        args += ["-v", f"{HOST_CA}:{HOST_CA}:ro", "-v", f"{pip_conf}:/etc/pip.conf:ro"]
    proc = podman.run(*args, str(TOP), timeout=1500, check=False)
    if proc.returncode != 0:
        pytest.fail(f"podman build failed:\n{(proc.stdout + proc.stderr)[-5000:]}")
    return IMAGE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def wait_ready(podman: Podman, container: str, url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if http("GET", f"{url}/ready")[0] == 200:
                return
        time.sleep(0.25)
    logs = podman.run("logs", container, check=False)
    pytest.fail(f"the node in {container} was not ready within {READY_TIMEOUT_S}s:\n{logs.stdout}{logs.stderr}")


@contextlib.contextmanager
def node_container(podman: Podman, image: str, volume: str, name: str) -> Iterator[str]:
    """A detached node container, its HTTP port published on 127.0.0.1; yields the URL; removed afterwards."""
    port = free_port()
    env = [arg for key, value in SINGLE_NODE.items() for arg in ("-e", f"{key}={value}")]
    podman.run("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", "-v", f"{volume}:/var/lib/ringkv",
               "-e", "RINGKV_NODE_ID=n1", "-e", "RINGKV_INSECURE=true", *env, image)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(podman, name, url)
        yield url
    finally:
        podman.run("rm", "-f", "-t", "5", name, check=False)


@pytest.fixture
def volume(podman: Podman) -> Iterator[str]:
    name = f"ringkv-test-data-{os.getpid()}"
    podman.run("volume", "create", name)
    yield name
    podman.run("volume", "rm", "-f", name, check=False)


def test_image_metadata(podman: Podman, image: str) -> None:
    [info] = json.loads(podman.run("image", "inspect", image).stdout)
    cfg = info["Config"]
    assert cfg["User"] == "10001:10001"
    assert cfg["Cmd"] == ["ringkv", "node"]
    assert {"8080/tcp", "7070/tcp"} <= set(cfg["ExposedPorts"])
    assert "/var/lib/ringkv" in cfg["Volumes"]
    env = dict(item.split("=", 1) for item in cfg["Env"])
    assert env["RINGKV_HOST"] == "0.0.0.0" and env["RINGKV_PORT"] == "8080"
    assert env["RINGKV_PEER_PORT"] == "7070" and env["RINGKV_DATA_DIR"] == "/var/lib/ringkv"
    assert cfg["Labels"]["org.opencontainers.image.title"] == "ringkv"
    assert cfg["Labels"]["org.opencontainers.image.version"] == "0.1.0"
    assert "Healthcheck" not in cfg or not cfg["Healthcheck"]


def test_image_holds_node_and_operator_but_no_build_tools(podman: Podman, image: str) -> None:
    script = (
        "import importlib.util as u, shutil, os\n"
        "import kopf, ringkv, ringkv_operator\n"
        "print('venv-pip', u.find_spec('pip') is not None)\n"
        "print('setuptools', u.find_spec('setuptools') is not None)\n"
        "print('compilers', [c for c in ('gcc', 'cc', 'make') if shutil.which(c)])\n"
        "print('pip-cache', os.path.exists('/root/.cache/pip'))\n"
        "print('kopf', shutil.which('kopf'))\n"
    )
    out = podman.run("run", "--rm", "--user", "0", image, "python3", "-c", script).stdout
    assert "venv-pip False" in out
    assert "setuptools False" in out
    assert "compilers []" in out
    assert "pip-cache False" in out
    assert "kopf /opt/ringkv/bin/kopf" in out
    help_text = podman.run("run", "--rm", image, "kopf", "run", "--help").stdout
    assert "--liveness" in help_text and "--all-namespaces" in help_text


def test_node_container_serves_put_get_as_non_root(podman: Podman, image: str, volume: str) -> None:
    name = f"ringkv-test-node-{os.getpid()}"
    with node_container(podman, image, volume, name) as url:
        status, answer = http("POST", f"{url}/api/v1/put", {"key": "user:1", "value": {"name": "Ada"}})
        assert status == 200, answer
        status, answer = http("GET", f"{url}/api/v1/get?key=user:1")
        assert (status, answer["value"]) == (200, {"name": "Ada"})
        assert http("GET", f"{url}/health")[0] == 200

        proc_status = podman.run("exec", name, "cat", "/proc/1/status").stdout
        uids = next(line.split()[1:] for line in proc_status.splitlines() if line.startswith("Uid:"))
        assert set(uids) == {"10001"}, proc_status  # real, effective, saved, fs uid of the node (PID 1)
        owners = podman.run("exec", name, "stat", "-c", "%u:%g %n", "/var/lib/ringkv",
                            "/var/lib/ringkv/MANIFEST").stdout.split("\n")
        assert all(line.startswith("10001:10001 ") for line in owners if line), owners

        podman.run("stop", "-t", "20", name)  # SIGTERM: drain, flush, close
        assert podman.run("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip() == "0"
        logs = podman.run("logs", name)
        assert "stopped" in logs.stdout + logs.stderr

    with node_container(podman, image, volume, name + "-again") as url:  # same volume, new container
        status, answer = http("GET", f"{url}/api/v1/get?key=user:1")
        assert (status, answer["value"]) == (200, {"name": "Ada"})
