"""`ringkv bench`: its argument parser (attached to the `ringkv` command by `ringkv.cli`) and its entry point.

Importing this module is cheap (argparse only): the load generator is imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys

from ringkv.loadgen.plan import DISTRIBUTIONS, TARGETS, BenchPlan

EPILOG = """examples:
  ringkv bench --url http://127.0.0.1:8080,http://127.0.0.1:8081 --mix 0 --duration 30
  ringkv bench --target etcd --url http://127.0.0.1:2379 --mix 1 --preload --keys 10000
  ringkv bench --target redis --url redis://127.0.0.1:6379 --ops 100000 --distribution zipfian --json
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="load generator: throughput and latency percentiles of ringkv, etcd or Redis",
                       description="Closed-loop load generator: CONNECTIONS clients, each with one request in flight.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", choices=TARGETS, default="ringkv", help="what to load (default ringkv)")
    p.add_argument("--url", "--endpoints", dest="url", default="",
                   help="comma-separated endpoints, used in turn (default: ringkv http://127.0.0.1:8080, "
                        "etcd http://127.0.0.1:2379, redis redis://127.0.0.1:6379)")
    p.add_argument("--connections", type=int, default=64, help="concurrent requests (default 64)")
    bound = p.add_mutually_exclusive_group()
    bound.add_argument("--duration", type=float, default=None, help="measured seconds (default 10)")
    bound.add_argument("--ops", type=int, default=None, help="measured operations instead of a duration")
    p.add_argument("--value-size", type=int, default=1024, help="bytes per value (default 1024)")
    p.add_argument("--mix", type=float, default=0.5, help="fraction of reads: 0 = all puts, 1 = all gets (0.5)")
    p.add_argument("--keys", type=int, default=10_000, help="size of the key space (default 10000)")
    p.add_argument("--distribution", choices=DISTRIBUTIONS, default="uniform")
    p.add_argument("--zipf-theta", type=float, default=0.99, help="zipfian skew (default 0.99, as YCSB)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unrecorded load first (default 2)")
    p.add_argument("--preload", action="store_true", help="write every key once before the run, so reads hit")
    p.add_argument("--workers", type=int, default=1,
                   help="client processes (default 1; each takes a share of the connections)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def plan_from(args: argparse.Namespace) -> BenchPlan:
    duration = args.duration if args.duration is not None or args.ops is not None else 10.0
    return BenchPlan(
        target=args.target, endpoints=tuple(u.strip() for u in args.url.split(",") if u.strip()),
        connections=args.connections, duration_s=duration, ops=args.ops, value_size=args.value_size, mix=args.mix,
        keys=args.keys, distribution=args.distribution, zipf_theta=args.zipf_theta, warmup_s=args.warmup,
        preload=args.preload, workers=args.workers, seed=args.seed, timeout_s=args.timeout,
    )


def main(args: argparse.Namespace) -> int:
    try:
        plan = plan_from(args)
    except ValueError as e:
        print(f"ringkv bench: {e}", file=sys.stderr)
        return 2
    import orjson

    from ringkv.loadgen import driver, report

    if not args.quiet:
        print(report.describe(plan), file=sys.stderr)
    try:
        result = driver.run(plan, show_progress=not args.quiet)
    except KeyboardInterrupt:
        print("ringkv bench: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a store that cannot be reached, a worker that failed: say so, exit 1
        print(f"ringkv bench: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(report.document(plan, result), option=orjson.OPT_INDENT_2).decode())
    else:
        print(report.text(plan, result))
    return 0 if result.ok > 0 else 1
