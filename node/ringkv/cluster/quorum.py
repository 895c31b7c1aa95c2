"""Quorum bookkeeping for one request: replies in, decision out; and which replicas a read asks. Pure.

A write needs W acknowledgements among the replicas asked (fallback replicas holding a hint count, as in
Dynamo's sloppy quorum); a read needs R replies, whose records are merged with `versions.merge`. Once
success is impossible (too many failures) the tally says so at once, so the coordinator answers 503
without waiting for the timeout.

A read asks R replicas, not all N (`read_plan`): this node first when it is one (no hop), then the others in
the order given (healthy first); the rest are spares, asked when an answer fails or is late (speculative
retry), as Cassandra does. R + W > N still makes the R asked meet every W that acknowledged. A sampled share of
reads (`read_repair_chance`) asks all N, so that read repair keeps reaching the replicas a read skips;
anti-entropy reaches the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ringkv.cluster import versions
from ringkv.cluster.ids import NodeId
from ringkv.cluster.versions import Record


@dataclass
class WriteTally:
    required: int
    asked: int
    acked: list[NodeId] = field(default_factory=list)
    failed: list[NodeId] = field(default_factory=list)

    def ack(self, node: NodeId) -> None:
        self.acked.append(node)

    def fail(self, node: NodeId) -> None:
        self.failed.append(node)

    @property
    def succeeded(self) -> bool:
        return len(self.acked) >= self.required

    @property
    def impossible(self) -> bool:
        return self.asked - len(self.failed) < self.required


@dataclass
class ReadTally:
    required: int
    asked: int
    replies: dict[NodeId, Record] = field(default_factory=dict)
    failed: list[NodeId] = field(default_factory=list)

    def reply(self, node: NodeId, record: Record) -> None:
        self.replies[node] = record

    def fail(self, node: NodeId) -> None:
        self.failed.append(node)

    @property
    def succeeded(self) -> bool:
        return len(self.replies) >= self.required

    @property
    def impossible(self) -> bool:
        return self.asked - len(self.failed) < self.required

    def merged(self) -> Record:
        result: Record | None = None
        for record in self.replies.values():
            result = record if result is None else versions.merge(result, record)  # equal replies: no work
        return versions.empty_record() if result is None else result

    def stale(self, merged: Record) -> list[NodeId]:
        """Replicas whose reply lacks something the merged record has (read repair targets)."""
        return [node for node, record in self.replies.items() if not versions.descends(record, merged)]


def read_plan(order: Sequence[NodeId], local: NodeId, required: int, everyone: bool) -> tuple[list[NodeId],
                                                                                          list[NodeId]]:
    """The replicas a read asks at once and its spares, in the order to ask them: `local` first when it is in
    `order`, then `order`'s. All of them at once when `everyone` or when `required` needs them all."""
    ranked = [local, *(n for n in order if n != local)] if local in order else list(order)
    if everyone or required >= len(ranked):
        return ranked, []
    return ranked[:required], ranked[required:]
