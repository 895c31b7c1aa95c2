"""Real `ringkv node` processes for integration tests.

    with NodeProcess(tmp_path / "data", node_id="n1") as node:   # started, ready, listening on 127.0.0.1
        ... node.url ...
        assert node.stop() == 0                                   # SIGTERM, bounded wait, exit code
        node.start()                                              # same data dir, new port
        node.kill()                                               # SIGKILL

The node is started as `python -m ringkv.cli node --host 127.0.0.1 --port 0 ...` (and `--peer-port 0` where the
node has an internode port): the OS picks the ports, and the node prints exactly one line
`ringkv node ID ready on http://127.0.0.1:PORT` when it serves. That line is awaited with a deadline (no
sleeps); if it never comes, the failure names the node's stderr. Leaving the `with` block kills whatever is
still running. `RINGKV_*` variables of the caller's environment are not passed on, so only the flags given here
configure the node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import NoReturn

from ringkv import config

NODE_DIR = Path(__file__).resolve().parents[2] / "node"
READY_RE = re.compile(r"^ringkv node (?P<id>\S+) ready on (?P<url>https?://127\.0\.0\.1:\d+)$")
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
STDERR_TAIL = 4000  # characters of the node's stderr quoted in failures


class NodeProcess:
    """One `ringkv node` on 127.0.0.1 with a fixed data directory; may be started any number of times."""

    def __init__(self, data_dir: Path, node_id: str = "n1", durability: str = "sync",
                 extra_args: Sequence[str] = (), log_dir: Path | None = None, insecure: bool = True) -> None:
        """`insecure`: start with `--insecure` (no certificates, no tokens); False: `extra_args` carry the
        security flags (`--certs-dir`...)."""
        self.data_dir = data_dir
        self.insecure = insecure
        self.node_id = node_id
        self.durability = durability
        self.extra_args = list(extra_args)
        self.log_dir = log_dir or data_dir.parent
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._url: str | None = None
        self._stderr_path: Path | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "ringkv.cli", "node", "--data-dir", str(self.data_dir),
                "--host", "127.0.0.1", "--port", "0", "--node-id", self.node_id, "--durability", self.durability]
        if "peer_port" in {f.name for f in dataclasses.fields(config.NodeConfig)}:
            argv += ["--peer-port", "0"]  # several nodes side by side: no fixed internode port either
        return argv + (["--insecure"] if self.insecure else []) + self.extra_args

    def start(self, timeout_s: float = START_TIMEOUT_S) -> NodeProcess:
        """Start the node and wait until it prints its ready line; raises AssertionError if it does not."""
        if self.running:
            raise RuntimeError(f"node {self.node_id} is already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self._stderr_path = self.log_dir / f"{self.node_id}.start{self.starts}.stderr"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RINGKV_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(NODE_DIR), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        self._url = None
        with open(self._stderr_path, "wb") as stderr:
            self._proc = subprocess.Popen(self.argv(), stdout=subprocess.PIPE, stderr=stderr,
                                          stdin=subprocess.DEVNULL, env=env, cwd=self.log_dir)
        try:
            self._url = self._await_ready(timeout_s)
        except BaseException:
            self.kill()
            raise
        return self

    def _await_ready(self, timeout_s: float) -> str:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        buffered = b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buffered:  # bounded: every pass reads bytes, sees EOF, or runs down the deadline
                left = deadline - time.monotonic()
                if left <= 0:
                    self._fail(f"did not print its ready line within {timeout_s:.0f} s", buffered)
                if not sel.select(left):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = proc.wait(timeout=STOP_TIMEOUT_S)
                    self._fail(f"exited with code {code} before it was ready", buffered)
                buffered += chunk
        line = buffered.split(b"\n", 1)[0].decode(errors="replace").strip()
        match = READY_RE.match(line)
        if match is None or match["id"] != self.node_id:
            self._fail(f"printed {line!r} instead of its ready line", buffered)
        return match["url"]

    def _fail(self, what: str, stdout: bytes) -> NoReturn:
        raise AssertionError(f"ringkv node {self.node_id} ({' '.join(self.argv())}) {what}\n"
                             f"--- stdout ---\n{stdout.decode(errors='replace')}\n"
                             f"--- stderr (tail) ---\n{self.stderr()[-STDERR_TAIL:]}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait (bounded) for the exit; returns the exit code. Raises AssertionError, after a
        SIGKILL, if the node does not exit in time."""
        proc = self._require_proc()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"ringkv node {self.node_id} did not exit within {timeout_s} s of SIGTERM\n"
                                 f"--- stderr (tail) ---\n{self.stderr()[-STDERR_TAIL:]}") from None
        self._close()
        return code

    def kill(self) -> int | None:
        """SIGKILL (if still running) and reap; returns the exit code, None if never started."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        code = proc.wait(timeout=STOP_TIMEOUT_S)
        self._close()
        return code

    def send_signal(self, sig: signal.Signals) -> None:
        """Send `sig` without waiting: for a precise moment inside an event loop; `stop()`/`kill()` reap later."""
        proc = self._require_proc()
        if proc.poll() is None:
            proc.send_signal(sig)

    def restart(self, timeout_s: float = START_TIMEOUT_S) -> NodeProcess:
        """Stop with SIGTERM (if running; the exit code must be 0) and start again on the same data dir."""
        if self.running:
            code = self.stop()
            if code != 0:
                raise AssertionError(f"ringkv node {self.node_id} exited {code} on SIGTERM\n{self.stderr()}")
        return self.start(timeout_s)

    def _require_proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError(f"node {self.node_id} was never started")
        return self._proc

    def _close(self) -> None:
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()

    # -- state ----------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        return self._require_proc().pid

    @property
    def url(self) -> str:
        if self._url is None or not self.running:
            raise RuntimeError(f"node {self.node_id} is not running")
        return self._url

    def stderr(self) -> str:
        """The node's stderr (its log) of the latest start."""
        if self._stderr_path is None:
            return ""
        with contextlib.suppress(FileNotFoundError):
            return self._stderr_path.read_text(errors="replace")
        return ""

    def __enter__(self) -> NodeProcess:
        return self if self.running else self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()
