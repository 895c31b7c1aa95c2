"""One nemesis run: namespaces up, a cluster in them, `ringkv check` and the nemesis together, the verdict.

    result = harness.run(seed=1, run_dir=Path("/tmp/x"), nodes=5, duration_s=55)
    result.ok, result.table, result.figures        # report.ok; report.table(); the availability figures

RUN_DIR keeps everything a failing run needs to be understood and replayed:

- `schedule.json`: seed, the planned events, what was executed when (written before the run starts, and
  again at the end); `python -m tests.faults.nemesis replay RUN_DIR/schedule.json` runs it again;
- `report.json`: `report.to_json` plus the seed, the nemesis events, the availability figures, crashes;
- `history.jsonl.gz`: every request (where, when, how it ended), the events, the final reads;
- `table.txt`: the checker's table and the figures; `logs/n*.log`: every node's output; `nodes/n*/`: data.

Availability figures (`figures`), over the history's requests (reads and writes; a request counts where it
was sent, `op.node`, and when it started, `op.start_s`):

- `overall`, `during_faults`, `healthy` (no fault on);
- `to_healthy_nodes_single_fault`: requests sent to a node that was NOT the sick one while one node was
  paused or isolated (the issue's "requests sent to the other four": target >= 99%, p99 < 500 ms, not asserted
  here), and the same per kind (`isolate`, `pause`, `kill`), and `to_sick_node`;
- each with requests, succeeded, ratio, throughput (requests/s of the period), p50/p99 latency of all the
  requests (failures included, at the time they failed), p99 of the successful ones, and the HTTP statuses.

Throughput while a node is paused or isolated mostly measures the workload's closed loop: each client waits out
its 5 s timeout on the sick node, so few requests reach the others. Their ratio and p99 are the figures to read.

`unexpected_exits` (report.json, and the table): nodes whose process ended without the nemesis killing it —
crashes, printed and saved, not asserted.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ringkv.check import report as report_mod
from ringkv.check.analysis import Report, percentile
from ringkv.check.cli import check
from ringkv.check.history import History, Op, Outcome
from ringkv.check.workload import CheckPlan, Runner
from tests.faults import nemesis, netns
from tests.faults.cluster import NetCluster

DEFAULT_SETTLE_S = 30.0
START_TIMEOUT_S = 60.0
SINGLE_TARGET_KINDS = ("isolate", "pause")  # the "one of five paused or isolated"


@dataclass
class RunResult:
    seed: int
    run_dir: Path
    report: Report
    figures: dict[str, Any]
    events: list[dict[str, Any]]
    table: str
    unexpected_exits: dict[str, list[str]]  # node id -> exits nobody asked for (crashes): printed, not asserted

    @property
    def ok(self) -> bool:
        return self.report.ok

    @property
    def schedule_path(self) -> Path:
        return self.run_dir / "schedule.json"

    @property
    def report_path(self) -> Path:
        return self.run_dir / "report.json"

    def counts(self) -> dict[str, int]:
        """Totals over the workloads: acked, lost, indeterminate, phantoms, unverified."""
        v = self.report.verdicts
        return {"acked": sum(x.acknowledged for x in v), "lost": sum(len(x.lost) for x in v),
                "indeterminate": sum(x.indeterminate for x in v), "phantoms": sum(len(x.phantoms) for x in v),
                "unverified": sum(x.unverified for x in v)}


# -- figures ------------------------------------------------------------------------------------------------


def _inside(t: float, windows: Iterable[tuple[float, float]]) -> bool:
    return any(a <= t < b for a, b in windows)


def summarize(ops: Sequence[Op], seconds: float) -> dict[str, Any]:
    every = sorted(op.latency_s * 1000 for op in ops)
    good = sorted(op.latency_s * 1000 for op in ops if op.outcome is Outcome.OK)
    succeeded = len(good)
    return {
        "requests": len(ops), "succeeded": succeeded,
        "ratio": round(succeeded / len(ops), 5) if ops else None,
        "seconds": round(seconds, 2), "per_s": round(len(ops) / seconds, 1) if seconds > 0 else None,
        "ok_per_s": round(succeeded / seconds, 1) if seconds > 0 else None,
        "p50_ms": round(percentile(every, 50), 1), "p99_ms": round(percentile(every, 99), 1),
        "p99_ok_ms": round(percentile(good, 99), 1),
        "statuses": {str(k): v for k, v in sorted(Counter(op.status for op in ops).items())},  # 0: no answer
    }


def figures(ops: Sequence[Op], nem: nemesis.Nemesis, duration_s: float) -> dict[str, Any]:
    work = [op for op in ops if op.client >= 0 and op.start_s < duration_s]
    windows = nem.windows()
    fault_s = sum(min(b, duration_s) - a for a, b in windows if a < duration_s)
    out: dict[str, Any] = {
        "overall": summarize(work, duration_s),
        "during_faults": summarize([op for op in work if _inside(op.start_s, windows)], fault_s),
        "healthy": summarize([op for op in work if not _inside(op.start_s, windows)], duration_s - fault_s),
    }

    def to_healthy(kinds: Sequence[str]) -> dict[str, Any]:
        sick = nem.sick_windows(kinds)
        chosen = [op for op in work for a, b, _, _, url in sick if a <= op.start_s < b and op.node != url]
        return summarize(chosen, sum(b - a for a, b, *_ in sick)) | {"events": len(sick)}

    out["to_healthy_nodes_single_fault"] = to_healthy(SINGLE_TARGET_KINDS)
    out["to_healthy_nodes_by_kind"] = {kind: to_healthy((kind,)) for kind in nemesis.SINGLE_NODE}
    sick = nem.sick_windows()
    out["to_sick_node"] = summarize(
        [op for op in work for a, b, _, _, url in sick if a <= op.start_s < b and op.node == url],
        sum(b - a for a, b, *_ in sick))
    return out


def _fmt(f: dict[str, Any]) -> str:
    if not f["requests"]:
        return "no requests"
    ratio = "n/a" if f["ratio"] is None else f"{f['ratio']:.2%}"
    rate = "" if f["per_s"] is None else f", {f['ok_per_s']:.0f} ok/s"
    return (f"{ratio} of {f['requests']:,}{rate}, p50 {f['p50_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms "
            f"(successful: p99 {f['p99_ok_ms']:.0f} ms)")


def figures_text(fig: dict[str, Any]) -> str:
    lines = ["availability (all requests, failures timed when they failed):"]
    lines.append(f"  healthy periods:                     {_fmt(fig['healthy'])}")
    lines.append(f"  during faults:                       {_fmt(fig['during_faults'])}")
    single = fig["to_healthy_nodes_single_fault"]
    lines.append(f"  to healthy nodes, 1 node paused/isolated ({single['events']} events): {_fmt(single)}")
    lines.append(f"      HTTP statuses (0: no answer): {single['statuses']}")
    for kind, f in fig["to_healthy_nodes_by_kind"].items():
        lines.append(f"    {kind:<8} ({f['events']} events):          {_fmt(f)}")
    lines.append(f"  to the sick node itself:             {_fmt(fig['to_sick_node'])}")
    lines.append(f"      HTTP statuses (0: no answer): {fig['to_sick_node']['statuses']}")
    return "\n".join(lines)


def save_history(history: History, path: Path) -> None:
    """Every request (one JSON object a line), then the events and the final reads: for a post-mortem."""
    with gzip.open(path, "wt") as f:
        for op in history.ops:
            f.write(json.dumps({"client": op.client, "kind": op.kind.value, "key": op.key, "element": op.element,
                                "start_s": round(op.start_s, 4), "end_s": round(op.end_s, 4),
                                "outcome": op.outcome.value, "node": op.node, "status": op.status,
                                "seen": len(op.seen), "siblings": op.siblings}) + "\n")
        for t, text in history.events:
            f.write(json.dumps({"event": text, "at_s": round(t, 4)}) + "\n")
        for key, elements in sorted(history.final.items()):
            f.write(json.dumps({"final": key, "elements": sorted(elements)}) + "\n")
        for key in sorted(history.final_unreadable):
            f.write(json.dumps({"final": key, "unreadable": True}) + "\n")


# -- one run ------------------------------------------------------------------------------------------------


async def _exercise(plan: CheckPlan, cluster: NetCluster, nem: nemesis.Nemesis, runner: Runner,
                    echo: Callable[[str], None]) -> Report:
    last_tick = [-10.0]

    def progress(r: Runner, final: bool) -> None:
        if final or r.now() - last_tick[0] >= 10.0:
            last_tick[0] = r.now()
            c = r.counters
            echo(f"  [{r.now():6.1f}s] {c.phase:<18} ok {c.ok:,}  failed {c.fail:,}  indeterminate {c.info:,}")

    async def faults() -> None:
        for _ in range(200):  # the runner's clock starts with its first request: wait for it (bounded, 10 s)
            if runner.history.ops:
                break
            await asyncio.sleep(0.05)
        await nem.run()

    checking = asyncio.create_task(check(plan, runner, fault_windows=nem.windows, progress=progress))
    faulting = asyncio.create_task(faults())
    try:
        async with asyncio.timeout(plan.duration_s + plan.settle_s + 90.0):
            await asyncio.wait({checking, faulting}, return_when=asyncio.FIRST_EXCEPTION)
            if faulting.done() and faulting.exception() is not None:
                checking.cancel()
                raise RuntimeError("the nemesis failed") from faulting.exception()
            result = await checking
            await faulting
            return result
    finally:
        for task in (checking, faulting):
            if not task.done():
                task.cancel()
        await asyncio.gather(checking, faulting, return_exceptions=True)


def run(seed: int, run_dir: Path, nodes: int = 5, duration_s: float = 55.0, clients: int = 10,
        settle_s: float = DEFAULT_SETTLE_S, events: list[nemesis.Planned] | None = None,
        echo: Callable[[str], None] = print, kinds: Sequence[str] = nemesis.KINDS, secure: bool = False) -> RunResult:
    """One run. Raises `netns.Unavailable` when namespaces cannot be made here; any other error is raised
    with the run directory named (where the schedule and the node logs are)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    planned = events if events is not None else nemesis.schedule(seed, nodes, duration_s, kinds=kinds)
    params = {"duration_s": duration_s, "clients": clients, "settle_s": settle_s, "run_dir": str(run_dir)}
    echo(f"fault run: seed {seed}, {nodes} nodes, {duration_s:.0f}s of workload, {len(planned)} events; "
         f"run dir {run_dir}")
    with netns.network(nodes) as net:
        cluster = NetCluster(net, run_dir, secure=secure)
        if cluster.token:  # the workload's clients read their token from the environment (security/credentials)
            os.environ["RINGKV_TOKEN"] = cluster.token
        nem: nemesis.Nemesis | None = None
        try:
            cluster.start_all()
            cluster.wait_ready(timeout_s=START_TIMEOUT_S)
            cluster.wait_converged(timeout_s=START_TIMEOUT_S)
            plan = CheckPlan(urls=cluster.urls, duration_s=duration_s, clients=clients, settle_s=settle_s,
                             seed=seed, prefix=f"faults-{seed}-{int(time.time())}")
            runner = Runner(plan, on_event=lambda text: echo(f"  [{runner.now():6.1f}s] {text}"))
            nem = nemesis.Nemesis(cluster, planned, seed, now=runner.now, note=runner.event,
                                  until_s=duration_s - 1.0)
            nem.save(run_dir / "schedule.json", params)
            result = asyncio.run(_exercise(plan, cluster, nem, runner, echo))
            exits = cluster.unexpected_exits()
        except netns.Unavailable:
            raise
        except Exception as e:
            tails = "\n".join(f"--- {n.node_id} ({n.log_path}) ---\n{cluster.log_tail(n, 20)}" for n in cluster.nodes)
            raise RuntimeError(f"fault run seed {seed} failed: {e!r}; run dir kept: {run_dir}\n{tails}") from e
        finally:
            if nem is not None:
                nem.save(run_dir / "schedule.json", params)
            cluster.stop_all()
    fig = figures(runner.history.ops, nem, duration_s)
    events_doc = [{"at_s": round(t, 3), "event": text} for t, text in runner.history.events]
    doc = report_mod.to_json(result) | {"seed": seed, "run_dir": str(run_dir), "figures": fig, "events": events_doc,
                                        "nemesis": nem.to_json()["executed"], "params": params,
                                        "unexpected_exits": exits}
    (run_dir / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
    save_history(runner.history, run_dir / "history.jsonl.gz")
    table = report_mod.table(result) + "\n\n" + figures_text(fig)
    if exits:
        table += "\n\nNODES THAT EXITED BY THEMSELVES (not killed by the nemesis): " + json.dumps(exits)
    (run_dir / "table.txt").write_text(table + "\n")
    return RunResult(seed, run_dir, result, fig, events_doc, table, exits)


def replay(schedule_path: Path, run_dir: Path | None = None) -> int:
    doc, events = nemesis.load_schedule(schedule_path)
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix=f"ringkv-replay-{doc['seed']}-"))
    result = run(int(doc["seed"]), run_dir, nodes=int(doc["nodes"]), duration_s=float(doc["duration_s"]),
                 clients=int(doc["clients"]), settle_s=float(doc["settle_s"]), events=events)
    print(result.table)
    print(f"run dir: {run_dir}")
    return 0 if result.ok else 1
