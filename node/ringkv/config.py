"""The one configuration object of a node, from command-line flags and `RINGKV_*` environment variables.

Every flag `--some-name` can also be set as `RINGKV_SOME_NAME`; a flag given on the command line wins over
the environment, which wins over the default. Nothing secret lives here (only paths to certificates and
tokens), so the whole config may be logged.
A node given no seeds is a single-node store: its replication factor and quorums default to 1.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from ringkv.cluster.ids import ACTOR_SEPARATOR
from ringkv.storage.wal import Durability

ENV_PREFIX = "RINGKV_"
STANDALONE_DEFAULTS = ("replication_factor", "read_quorum", "write_quorum")  # 1 when no seeds are given


@dataclass(frozen=True)
class NodeConfig:
    data_dir: str = "./data"
    host: str = "127.0.0.1"
    port: int = 8080
    node_id: str = ""  # default: the host name
    durability: str = Durability.SYNC.value
    memtable_mb: float = 32.0
    block_cache_mb: float = 64.0
    max_request_bytes: int = 64 * 1024
    log_format: str = "text"  # text | json
    log_level: str = "info"
    shutdown_timeout_s: float = 10.0
    drain_delay_s: float = 0.0
    # cluster
    cluster_name: str = "ringkv"
    peer_port: int = 0  # 0: any free port (fine for a lone node; set it for a cluster)
    advertise_host: str = ""  # default: host
    seeds: str = ""  # comma-separated host:peer_port
    replication_factor: int = 3
    read_quorum: int = 2
    write_quorum: int = 2
    tokens: str = ""  # comma-separated; default: allocated at first start, then kept in DATA_DIR/node.json
    num_tokens: int = 16
    capacity: float = 1.0
    datacenter: str = "dc1"
    rack: str = "rack1"
    request_timeout_s: float = 2.0
    suspect_after_s: float = 0.3
    read_repair_chance: float = 0.1
    speculative_read_ms: float = 50.0
    ring_wait_s: float = 30.0
    gossip_interval_s: float = 1.0
    phi_threshold: float = 8.0
    hints_enabled: bool = True
    hint_window_s: float = 3 * 3600.0
    hints_max_mb: float = 512.0
    hint_delivery_mb_s: float = 16.0
    # anti-entropy
    aae_enabled: bool = True
    aae_interval_s: float = 60.0
    aae_ranges_per_s: float = 4.0
    aae_mb_s: float = 8.0
    aae_max_keys: int = 10_000
    aae_tree_leaves: int = 65536
    tombstone_grace_s: float = 24 * 3600.0
    # topology changes
    stream_mb_s: float = 32.0
    replace_node: str = ""  # first start only: take over this dead node's tokens and stream its data
    # security
    insecure: bool = False  # no TLS between nodes, no authentication: only for a throwaway local cluster
    certs_dir: str = ""  # ca.crt, node.crt, node.key (`ringkv certs`); required unless insecure
    tokens_file: str = ""  # default: CERTS_DIR/tokens
    http_tls: bool = False
    metrics_auth: bool = False
    security_reload_s: float = 10.0
    # HTTP limits (api/limits.py)
    http_max_connections: int = 4096
    http_header_timeout_s: float = 10.0
    http_keepalive_s: float = 75.0
    http_max_header_bytes: int = 8190

    def effective_node_id(self) -> str:
        return self.node_id or socket.gethostname()

    def effective_advertise_host(self) -> str:
        if self.advertise_host:
            return self.advertise_host
        return self.host if self.host not in ("0.0.0.0", "::", "") else socket.gethostname()

    def seed_addresses(self) -> list[tuple[str, int]]:
        """Parsed `seeds`; raises ValueError on a malformed entry."""
        out = []
        for item in filter(None, (s.strip() for s in self.seeds.split(","))):
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"seed {item!r} is not host:port")
            out.append((host, int(port)))
        return out

    def token_list(self) -> list[int]:
        try:
            return [int(t) for t in self.tokens.split(",") if t.strip()]
        except ValueError:
            raise ValueError("tokens must be comma-separated integers") from None

    def validate(self) -> None:
        """Raises ValueError naming the first inconsistent setting."""
        if not 1 <= self.replication_factor <= 15:
            raise ValueError("replication_factor must be between 1 and 15")
        for name in ("read_quorum", "write_quorum"):
            if not 1 <= getattr(self, name) <= self.replication_factor:
                raise ValueError(f"{name} must be between 1 and replication_factor")
        if ACTOR_SEPARATOR in self.node_id:
            raise ValueError(f"node_id may not contain {ACTOR_SEPARATOR!r}")
        if self.capacity <= 0 or self.num_tokens < 1:
            raise ValueError("capacity and num_tokens must be positive")
        if self.aae_interval_s <= 0 or self.aae_ranges_per_s <= 0 or self.aae_max_keys < 1:
            raise ValueError("aae_interval_s, aae_ranges_per_s and aae_max_keys must be positive")
        if not 16 <= self.aae_tree_leaves <= 2**20:
            raise ValueError("aae_tree_leaves must be between 16 and 1048576")
        if self.tombstone_grace_s < 0 or self.aae_mb_s < 0 or self.drain_delay_s < 0:
            raise ValueError("tombstone_grace_s, aae_mb_s and drain_delay_s may not be negative")
        if self.insecure and (self.http_tls or self.metrics_auth):
            raise ValueError("http_tls and metrics_auth need security: drop --insecure and give --certs-dir")
        if not 0 <= self.read_repair_chance <= 1 or self.speculative_read_ms < 0:
            raise ValueError("read_repair_chance must be between 0 and 1 and speculative_read_ms not negative")
        if self.security_reload_s <= 0:
            raise ValueError("security_reload_s must be positive")
        if self.http_max_connections < 1 or self.http_header_timeout_s <= 0 or self.http_keepalive_s <= 0 \
                or self.http_max_header_bytes < 1024:
            raise ValueError("http_max_connections, http_header_timeout_s and http_keepalive_s must be positive, "
                             "http_max_header_bytes at least 1024")
        self.seed_addresses()
        self.token_list()

    def security_problem(self) -> str | None:
        """Why this node cannot start securely (None: it can, or it was told to run insecure)."""
        if self.insecure:
            return None
        if not self.certs_dir:
            return ("no --certs-dir: a node needs its certificates (ca.crt, node.crt, node.key; make them with "
                    "`ringkv certs create-ca` and `ringkv certs create-node`), or --insecure to run without TLS "
                    "and authentication")
        return None

    def effective_tokens_file(self) -> str:
        return self.tokens_file or (os.path.join(self.certs_dir, "tokens") if self.certs_dir else "")


_HELP = {
    "data_dir": "directory holding the node's data",
    "host": "address to listen on",
    "port": "HTTP port",
    "node_id": "stable node identity (default: host name)",
    "durability": "commit-log durability: sync (fsync before ack), batch (fsync every 2 ms), off",
    "memtable_mb": "memtable size before it is flushed to an SSTable",
    "block_cache_mb": "SSTable blocks kept in memory (reads of cached blocks need no I/O and no thread); 0: none",
    "max_request_bytes": "largest request body accepted (checked before parsing)",
    "log_format": "text or json",
    "log_level": "debug, info, warning, error",
    "shutdown_timeout_s": "how long in-flight requests may take to finish after SIGTERM",
    "drain_delay_s": "after SIGTERM: seconds to keep serving while announced as stopping and not ready (peers "
                     "route around the node at once; load balancers and Service endpoints take it out), before "
                     "the listener closes (Kubernetes: a few seconds; 0: close at once)",
    "cluster_name": "nodes only talk to nodes of the same cluster name",
    "peer_port": "internode TCP port (0: any free port)",
    "advertise_host": "address peers and clients use to reach this node (default: host)",
    "seeds": "comma-separated host:peer_port of seed nodes",
    "replication_factor": "replicas per key (N)",
    "read_quorum": "default R",
    "write_quorum": "default W",
    "tokens": "comma-separated ring tokens (default: allocated at first start)",
    "num_tokens": "tokens per unit of capacity",
    "capacity": "relative capacity; weights the node's share of the ring",
    "datacenter": "datacenter name (placement spreads replicas across datacenters)",
    "rack": "rack name (placement spreads replicas across racks)",
    "request_timeout_s": "timeout of one replica request",
    "suspect_after_s": "a peer that has answered nothing for this long while a call waits is tried last",
    "read_repair_chance": "share of reads that ask every replica instead of R (background read repair), 0..1",
    "speculative_read_ms": "a read without R answers after this long asks one more replica (0: only on a failure)",
    "gossip_interval_s": "seconds between gossip rounds",
    "phi_threshold": "phi accrual failure detector conviction threshold",
    "hints_enabled": "keep hints for replicas that are down (hinted handoff)",
    "hint_window_s": "a replica down longer than this gets no more hints and its pending ones are dropped "
                     "(anti-entropy repairs instead)",
    "hints_max_mb": "size bound of the hint store",
    "hint_delivery_mb_s": "hinted handoff delivery rate limit in MB/s per node (0: unlimited)",
    "ring_wait_s": "a restarted node waits this long to hear a peer before serving on its remembered ring",
    "aae_enabled": "run active anti-entropy (Merkle-tree exchanges between replicas, tombstone collection)",
    "aae_interval_s": "each range is compared with each other replica at least this often",
    "aae_ranges_per_s": "anti-entropy exchanges started per second at most",
    "aae_mb_s": "anti-entropy repair traffic limit in MB/s per node (0: unlimited)",
    "aae_max_keys": "keys repaired per exchange at most (the range is compared again soon when reached)",
    "aae_tree_leaves": "Merkle leaves for the whole ring (a range gets its share); the same on every node",
    "replace_node": "on a first start, replace this dead node: take its tokens and stream their data from the "
                    "other replicas",
    "stream_mb_s": "range streaming (joins) rate limit in MB/s per receiving node (0: unlimited)",
    "insecure": "run without TLS between nodes and without authentication (anyone who reaches a port is "
                "trusted): for a throwaway local cluster only; logs a warning",
    "certs_dir": "directory with ca.crt, node.crt and node.key (`ringkv certs`): mutual TLS between nodes",
    "tokens_file": "bearer tokens accepted on the HTTP API, hashed (`ringkv certs create-token`; default "
                   "CERTS_DIR/tokens)",
    "http_tls": "serve the HTTP API over TLS with the node certificate (client certificates then also "
                "authenticate)",
    "metrics_auth": "/metrics requires a read token too (default: open, it holds no keys or values)",
    "http_max_connections": "open HTTP connections at most; one more is answered 503 and closed",
    "http_header_timeout_s": "a request whose headers (or JSON body) take longer than this to arrive is dropped "
                             "(slowloris)",
    "http_keepalive_s": "an idle keep-alive HTTP connection is closed after this",
    "http_max_header_bytes": "the longest header line accepted (431 beyond)",
    "security_reload_s": "how often certificate and token files are checked for changes (rotation)",
    "tombstone_grace_s": "a deleted record is collected once every replica holds it and it is this old; hints "
                         "older than this are dropped",
}
_CHOICES = {"durability": [d.value for d in Durability], "log_format": ["text", "json"],
            "log_level": ["debug", "info", "warning", "error"]}


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not a boolean")


_KINDS: dict[str, Any] = {"int": int, "float": float, "bool": _bool}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per config field (defaults None so the environment can fill in)."""
    for f in fields(NodeConfig):
        flag = "--" + f.name.replace("_", "-")
        kind: Any = _KINDS.get(str(f.type), str)
        env = ENV_PREFIX + f.name.upper()
        extra: dict[str, Any] = {"nargs": "?", "const": True} if kind is _bool else {}  # `--insecure` alone
        parser.add_argument(flag, type=kind, default=None, choices=_CHOICES.get(f.name),
                            help=f"{_HELP.get(f.name, '')} (env {env}, default {f.default!r})", **extra)


