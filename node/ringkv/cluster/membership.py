"""Gossip membership state: who is in the cluster, where they listen, their tokens, and how fresh that is.

Each node owns one `MemberState` about itself and is the only one that changes it. Freshness is the pair
`(generation, version)`: `generation` is set when the process starts (its start time in milliseconds, so a
restarted node's state always wins over what peers remember of its previous life) and `version` grows on
every heartbeat and every change. Merging keeps, per node, the state with the higher pair; it is commutative,
associative and idempotent, so states may travel along any path any number of times and still converge.

Gossip exchanges whole state maps (push-pull): a few hundred bytes per node, fine for the tens of nodes this
is meant for; digests would be the next step beyond that.

Liveness is not gossiped: each node judges it locally from how regularly *new versions* of a peer's state
arrive (the failure detector, `failure_detector.py`), as in Cassandra.

Pure: no clocks (callers pass `now_ms`), no I/O.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ringkv.cluster.ids import NodeId

# Generations are milliseconds since the epoch (~2**41 today); a peer claiming more than this is broken or
# hostile, and adopting it (our generation moves past any echo of ourselves) would overflow the wire format.
MAX_FRESHNESS = 2**52
# Bounds of one state's fields: a state is kept and gossiped on by every node, so one that is huge would make
# every node's state map too large to send (a frame is at most 16 MiB), and gossip would stop cluster-wide.
MAX_TEXT_CHARS = 256  # node ids, host names, datacenters, racks (a DNS name is at most 253)
MAX_TOKENS = 2**20  # per member: num_tokens x capacity, which the KVCluster CRD lets reach 1024 x 1000


class Status(enum.StrEnum):
    JOINING = "joining"
    NORMAL = "normal"
    LEAVING = "leaving"
    LEFT = "left"


@dataclass(frozen=True)
class MemberState:
    node_id: NodeId
    generation: int
    version: int
    status: Status
    host: str
    http_port: int
    peer_port: int
    tokens: tuple[int, ...]
    datacenter: str = "dc1"
    rack: str = "rack1"
    capacity: float = 1.0
    ring: str = ""  # the digest of the ring this member places keys on ("" unknown): agreement is visible
    replaces: str = ""  # joining to take over this dead member's tokens (replace), else ""
    by: str = ""  # the live member that announced this state on behalf of a dead one (`speak_for`), else ""
    stopping: bool = False  # the member announced its shutdown (SIGTERM): judge it down now, not after phi

    @property
    def freshness(self) -> tuple[int, int]:
        return (self.generation, self.version)

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.node_id, "gen": self.generation, "ver": self.version, "status": self.status.value,
            "host": self.host, "http": self.http_port, "peer": self.peer_port, "tokens": list(self.tokens),
            "dc": self.datacenter, "rack": self.rack, "cap": self.capacity, "ring": self.ring,
            "replaces": self.replaces, "by": self.by, "stop": self.stopping,
        }

    @classmethod
    def from_wire(cls, doc: Mapping[str, Any]) -> MemberState:
        """Raises ValueError on a malformed state (a peer bug or a foreign sender): every field of its exact
        type and within its bounds, nothing coerced (`str()` of a hostile value can be anything, or raise)."""
        if not isinstance(doc, Mapping):
            raise ValueError("malformed member state: not a map")
        try:
            state = cls(
                node_id=NodeId(_text(doc, "id")), generation=_int(doc, "gen", 0, MAX_FRESHNESS - 1),
                version=_int(doc, "ver", 0, MAX_FRESHNESS - 1), status=Status(_text(doc, "status")),
                host=_text(doc, "host"), http_port=_int(doc, "http", 0, 65535), peer_port=_int(doc, "peer", 0, 65535),
                tokens=_tokens(doc), datacenter=_text(doc, "dc"), rack=_text(doc, "rack"), capacity=_number(doc, "cap"),
                ring=_text(doc, "ring", optional=True)[:80],  # absent from a sender that predates it
                replaces=_text(doc, "replaces", optional=True),
                by=_text(doc, "by", optional=True),  # absent from a sender that predates it
                stopping=_flag(doc, "stop"),  # absent from a sender that predates it
            )
        except KeyError as e:
            raise ValueError(f"malformed member state: {e.args[0]} missing") from None
        except ValueError as e:
            raise ValueError(f"malformed member state: {e}") from None
        if not state.node_id or not (math.isfinite(state.capacity) and state.capacity > 0):
            raise ValueError("malformed member state: empty id or capacity not a positive number")
        return state


def _text(doc: Mapping[str, Any], name: str, optional: bool = False) -> str:
    value = (doc.get(name) or "") if optional else doc[name]
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"{name} must be a string of at most {MAX_TEXT_CHARS} characters")
    return value


def _flag(doc: Mapping[str, Any], name: str) -> bool:
    value = doc.get(name, False)
    if type(value) is not bool:
        raise ValueError(f"{name} must be a boolean")
    return value


def _int(doc: Mapping[str, Any], name: str, lo: int, hi: int) -> int:
    value = doc[name]
    if type(value) is not int:
        raise ValueError(f"{name} must be an integer")
    if not lo <= value <= hi:
        raise ValueError(f"{name} is out of range ({lo}..{hi})")
    return value


def _number(doc: Mapping[str, Any], name: str) -> float:
    value = doc[name]
    if type(value) not in (int, float):
        raise ValueError(f"{name} must be a number")
    return float(value)


def _tokens(doc: Mapping[str, Any]) -> tuple[int, ...]:
    value = doc["tokens"]
    if not isinstance(value, list | tuple) or len(value) > MAX_TOKENS:
        raise ValueError(f"tokens must be a list of at most {MAX_TOKENS} tokens")
    if not all(type(t) is int for t in value):
        raise ValueError("tokens must be integers")
    if not all(-(2**63) <= t < 2**63 for t in value):
        raise ValueError("a token outside the signed 64-bit range")
    return tuple(value)


def merge_states(current: Mapping[NodeId, MemberState], incoming: Iterable[MemberState]
                 ) -> tuple[dict[NodeId, MemberState], list[MemberState]]:
    """Keep the fresher state per node. Returns the merged map and the states that were news to us."""
    merged = dict(current)
    news: list[MemberState] = []
    for state in incoming:
        known = merged.get(state.node_id)
        if known is None or state.freshness > known.freshness:
            merged[state.node_id] = state
            news.append(state)
    return merged, news


class Membership:
    """This node's view: its own state (which only it changes) plus the freshest state heard of every peer."""

    def __init__(self, local: MemberState) -> None:
        self._members: dict[NodeId, MemberState] = {local.node_id: local}
        self.local_id = local.node_id
        self.echo: MemberState | None = None

    @property
    def local(self) -> MemberState:
        return self._members[self.local_id]

    @property
    def members(self) -> Mapping[NodeId, MemberState]:
        return self._members

    def beat(self) -> MemberState:
        """A heartbeat: bump our own version."""
        return self.update_local()

    def update_local(self, **changes: Any) -> MemberState:
        local = self.local
        new = replace(local, version=local.version + 1, **changes)
        self._members[self.local_id] = new
        return new

    def apply(self, incoming: Iterable[MemberState]) -> list[MemberState]:
        """Merge states heard from a peer; returns the ones that were news. Our own state is never replaced
        by a peer's (a stale echo of ourselves, or an impostor with our id); the freshest echo is kept in
        `echo` (what the cluster remembers of us, e.g. our tokens after our data directory was wiped), and if
        it is fresher than our own state (a previous life, with our clock now behind) our generation moves
        past it, or peers would ignore us as stale."""
        incoming = list(incoming)
        for state in incoming:
            if state.node_id == self.local_id and (self.echo is None or state.freshness > self.echo.freshness):
                self.echo = state
        if self.echo is not None and self.echo.freshness > self.local.freshness:  # only we write our state:
            # a fresher copy of it is from a previous life
            self._members[self.local_id] = replace(self.local, generation=self.echo.generation + 1, version=0)
        foreign = [s for s in incoming if s.node_id != self.local_id]
        self._members, news = merge_states(self._members, foreign)
        return news

    def speak_for(self, node: NodeId, **changes: Any) -> MemberState:
        """Change a *dead* peer's state on its behalf (removenode): the same generation, a version past the
        freshest one heard, so the change wins everywhere gossip takes it. If the peer comes back, its new
        generation wins over it (a removed node must be wiped before it starts again). The state names us
        (`by`): it is no heartbeat of the dead node (`Gossiper.absorb`), and while we are up it shows a change
        in flight (a removal) to every node."""
        if node == self.local_id or node not in self._members:
            raise KeyError(node)
        known = self._members[node]
        new = replace(known, version=known.version + 1000, by=self.local_id, **changes)
        self._members[node] = new
        return new

    def restore(self, states: Iterable[MemberState]) -> None:
        """Seed the view with states remembered from a previous run (stale by construction: any state gossip
        brings replaces them)."""
        self._members, _ = merge_states(self._members, [s for s in states if s.node_id != self.local_id])

    def to_wire(self, include_local: bool = True) -> list[dict[str, Any]]:
        return [s.to_wire() for n, s in self._members.items() if include_local or n != self.local_id]
