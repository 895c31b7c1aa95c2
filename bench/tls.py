"""The cost of security: a 3-node cluster's put and get throughput and latency without TLS, with mutual TLS
between the nodes (and bearer tokens), and with HTTPS to clients as well — in one run, same load generator.

    python bench/tls.py [--duration 20] [--warmup 3] [--rounds 3] [--connections 64] [--value-size 1024]
                        [--keys 10000] [--out docs/benchmarks.md]

Each variant is a fresh `ringkv.local` cluster (RF 3, W 2, R 2, durability sync) on 127.0.0.1, started, loaded
(`put`, then `get` after every key was written once) and stopped before the next; only one runs at a time.
The variants are measured in `--rounds` interleaved rounds (each round in a rotated order: ABC, BCA, CAB...) and
the table gives each figure's median over the rounds, with the range of the throughputs: on a shared 2-core
machine one variant measured once after another drifts by more than TLS costs (two single runs put HTTPS at
0.74x and 1.09x plaintext for puts).

- plaintext:      `--insecure` (no TLS, no authentication): the reference.
- mTLS + tokens:  the cluster CA, mutual TLS on every internode connection, a bearer token on every request;
                  clients speak plain HTTP.
- + HTTPS:        the same, and clients speak HTTPS too (what `ringkv local up` does by default).

The table goes into `--out` between the markers `<!-- tls-bench -->` and `<!-- /tls-bench -->` (replaced on
each run, appended once if absent).
"""

from __future__ import annotations

import os
import sys

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = os.path.dirname(sys.path[0])

import argparse
import shlex
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.compare import log, machine, ms, ringkv_base_port
from ringkv import local
from ringkv.loadgen import driver
from ringkv.loadgen.plan import BenchPlan
from ringkv.loadgen.stats import RunResult

START, END = "<!-- tls-bench -->", "<!-- /tls-bench -->"


@dataclass(frozen=True)
class Variant:
    name: str
    secure: bool
    https: bool


VARIANTS = (Variant("plaintext", False, False), Variant("mTLS + tokens", True, False),
            Variant("mTLS + tokens + HTTPS", True, True))
WORKLOADS = {"put": 0.0, "get": 1.0}


def measure(variant: Variant, root: str, args: argparse.Namespace, taken: set[int]) -> dict[str, RunResult]:
    data_dir = tempfile.mkdtemp(prefix=variant.name.replace(" ", "").replace("+", "-") + "-", dir=root)
    base = ringkv_base_port(3, taken)
    log(f"{variant.name}: starting 3 nodes on ports {base}-{base + 2}")
    cluster = local.up(data_dir, nodes=3, base_port=base, replication=3, durability="sync",
                       extra_args=["--write-quorum", "2", "--read-quorum", "2", "--log-level", "warning"],
                       secure=variant.secure, https=variant.https)
    saved = {k: os.environ.get(k) for k in ("RINGKV_TOKEN_FILE", "RINGKV_CA_CERT", "RINGKV_TOKEN")}
    try:
        os.environ.pop("RINGKV_TOKEN", None)
        for name, value in cluster.env().items():  # the load generator reads its credentials from there
            if name != "RINGKV_URL":
                os.environ[name] = value
        out: dict[str, RunResult] = {}
        for workload, mix in WORKLOADS.items():
            plan = BenchPlan(target="ringkv", endpoints=tuple(n.url for n in cluster.nodes),
                             connections=args.connections, duration_s=args.duration, value_size=args.value_size,
                             mix=mix, keys=args.keys, distribution="uniform", warmup_s=args.warmup,
                             preload=mix > 0, workers=args.workers, seed=1)
            result = driver.run(plan, label=f"{variant.name} {workload}", show_progress=not args.quiet)
            if result.error_count:
                raise RuntimeError(f"{variant.name} {workload}: {result.error_count} errors")
            out[workload] = result
            log(f"{variant.name} {workload}: {result.ops_per_s:,.0f} ops/s, p99 {ms(result, 99):.2f} ms")
        return out
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
        local.down(data_dir)


Results = dict[str, list[dict[str, RunResult]]]  # variant -> one {workload: result} per round


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def table(results: Results) -> str:
    def rate(name: str, workload: str) -> float:
        return _median([r[workload].ops_per_s for r in results[name]])

    lines = ["| cluster | put/s (range) | put p50 | put p99 | get/s (range) | get p50 | get p99 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for variant in VARIANTS:
        rounds = results[variant.name]
        cells = []
        for w in WORKLOADS:
            rates = [r[w].ops_per_s for r in rounds]
            rel = "" if variant is VARIANTS[0] else f" **{rate(variant.name, w) / rate(VARIANTS[0].name, w):.2f}x**"
            spread = f" ({min(rates):,.0f}-{max(rates):,.0f})" if len(rates) > 1 else ""
            cells += [f"{_median(rates):,.0f}{rel}{spread}", f"{_median([ms(r[w], 50) for r in rounds]):.2f} ms",
                      f"{_median([ms(r[w], 99) for r in rounds]):.2f} ms"]
        lines.append(f"| {variant.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def document(results: Results, args: argparse.Namespace, command: str) -> str:
    return "\n".join([
        START, "## The cost of TLS", "",
        f"`{command}` — one run: a 3-node cluster (RF 3, W 2, R 2, durability sync) driven by `ringkv.loadgen` "
        f"({args.connections} connections, {args.value_size}-byte values, {args.keys:,} uniform keys, "
        f"{args.warmup:.0f} s warm-up then {args.duration:.0f} s per workload), each variant a fresh cluster, "
        f"measured in {args.rounds} interleaved rounds (rotated order). Figures are medians over the rounds "
        "(throughput ranges in parentheses); ratios are medians against plaintext's.", "",
        table(results), "",
        "Internode connections are persistent (one per peer pair and direction), so mutual TLS costs a "
        "handshake per connection and then symmetric encryption of each frame; the HTTPS variant adds the "
        "same to every client connection (the load generator keeps its connections alive).", "",
        "Machine: " + "; ".join(machine()), END])


def write(out: Path, text: str) -> None:
    old = out.read_text() if out.exists() else ""
    if START in old and END in old:
        new = old[:old.index(START)] + text + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    out.write_text(new)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every variant (medians reported)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--value-size", type=int, default=1024)
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="the Markdown file to put the table in")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    root = tempfile.mkdtemp(prefix="ringkv-tls-")
    taken: set[int] = set()
    try:
        results: Results = {v.name: [] for v in VARIANTS}
        for i in range(args.rounds):
            for variant in VARIANTS[i % len(VARIANTS):] + VARIANTS[:i % len(VARIANTS)]:
                log(f"round {i + 1}/{args.rounds}: {variant.name}")
                results[variant.name].append(measure(variant, root, args, taken))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    command = "python bench/tls.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    text = document(results, args, command.strip())
    print(text)
    if args.out:
        write(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
