"""The nemesis soak (issue 10): several seeds, each a fresh 5-node cluster in network namespaces under
`ringkv check` and a seeded nemesis (partitions, isolation, kill -9 + restart, SIGSTOP pauses).

    python bench/faults.py [--seeds 5] [--first-seed 1 | --seed-list 3,17] [--duration 150] [--nodes 5]
                           [--clients 10] [--out DIR]
    python bench/faults.py --churn ...                         # also decommission + wipe + rejoin (streaming)
    python bench/faults.py --replay RUN_DIR/schedule.json      # one saved run again
    make faults                                                 # 5 seeds x 150 s

Needs root (namespaces, iptables); traffic stays on the bench's own bridge (see tests/faults/netns.py). Prints a
row per seed as it finishes, then a Markdown table (acked, lost, indeterminate, phantoms, unverified,
availability overall / during faults / to the healthy nodes while one node is paused or isolated, p99 of
those requests, the healthy figures), also written to OUT/summary.md and OUT/summary.json. Every run keeps its
directory OUT/seed-N (node logs, schedule.json, report.json). Exit code 1 if any run lost an acknowledged
write, showed a phantom or could not verify a key; 2 if namespaces cannot be made here.
"""

from __future__ import annotations

import os
import sys

# Run as `python bench/faults.py`, Python puts bench/ first on sys.path: put the repository root there instead
# (as `python -m bench.faults` would), so `tests.faults` imports.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = os.path.dirname(sys.path[0])

import argparse
import json
import time
from pathlib import Path
from typing import Any

from tests.faults import harness, nemesis, netns

COLUMNS = ("seed", "acked", "lost", "indeterminate", "phantoms", "unverified", "availability", "during faults",
           "to healthy nodes, 1 sick", "p99 to healthy (ms)", "healthy", "p99 healthy (ms)")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def row(result: harness.RunResult) -> dict[str, Any]:
    c = result.counts()
    f = result.figures
    single = f["to_healthy_nodes_single_fault"]
    return {
        "seed": result.seed, **c,
        "availability": f["overall"]["ratio"], "during_faults": f["during_faults"]["ratio"],
        "to_healthy_single": single["ratio"], "to_healthy_single_p99_ms": single["p99_ms"],
        "to_healthy_single_ok_per_s": single["ok_per_s"], "single_events": single["events"],
        "healthy": f["healthy"]["ratio"], "healthy_p99_ms": f["healthy"]["p99_ms"],
        "healthy_ok_per_s": f["healthy"]["ok_per_s"], "ok": result.ok, "run_dir": str(result.run_dir),
        "unexpected_exits": result.unexpected_exits,
    }


def cells(r: dict[str, Any]) -> list[str]:
    return [str(r["seed"]), f"{r['acked']:,}", str(r["lost"]), f"{r['indeterminate']:,}", str(r["phantoms"]),
            str(r["unverified"]), _pct(r["availability"]), _pct(r["during_faults"]), _pct(r["to_healthy_single"]),
            f"{r['to_healthy_single_p99_ms']:.0f}", _pct(r["healthy"]), f"{r['healthy_p99_ms']:.0f}"]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---:" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    if rows:
        total = {k: sum(r[k] for r in rows) for k in ("acked", "lost", "indeterminate", "phantoms", "unverified")}
        lines.append(f"| **all {len(rows)}** | {total['acked']:,} | {total['lost']} | {total['indeterminate']:,} | "
                     f"{total['phantoms']} | {total['unverified']} | | | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="how many seeds (default 5)")
    p.add_argument("--first-seed", type=int, default=1, help="seeds are FIRST..FIRST+N-1 (default 1)")
    p.add_argument("--seed-list", default="", help="comma-separated seeds instead (e.g. a failing one)")
    p.add_argument("--duration", type=float, default=150.0, help="seconds of workload per seed (default 150)")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--clients", type=int, default=10, help="clients per workload (default 10)")
    p.add_argument("--settle", type=float, default=harness.DEFAULT_SETTLE_S, help="settle and read-back bound")
    p.add_argument("--out", type=Path, default=None, help="where the runs go (default /tmp/ringkv-faults-TIME)")
    p.add_argument("--churn", action="store_true",
                   help="also topology churn: decommission a node, wipe it, rejoin it (streams both ways)")
    p.add_argument("--replay", type=Path, default=None, help="run a saved RUN_DIR/schedule.json again")
    p.add_argument("--secure", action="store_true",
                   help="nodes with certificates: mutual TLS between them, an admin token for every request")
    args = p.parse_args(argv)
    out: Path = args.out or Path(f"/tmp/ringkv-faults-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.replay is not None:
        try:
            return harness.replay(args.replay, out / "replay")
        except netns.Unavailable as e:
            print(f"cannot build network namespaces here: {e}", file=sys.stderr)
            return 2
    seeds = ([int(s) for s in args.seed_list.split(",") if s.strip()] if args.seed_list
             else list(range(args.first_seed, args.first_seed + args.seeds)))
    out.mkdir(parents=True, exist_ok=True)
    print(f"nemesis soak: seeds {seeds}, {args.nodes} nodes, {args.duration:.0f}s each; runs in {out}", flush=True)
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for seed in seeds:
        try:
            result = harness.run(seed, out / f"seed-{seed}", nodes=args.nodes, duration_s=args.duration,
                                 clients=args.clients, settle_s=args.settle,
                                 echo=lambda line: print(line, flush=True),
                                 kinds=nemesis.WITH_CHURN if args.churn else nemesis.KINDS, secure=args.secure)
        except netns.Unavailable as e:
            print(f"cannot build network namespaces here: {e}", file=sys.stderr)
            return 2
        print(result.table, flush=True)
        rows.append(row(result))
        r = rows[-1]
        print(f"seed {seed}: acked {r['acked']:,} lost {r['lost']} indeterminate {r['indeterminate']:,} phantoms "
              f"{r['phantoms']} unverified {r['unverified']} | availability {_pct(r['availability'])}, during faults "
              f"{_pct(r['during_faults'])}, to healthy nodes with one sick {_pct(r['to_healthy_single'])} (p99 "
              f"{r['to_healthy_single_p99_ms']:.0f} ms) | {'ok' if r['ok'] else 'FAIL'} | {r['run_dir']}\n",
              flush=True)
    table = markdown(rows)
    (out / "summary.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps({"seeds": seeds, "nodes": args.nodes, "duration_s": args.duration,
                                                  "clients": args.clients, "rows": rows,
                                                  "wall_s": round(time.monotonic() - started, 1)}, indent=2) + "\n")
    print(f"## nemesis soak: {len(rows)} seeds x {args.duration:.0f}s, {args.nodes} nodes "
          f"({time.monotonic() - started:.0f}s wall)\n")
    print(table)
    print("\n'to healthy nodes, 1 sick': requests sent to the nodes that were not paused/isolated while one was "
          "(p99 over all of them, failures included); 'healthy': requests while no fault was on.")
    print(f"runs kept in {out}")
    crashed = {r["seed"]: r["unexpected_exits"] for r in rows if r["unexpected_exits"]}
    if crashed:
        print(f"nodes exited by themselves (not killed by the nemesis): {crashed}")
    failed = [r["seed"] for r in rows if not r["ok"]]
    if failed:
        print(f"FAIL: seeds {failed} lost acknowledged writes, showed phantoms or left keys unverified")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
