"""Ring changes in flight: who gains which ranges, from whom they are streamed, and where writes go meanwhile.
Pure.

A topology change moves the ring from `current` (what placement uses: normal and leaving members) to
`future` (a join adds the joining node's pending tokens; a decommission or removal drops the node). Both are
`Ring`s; everything here is derived from the pair, deterministically, so every node that sees the same
gossip computes the same plan.

- **Movements** (`movements`): the token space is cut at every token of either ring; on each piece
  `(a, b]` the replicas before (`current.preference_list(b)`) and after (`future...`) are compared. A node
  in the future set but not the current one *gains* the piece and must receive its data; the current
  replicas are its possible *sources*. Adjacent pieces with the same gainer and sources are merged.
- **Pending replicas** (`pending_for`): while a change is in flight, a write also goes to the nodes that
  will replicate its key but do not yet (Cassandra's pending ranges), and the coordinator waits for one more
  acknowledgement per pending replica, so that the write is on W replicas of the future ring as well as of
  the current one. Reads use the current ring only.
- **Turns** (`join_turn`): one topology change at a time. Nodes that want to join announce it (status
  joining, no tokens yet); the one with the lowest `(generation, node_id)` goes first, the others wait
  until no change is in flight. This is a rule applied to gossiped state, not consensus: two candidates
  that do not yet see each other could both go ahead, which is why a candidate announces itself and waits a
  few gossip rounds before it looks (see `net/node.py`), and why token conflicts still resolve the same way
  on every node (`ringview`).
- **Agreement** (`views_agree`): a change waits until every member of the ring gossips the same view (ring and
  future ring digests) before it moves data. Members we have not heard from since we started count as
  disagreeing until we have gossiped long enough to call them dead (`settled`): right after a restart no one
  is up yet, and an empty set of live members is not agreement.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ringkv.cluster.ids import NodeId
from ringkv.cluster.ring import Replication, Ring

RING = 2**64


@dataclass(frozen=True)
class Movement:
    """Data of tokens `(lo, hi]` that `gainer` must receive; any of `sources` holds it today."""

    lo: int
    hi: int
    gainer: NodeId
    sources: tuple[NodeId, ...]  # sorted

    @property
    def name(self) -> str:
        return f"{self.lo}:{self.hi}"

    @property
    def span(self) -> int:
        return (self.hi - self.lo) % RING or RING


def _cuts(current: Ring, future: Ring) -> list[int]:
    return sorted(set(current.tokens) | set(future.tokens))


def movements(current: Ring, future: Ring, replication: Replication) -> list[Movement]:
    """Every (piece, gainer, sources) the change from `current` to `future` needs (see the module docstring).
    Empty when either ring is empty (nothing to move from, or nothing left to place)."""
    if not len(current) or not len(future):
        return []
    cuts = _cuts(current, future)
    pieces: list[tuple[int, int, NodeId, tuple[NodeId, ...]]] = []
    for i, hi in enumerate(cuts):
        lo = cuts[i - 1]  # i == 0: the piece wrapping past the top of the ring (lo == hi when only one cut)
        before = current.preference_list(hi, replication)
        after = future.preference_list(hi, replication)
        sources = tuple(sorted(before))
        for gainer in sorted(set(after) - set(before)):
            pieces.append((lo, hi, gainer, sources))
    return _merge(pieces, len(cuts))


def _merge(pieces: list[tuple[int, int, NodeId, tuple[NodeId, ...]]], cuts: int) -> list[Movement]:
    """Join pieces that touch and share gainer and sources (including across the wrap)."""
    by_key: dict[tuple[NodeId, tuple[NodeId, ...]], list[tuple[int, int]]] = {}
    for lo, hi, gainer, sources in pieces:
        by_key.setdefault((gainer, sources), []).append((lo, hi))
    out: list[Movement] = []
    for (gainer, sources), spans in by_key.items():
        if len(spans) == cuts:  # every piece: the whole ring
            out.append(Movement(spans[-1][1], spans[-1][1], gainer, sources))
            continue
        runs: list[list[int]] = []
        for lo, hi in spans:  # in cut order
            if runs and runs[-1][1] == lo:
                runs[-1][1] = hi
            else:
                runs.append([lo, hi])
        if len(runs) > 1 and runs[-1][1] == runs[0][0]:  # the last run continues into the first
            runs[0][0] = runs[-1][0]
            runs.pop()
        out.extend(Movement(lo, hi, gainer, sources) for lo, hi in runs)
    out.sort(key=lambda m: (m.gainer, m.lo >= m.hi, m.hi))
    return out


def gains_of(moves: Iterable[Movement], node: NodeId) -> list[Movement]:
    return [m for m in moves if m.gainer == node]


def pending_for(current: Ring, future: Ring, token: int, replication: Replication) -> tuple[NodeId, ...]:
    """The nodes that will replicate `token` once the change is done but do not today (they get the writes
    too); in preference order."""
    if not len(future):
        return ()
    now = set(current.preference_list(token, replication)) if len(current) else set()
    return tuple(n for n in future.preference_list(token, replication) if n not in now)


def join_turn(candidates: Iterable[tuple[NodeId, int]]) -> NodeId | None:
    """Of the nodes waiting to join, `(node_id, generation)`, the one whose turn it is."""
    ordered = sorted(candidates, key=lambda c: (c[1], c[0]))
    return ordered[0][0] if ordered else None


@dataclass(frozen=True)
class PeerView:
    """What gossip tells us of another member, for `views_agree`."""

    in_ring: bool  # normal or leaving: its ring matters (joining and left members do not place data)
    heard: bool  # a heartbeat of it has arrived since we started
    up: bool
    view: str  # the view digest it gossips


def views_agree(peers: Iterable[PeerView], view: str, settled: bool) -> bool:
    """Whether every live member of the ring shows `view`; one never heard blocks agreement until `settled`."""
    for peer in peers:
        if not peer.in_ring:
            continue
        if not peer.heard and not settled:
            return False
        if peer.up and peer.view != view:
            return False
    return True
