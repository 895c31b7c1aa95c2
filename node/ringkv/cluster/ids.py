"""Identifiers shared by the cluster policies.

`NodeId` names a physical node (stable across restarts; the gossip layer and the ring agree on it).
`Token` is a position on the ring: a signed 64-bit integer in [-2**63, 2**63 - 1], as produced by
`ringkv.cluster.ring.token_for`.
"""

from __future__ import annotations

from typing import NewType

NodeId = NewType("NodeId", str)
Token = NewType("Token", int)
