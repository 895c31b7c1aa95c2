"""The one configuration object of a node, from command-line flags and `RINGKV_*` environment variables.

Every flag `--some-name` can also be set as `RINGKV_SOME_NAME`; a flag given on the command line wins over
the environment, which wins over the default. Nothing secret lives here, so the whole config may be logged.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from ringkv.storage.wal import Durability

ENV_PREFIX = "RINGKV_"


@dataclass(frozen=True)
class NodeConfig:
    data_dir: str = "./data"
    host: str = "127.0.0.1"
    port: int = 8080
    node_id: str = ""  # default: the host name
    durability: str = Durability.SYNC.value
    memtable_mb: float = 8.0
    max_request_bytes: int = 64 * 1024
    log_format: str = "text"  # text | json
    log_level: str = "info"
    shutdown_timeout_s: float = 10.0

    def effective_node_id(self) -> str:
        return self.node_id or socket.gethostname()


_HELP = {
    "data_dir": "directory holding the node's data",
    "host": "address to listen on",
    "port": "HTTP port",
    "node_id": "stable node identity (default: host name)",
    "durability": "commit-log durability: sync (fsync before ack), batch (fsync every 2 ms), off",
    "memtable_mb": "memtable size before it is flushed to an SSTable",
    "max_request_bytes": "largest request body accepted (checked before parsing)",
    "log_format": "text or json",
    "log_level": "debug, info, warning, error",
    "shutdown_timeout_s": "how long in-flight requests may take to finish after SIGTERM",
}
_CHOICES = {"durability": [d.value for d in Durability], "log_format": ["text", "json"],
            "log_level": ["debug", "info", "warning", "error"]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per config field (defaults None so the environment can fill in)."""
    for f in fields(NodeConfig):
        flag = "--" + f.name.replace("_", "-")
        kind: Any = {"int": int, "float": float}.get(str(f.type), str)
        env = ENV_PREFIX + f.name.upper()
        parser.add_argument(flag, type=kind, default=None, choices=_CHOICES.get(f.name),
                            help=f"{_HELP.get(f.name, '')} (env {env}, default {f.default!r})")


def from_namespace(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Flags, then `RINGKV_*` variables, then defaults. Raises ValueError on a malformed variable."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(NodeConfig):
        given = getattr(args, f.name, None)
        if given is None and ENV_PREFIX + f.name.upper() in env:
            raw = env[ENV_PREFIX + f.name.upper()]
            kind = {"int": int, "float": float}.get(str(f.type), str)
            try:
                given = kind(raw)
            except ValueError:
                raise ValueError(f"{ENV_PREFIX + f.name.upper()}={raw!r} is not a valid {f.type}") from None
            if f.name in _CHOICES and given not in _CHOICES[f.name]:
                raise ValueError(f"{ENV_PREFIX + f.name.upper()} must be one of {_CHOICES[f.name]}")
        if given is not None:
            values[f.name] = given
    return NodeConfig(**values)


def parse(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> NodeConfig:
    parser = argparse.ArgumentParser(prog="ringkv node")
    add_arguments(parser)
    return from_namespace(parser.parse_args(argv), environ)
