"""A node's identity on its own volume, `DATA_DIR/node.json`, and the rules that keep dots unique.

Format 2 (JSON; replaced atomically: temporary file, fsync, rename, directory fsync)::

    {"format": 2, "node_id": str, "incarnation": str (hex), "tokens": [int, ...], "generation": int,
     "running": bool, "durability": "sync" | "batch" | "off" (of the run that wrote it),
     "peers": [member state, as gossip's MemberState.to_wire, ...],
     "data_seq": int (optional, 0 if absent: the storage engine's last sequence number when last saved),
     "joining": bool (optional: tokens taken but the join's streaming not finished; a restart resumes it),
     "left": bool (optional: the node decommissioned; a restart on this directory stays out of the ring)}

Format 1 (before incarnations: `{"node_id", "tokens"}`) still loads; it has no incarnation, so the node takes
one. An unreadable file is an error (the node refuses to start rather than guess who it is).

The rules (`decide`, pure):

- **Incarnation.** Kept only when the file names this node id and holds one, and the previous run stopped
  cleanly or that run's commit log fsynced before every acknowledgement (`sync`: then a crash loses only
  writes nobody was told of or shown; it is the durability of the run that stopped that counts, not this
  one's). Otherwise — a new or wiped data directory, a format 1 file, an unclean stop
  under `batch`/`off` durability, storage that lost data behind the node's back (tables the engine's
  manifest names are missing, or the engine's sequence number is below the `data_seq` saved earlier:
  files deleted or restored from an old copy) — a new random incarnation: the node's dots get a new actor
  (`ids.actor`), so none of them can repeat one its peers have already seen.
- **Generation** (gossip's restart counter): `max(saved + 1, now_ms)`, persisted before the first gossip, so
  a node whose clock went backwards still starts a newer generation than its peers remember.
- `running` is set before the node serves and cleared after its storage is closed: an unclean stop leaves
  it set.
- `left` is set by a decommission before it announces `left`, and kept: a node started again on that directory
  (a container restarted by its kubelet) stays out of the ring, serving nothing, until the directory is wiped.
  Without it, the restart would find no tokens and join as a new member, streaming the data back.
- `peers` is the last ring this node saw (the members with tokens); a restarted node gossips to them as well
  as to its seeds and places keys on that ring until it hears a fresher one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ringkv.errors import RingkvError
from ringkv.storage.fsutil import write_atomically

FORMAT = 2
FILE_NAME = "node.json"


class IdentityError(RingkvError):
    """`node.json` exists but cannot be read as an identity."""

    code = "identity_unreadable"


@dataclass(frozen=True)
class Identity:
    node_id: str
    incarnation: str
    tokens: tuple[int, ...] = ()
    generation: int = 0
    running: bool = False
    peers: tuple[Mapping[str, Any], ...] = field(default=(), compare=False)
    durability: str = "sync"
    data_seq: int = 0
    joining: bool = False  # tokens taken, data not streamed yet: a restart resumes the join
    left: bool = False  # decommissioned: this data directory no longer belongs to a member of the ring

    def to_json(self) -> bytes:
        return json.dumps({
            "format": FORMAT, "node_id": self.node_id, "incarnation": self.incarnation,
            "tokens": list(self.tokens), "generation": self.generation, "running": self.running,
            "durability": self.durability, "data_seq": self.data_seq, "joining": self.joining,
            "left": self.left, "peers": [dict(p) for p in self.peers],
        }, sort_keys=True).encode()

    def with_(self, **changes: Any) -> Identity:
        return replace(self, **changes)


@dataclass(frozen=True)
class Decision:
    identity: Identity
    new_incarnation: bool
    reason: str  # why the incarnation was kept or renewed (for the log)


def decide(saved: Mapping[str, Any] | None, node_id: str, durability: str, now_ms: int,
           fresh_incarnation: str, data_seq: int = 0, lost_tables: int = 0) -> Decision:
    """The identity this start runs under (with `durability`), from what `node.json` held (None: no file);
    `data_seq` is the storage engine's last sequence number now, `lost_tables` how many tables it found
    missing."""
    saved_seq = int((saved or {}).get("data_seq") or 0)
    if saved is None:
        reason = "new data directory"
    elif saved.get("node_id") != node_id:
        reason = f"the data directory belonged to node {saved.get('node_id')!r}"
    elif not saved.get("incarnation"):
        reason = "the data directory predates incarnations"
    elif saved.get("running") and saved.get("durability") != "sync":
        reason = f"the previous run did not stop cleanly and its durability was {saved.get('durability')}"
    elif lost_tables:
        reason = f"storage lost {lost_tables} table(s) while the node was down"
    elif data_seq < saved_seq:
        reason = f"storage holds less than it did (sequence {data_seq} < {saved_seq}): data was lost or restored"
    else:
        reason = ""
    same_node = saved is not None and saved.get("node_id") == node_id
    tokens = tuple(int(t) for t in (saved or {}).get("tokens") or ()) if same_node else ()
    peers = tuple(p for p in (saved or {}).get("peers") or () if isinstance(p, dict)) if same_node else ()
    generation = max(int((saved or {}).get("generation") or 0) + 1, now_ms) if same_node else now_ms
    joining = bool((saved or {}).get("joining")) if same_node else False
    left = bool((saved or {}).get("left")) if same_node else False
    if reason:
        identity = Identity(node_id, fresh_incarnation, tokens, generation, True, peers, durability, data_seq,
                            joining, left)
        return Decision(identity, True, reason)
    identity = Identity(node_id, str((saved or {})["incarnation"]), tokens, generation, True, peers, durability,
                        data_seq, joining, left)
    return Decision(identity, False, "the previous run stopped cleanly" if not (saved or {}).get("running")
                    else "the previous run's durability was sync")


def new_incarnation() -> str:
    return os.urandom(4).hex()


def path_in(data_dir: str) -> str:
    return os.path.join(data_dir, FILE_NAME)


def load(path: str) -> dict[str, Any] | None:
    """What `node.json` holds, None when there is none. Raises IdentityError when it cannot be read."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise IdentityError(f"{path} is not JSON ({e}); move it away to start this node as a new one") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("node_id"), str):
        raise IdentityError(f"{path} does not hold a node identity")
    return doc


def save(path: str, identity: Identity) -> None:
    """Durably replace `node.json` (blocking: call it in a thread)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_atomically(path, identity.to_json())
