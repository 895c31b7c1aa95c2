"""Where a ringkv node's CPU goes under load: a local 3-node cluster (as `bench/compare.py` runs it), wrk on
every node, and py-spy sampling the nodes meanwhile.

    python bench/profile.py [--workload put|get|mixed] [--duration 20] [--rate 200] [--nodes n1]
                            [--out bench/results/profile-put] [--connections 11] [--keys 10000]

Writes, per profiled node, py-spy's collapsed stacks (`NODE.folded`: one line per distinct stack, `frame;frame;...
count`, what flamegraph.pl and speedscope read) and prints the functions with the most samples, self and
inclusive (a function counted once per sample however often it recurs), with the share of all samples. The
throughput and CPU µs per operation of the profiled run are printed too (py-spy's sampling costs the nodes a
few per cent; `--nonblocking` is used, so it does not pause them).

Needs wrk (apt-get install wrk) and py-spy (pip install py-spy); run as root or with ptrace allowed.
"""

from __future__ import annotations

import os
import sys

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = os.path.dirname(sys.path[0])

import argparse
import collections
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from bench import compare, cpu, wrk
from ringkv.loadgen import driver, keyspace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Profile:
    samples: int
    self_counts: collections.Counter[str]
    inclusive: collections.Counter[str]


def frame_name(frame: str) -> str:
    """`handle (ringkv/net/coordinator.py:412)` -> `handle (ringkv/net/coordinator.py)`: one entry per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/node/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})" if path else name


def read_folded(path: str) -> Profile:
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    samples = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            samples += n
            frames = [frame_name(fr) for fr in stack.split(";") if fr and not fr.startswith("process ")
                      and not fr.startswith("thread ")]
            if frames:
                self_counts[frames[-1]] += n
            for name in set(frames):
                inclusive[name] += n
    return Profile(samples, self_counts, inclusive)


def entry_points(path: str) -> tuple[int, collections.Counter[str]]:
    """The event-loop thread's samples by the callback the loop was running (the frame after `Runner.run`):
    an HTTP request (`RequestHandler._handle_request`), an internode request (`TransportServer._answer`),
    epoll and the loop itself (`(loop)`), ... Returns (main-thread samples, counts)."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            frames = [frame_name(fr) for fr in stack.split(";")]
            at = next((i for i, fr in enumerate(frames) if fr.startswith("Runner.run ")), None)
            if at is None:
                continue
            total += int(count)
            counts[frames[at + 1] if at + 1 < len(frames) else "(loop: epoll, uvloop)"] += int(count)
    return total, counts


def report(name: str, profile: Profile, top: int, path: str | None = None) -> str:
    lines = [f"== {name}: {profile.samples} samples", ""]
    if path is not None:
        total, counts = entry_points(path)
        lines += [f"event-loop thread by entry point ({total} samples):"]
        lines += [f"  {n / max(1, total):6.1%}  {fn}" for fn, n in counts.most_common(12)]
        lines += [""]
    lines += ["self:"]
    for fn, n in profile.self_counts.most_common(top):
        lines.append(f"  {n / profile.samples:6.1%}  {fn}")
    lines += ["", "inclusive:"]
    for fn, n in profile.inclusive.most_common(top):
        lines.append(f"  {n / profile.samples:6.1%}  {fn}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=list(compare.WORKLOADS), default="put")
    p.add_argument("--duration", type=float, default=20.0, help="profiled seconds (default 20)")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second (default 200)")
    p.add_argument("--nodes", default="n1", help="comma-separated nodes to profile (default n1)")
    p.add_argument("--connections", type=int, default=11, help="wrk connections per node (default 11)")
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--value-size", type=int, default=1024)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--all-threads", action="store_true",
                   help="sample every thread, not only the one holding the GIL (shows waits in fsync, epoll...)")
    p.add_argument("--out", default=None, help="directory for the collapsed stacks (default: a temporary one)")
    args = p.parse_args(argv)
    py_spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    wrk_binary = compare.ensure_binary("wrk", True)
    if not Path(py_spy).exists() or wrk_binary is None:
        print("needs py-spy (pip install py-spy) and wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    out = args.out or tempfile.mkdtemp(prefix="ringkv-profile-")
    os.makedirs(out, exist_ok=True)
    root = tempfile.mkdtemp(prefix="ringkv-profile-data-")
    cmp_args = compare.parse_args(["--connections", "32", "--keys", str(args.keys), "--value-size",
                                   str(args.value_size), "--quiet"])
    try:
        with compare.ringkv_cluster(root, set()) as system:
            mix = compare.WORKLOADS[args.workload]
            if mix > 0:
                driver.preload(compare._plan(system, cmp_args, 0.0, 1.0, 0.0, preload=True), show_progress=False)
            script = wrk.lua_script("ringkv", args.keys, keyspace.make_value(args.value_size), mix)
            if args.warmup > 0:
                wrk.run_wrk(wrk_binary, system.urls, script, args.connections, args.warmup)
            wanted = {n.strip() for n in args.nodes.split(",") if n.strip()}
            pids = {name: pid for pid, name in system.names.items() if name in wanted}
            result: dict[str, tuple[list[wrk.WrkResult], list[int]]] = {}

            def load() -> None:
                result["wrk"] = wrk.run_wrk(wrk_binary, system.urls, script, args.connections, args.duration + 2)

            loader = threading.Thread(target=load)
            before = cpu.sample(system.pids)
            loader.start()
            gil = [] if args.all_threads else ["--gil", "--nonblocking"]
            spies = [subprocess.Popen([py_spy, "record", *gil, "-r", str(args.rate), "-d",
                                       str(int(args.duration)), "-f", "raw", "-o", os.path.join(out, f"{name}.folded"),
                                       "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                     for name, pid in sorted(pids.items())]
            for spy in spies:
                spy.wait()
            loader.join()
            used = cpu.since(before)
            results, _ = result["wrk"]
            combined = wrk.combine(results)
            per_node = ", ".join(f"{system.names[pid]} {s * 1e6 / max(1, combined.ok):,.0f}"
                                 for pid, s in sorted(used.processes.items(), key=lambda kv: system.names[kv[0]]))
            print(f"{args.workload}: {combined.ops_per_s:,.0f} ops/s, {sum(combined.errors.values())} "
                  f"errors; CPU µs/op {used.total_s() * 1e6 / max(1, combined.ok):,.0f} ({per_node}); "
                  f"machine {used.machine_busy:.0%} busy (py-spy included)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for name in sorted(pids):
        path = os.path.join(out, f"{name}.folded")
        if Path(path).exists():
            text = report(name, read_folded(path), args.top, path)
            print(text)
            with open(os.path.join(out, f"{name}.txt"), "w") as f:
                f.write(text + "\n")
    print(f"collapsed stacks in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
