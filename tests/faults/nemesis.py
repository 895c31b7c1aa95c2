"""The seeded nemesis: a schedule of faults (pure, from `random.Random(seed)`), and its execution on a
`NetCluster` while `ringkv check` runs.

Kinds, cycled (each cycle of five in a seeded order):

- `partition`: the nodes split into two random halves (2 | 3 of 5). Inside every namespace, iptables drops
  traffic from and to each node of the other half (`iptables -A INPUT -s PEER -j DROP`, `-A OUTPUT -d PEER`);
  healing deletes exactly the rules added (each namespace holds no other rule; it is checked empty after).
- `isolate`: one node cannot talk to any of its peers (rules in its namespace only); clients, in the root
  namespace (10.77.X.254), still reach it.
- `kill`: kill -9 one node; at the end of the event restart it on the same data and wait until it is ready.
- `pause`: SIGSTOP one node; SIGCONT at the end.
- `stop`: SIGTERM one node, a graceful stop (it announces its shutdown by gossip and drains for
  `--drain-delay-s`); it must exit 0; at the end of the event restart it on the same data.
- `churn` (only with `kinds=WITH_CHURN`, `bench/faults.py --churn`): decommission one node (it streams its
  ranges to their new owners and exits), then wipe it and start it again as a new member: it waits its turn,
  takes new tokens and streams before it is ready. Writes meanwhile go to pending replicas too; the checker
  must still find every acknowledged write. It lasts as long as it takes (planned `CHURN_S`).

Each event lasts 3-8 s, with 2-4 s of health between events, a healthy lead before the first and a tail
before the workload stops (so the settle phase and the final reads see a healed cluster). Every start and end
is noted with `Runner.event` (the history's time base) and kept in `records`. `windows()` gives the fault
windows, `sick_windows()` which node was sick when (isolate, pause, kill), for the availability of requests
sent to the other nodes. The schedule, the seed and what actually happened go to RUN_DIR/schedule.json:

    python -m tests.faults.nemesis replay RUN_DIR/schedule.json [--run-dir DIR]

runs the same schedule (and the same checker seed) on a fresh cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.faults import netns
from tests.faults.cluster import NetCluster, NetNode

KINDS = ("partition", "isolate", "kill", "pause", "stop")
WITH_CHURN = (*KINDS, "churn")
SINGLE_NODE = ("isolate", "pause", "kill", "stop", "churn")  # kinds with one sick node
CHURN_S = 40.0  # planned for a churn event (decommission + rejoin with streaming, at 0.5 s gossip)
CHURN_LEFT_TIMEOUT_S = 90.0
CHURN_JOIN_TIMEOUT_S = 120.0
EVENT_S = (3.0, 8.0)
GAP_S = (2.0, 4.0)
LEAD_S = 3.0  # health before the first event
TAIL_S = 4.0  # health before the workload ends
RESTART_TIMEOUT_S = 30.0
SCHEDULE_VERSION = 1


@dataclass(frozen=True)
class Planned:
    kind: str
    at_s: float  # planned start, seconds into the workload
    duration_s: float
    nodes: tuple[int, ...]  # the victim (one index), or a partition's first half
    other: tuple[int, ...] = ()  # a partition's second half

    def describe(self, names: Sequence[str]) -> str:
        a = " ".join(names[i] for i in self.nodes)
        if self.kind == "partition":
            return f"partition [{a}] | [{' '.join(names[i] for i in self.other)}]"
        return f"{self.kind} {a}"


def schedule(seed: int, nodes: int, duration_s: float, lead_s: float = LEAD_S, tail_s: float = TAIL_S,
             kinds: Sequence[str] = KINDS) -> list[Planned]:
    """The events of one run: a pure function of its arguments."""
    rng = random.Random(seed)
    out: list[Planned] = []
    cycle: list[str] = []
    t = lead_s
    for _ in range(10_000):
        if not cycle:
            cycle = list(kinds)
            rng.shuffle(cycle)
        kind = cycle.pop(0)
        length = CHURN_S if kind == "churn" else round(rng.uniform(*EVENT_S), 2)
        gap = round(rng.uniform(*GAP_S), 2)
        order = list(range(nodes))
        rng.shuffle(order)
        if t + length > duration_s - tail_s:
            break
        if kind == "partition":
            half = nodes // 2
            out.append(Planned(kind, round(t, 2), length, tuple(sorted(order[:half])), tuple(sorted(order[half:]))))
        else:
            out.append(Planned(kind, round(t, 2), length, (order[0],)))
        t += length + gap
    return out


@dataclass
class Record:
    kind: str
    description: str
    planned_at_s: float
    planned_duration_s: float
    nodes: list[str]
    other: list[str]
    start_s: float = 0.0
    end_s: float | None = None  # None while the fault is on
    sick: str | None = None  # the one sick node (single-node kinds)
    sick_url: str | None = None
    note: str = ""


@dataclass
class Nemesis:
    cluster: NetCluster
    events: list[Planned]
    seed: int
    now: Callable[[], float] = time.monotonic
    note: Callable[[str], None] = lambda text: None
    until_s: float | None = None  # no event may still be on after this (the end of the workload)
    records: list[Record] = field(default_factory=list)
    rules: dict[int, list[list[str]]] = field(default_factory=dict)  # namespace index -> iptables rules added
    stopped: str = ""  # how the last `stop` event's SIGTERM ended

    # -- the faults (blocking; run in a thread) ---------------------------------------------------------------

    def _iptables(self, i: int, *args: str) -> None:
        netns.run(self.cluster.net.exec_argv(i, ["iptables", "-w", "5", *args]))

    def _drop(self, i: int, peers: Sequence[int]) -> None:
        addrs = ",".join(self.cluster.net.addr(p) for p in peers)
        for rule in (["INPUT", "-s", addrs, "-j", "DROP"], ["OUTPUT", "-d", addrs, "-j", "DROP"]):
            self._iptables(i, "-A", *rule)
            self.rules.setdefault(i, []).append(rule)

    def heal_network(self) -> None:
        """Delete every rule added, then check each namespace's filter table holds nothing else (flush if so)."""
        for i, rules in list(self.rules.items()):
            for rule in reversed(rules):
                with contextlib.suppress(Exception):
                    self._iptables(i, "-D", *rule)
            del self.rules[i]
        for i in range(self.cluster.net.size):
            listing = netns.run(self.cluster.net.exec_argv(i, ["iptables", "-w", "5", "-S"]), check=False).stdout
            if any(line.startswith("-A ") for line in listing.splitlines()):
                self._iptables(i, "-F")

    def _begin(self, event: Planned) -> None:
        nodes = self.cluster.nodes
        if event.kind == "partition":
            for i in event.nodes:
                self._drop(i, event.other)
            for i in event.other:
                self._drop(i, event.nodes)
        elif event.kind == "isolate":
            victim = event.nodes[0]
            self._drop(victim, [i for i in range(len(nodes)) if i != victim])
        elif event.kind == "kill":
            self.cluster.kill9(nodes[event.nodes[0]])
        elif event.kind == "pause":
            self.cluster.pause(nodes[event.nodes[0]])
        elif event.kind == "stop":
            self.stopped = self.cluster.terminate(nodes[event.nodes[0]])
        elif event.kind == "churn":
            status = self.cluster.decommission(nodes[event.nodes[0]])
            if status != 202:
                raise RuntimeError(f"decommission of {nodes[event.nodes[0]].node_id} answered {status}")
        else:
            raise ValueError(f"unknown nemesis event {event.kind!r}")

    def _end(self, event: Planned) -> str:
        node = self.cluster.nodes[event.nodes[0]]
        if event.kind in ("partition", "isolate"):
            self.heal_network()
            return "healed"
        if event.kind == "kill":
            return self._restart(node)
        if event.kind == "stop":
            return f"{self.stopped}; {self._restart(node)}"
        if event.kind == "pause":
            self.cluster.resume(node)
            return "resumed"
        if event.kind == "churn":
            try:
                return self.cluster.rejoin(node, CHURN_LEFT_TIMEOUT_S, CHURN_JOIN_TIMEOUT_S)
            except (TimeoutError, RuntimeError) as e:
                return f"rejoin NOT ready: {e}"
        raise ValueError(event.kind)

    def _restart(self, node: NetNode) -> str:
        start = time.monotonic()
        self.cluster.start(node)
        try:
            self.cluster.wait_ready([node], timeout_s=RESTART_TIMEOUT_S)
        except (TimeoutError, RuntimeError) as e:
            return f"restarted, NOT ready: {e}"
        return f"restarted, ready in {time.monotonic() - start:.2f}s"

    def heal_all(self, restart: bool = True) -> list[str]:
        """Undo whatever is still on: rules, paused nodes, killed nodes (unless not `restart`: the run was
        cancelled and the cluster is about to go). Returns what it did."""
        did = []
        if self.rules:
            did.append("network healed")
        self.heal_network()
        for node in self.cluster.nodes:
            if node.paused:
                self.cluster.resume(node)
                did.append(f"{node.node_id} resumed")
            if restart and not node.running():
                crash = self.cluster.note_exit(node)
                why = f" (it had exited by itself: {crash})" if crash else ""
                did.append(f"{node.node_id} {self._restart(node)}{why}")
        return did

    # -- the schedule -----------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Execute the schedule: wait for each planned start (never sooner than the minimum gap after the end
        of the previous event), begin, wait its duration, end. Whatever happens, heal everything at the end."""
        names = [n.node_id for n in self.cluster.nodes]
        previous_end: float | None = None
        cancelled = False
        try:
            for event in self.events:
                at = event.at_s if previous_end is None else max(event.at_s, previous_end + GAP_S[0])
                if self.until_s is not None and at + event.duration_s > self.until_s:
                    self.note(f"nemesis skips {event.describe(names)}: earlier events overran")
                    continue
                await asyncio.sleep(max(0.0, at - self.now()))
                single = event.kind in SINGLE_NODE
                victim = self.cluster.nodes[event.nodes[0]] if single else None
                record = Record(event.kind, event.describe(names), event.at_s, event.duration_s,
                                [names[i] for i in event.nodes], [names[i] for i in event.other],
                                sick=victim.node_id if victim else None, sick_url=victim.url if victim else None)
                record.start_s = self.now()
                self.records.append(record)
                self.note(f"nemesis start {record.description}")
                await asyncio.to_thread(self._begin, event)
                if event.kind != "churn":  # a churn ends when the node has left and rejoined, not by the clock
                    await asyncio.sleep(max(0.0, record.start_s + event.duration_s - self.now()))
                record.note = await asyncio.to_thread(self._end, event)
                record.end_s = previous_end = self.now()
                self.note(f"nemesis end {record.description}: {record.note}")
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            did = await asyncio.shield(asyncio.to_thread(self.heal_all, not cancelled))
            for record in self.records:
                if record.end_s is None:
                    record.end_s = self.now()
                    record.note = "ended by heal-all"
            if did:
                self.note(f"nemesis heal-all: {', '.join(did)}")

    # -- what happened ----------------------------------------------------------------------------------------

    def windows(self) -> list[tuple[float, float]]:
        """[start, end) of every fault (an event still on ends now)."""
        return [(r.start_s, r.end_s if r.end_s is not None else self.now()) for r in self.records]

    def sick_windows(self, kinds: Sequence[str] = SINGLE_NODE) -> list[tuple[float, float, str, str, str]]:
        """(start, end, kind, sick node id, its URL) of every single-node fault of `kinds`."""
        return [(s, e, r.kind, r.sick, r.sick_url) for (s, e), r in zip(self.windows(), self.records, strict=True)
                if r.kind in kinds and r.sick and r.sick_url]

    def to_json(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "version": SCHEDULE_VERSION, "seed": self.seed, "nodes": self.cluster.net.size,
            "node_urls": {n.node_id: n.url for n in self.cluster.nodes},
            "planned": [asdict(e) for e in self.events],
            "executed": [asdict(r) for r in self.records],
            **(extra or {}),
        }

    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(extra), indent=2) + "\n")
        tmp.replace(path)


def load_schedule(path: Path) -> tuple[dict[str, Any], list[Planned]]:
    """The saved document and its planned events."""
    doc: dict[str, Any] = json.loads(path.read_text())
    if doc.get("version") != SCHEDULE_VERSION:
        raise ValueError(f"{path}: schedule version {doc.get('version')!r}, expected {SCHEDULE_VERSION}")
    events = [Planned(e["kind"], float(e["at_s"]), float(e["duration_s"]), tuple(e["nodes"]), tuple(e["other"]))
              for e in doc["planned"]]
    return doc, events


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.nemesis")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("replay", help="run a saved schedule (RUN_DIR/schedule.json) again on a fresh cluster")
    p.add_argument("schedule", type=Path)
    p.add_argument("--run-dir", type=Path, default=None, help="where the new run goes (default: a new temp dir)")
    p = sub.add_parser("show", help="print the schedule a seed gives")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--duration", type=float, default=55.0)
    args = parser.parse_args(argv)
    if args.command == "show":
        names = [f"n{i + 1}" for i in range(args.nodes)]
        for e in schedule(args.seed, args.nodes, args.duration):
            print(f"{e.at_s:7.2f}s  {e.duration_s:5.2f}s  {e.describe(names)}")
        return 0
    from tests.faults import harness  # the harness imports this module

    return harness.replay(args.schedule, args.run_dir)


if __name__ == "__main__":
    sys.exit(main())