def from_namespace(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Flags, then `RINGKV_*` variables, then defaults. Raises ValueError on a malformed variable."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(NodeConfig):
        given = getattr(args, f.name, None)
        if given is None and ENV_PREFIX + f.name.upper() in env:
            raw = env[ENV_PREFIX + f.name.upper()]
            kind = _KINDS.get(str(f.type), str)
            try:
                given = kind(raw)
            except ValueError:
                raise ValueError(f"{ENV_PREFIX + f.name.upper()}={raw!r} is not a valid {f.type}") from None
            if f.name in _CHOICES and given not in _CHOICES[f.name]:
                raise ValueError(f"{ENV_PREFIX + f.name.upper()} must be one of {_CHOICES[f.name]}")
        if given is not None:
            values[f.name] = given
    if not values.get("seeds"):
        # Alone by configuration: a single-node store, whose quorums are 1 unless set. (A node never lowers
        # a quorum it was given: with N=3 and nobody else, writes would all answer 503.)
        for name in STANDALONE_DEFAULTS:
            values.setdefault(name, 1)
    config = NodeConfig(**values)
    config.validate()
    return config


def parse(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> NodeConfig:
    parser = argparse.ArgumentParser(prog="ringkv node")
    add_arguments(parser)
    return from_namespace(parser.parse_args(argv), environ)
