"""`ringkv check`: run the workloads against a cluster, print progress, then the table (or `--json`).

    ringkv check --url http://127.0.0.1:8080,http://127.0.0.1:8081 --duration 30

Exit code 0 only when nothing acknowledged was lost, no phantom appeared and every key could be read back;
1 otherwise; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import aiohttp

from ringkv.check import analysis, replicas, report
from ringkv.check.analysis import Report
from ringkv.check.workload import CheckPlan, Runner
from ringkv.security.credentials import Credentials

SAMPLE_REGISTER_KEYS = 300  # register keys whose replicas are compared after settling (all set keys are)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("check", help="run a Jepsen-style set/register workload against a cluster and check it")
    p.add_argument("--url", required=True, help="comma-separated node URLs (requests go to them at random)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of workload (default 30)")
    p.add_argument("--workload", default="set,register", help="set, register, or both (default)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients per workload (default 8)")
    p.add_argument("--w", type=int, default=None, help="write quorum of every put (default: the node's)")
    p.add_argument("--r", type=int, default=None, help="read quorum of the workload's reads (default: the node's)")
    p.add_argument("--settle", type=float, default=60.0, help="seconds allowed to settle and read back")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request timeout in seconds")
    p.add_argument("--seed", type=int, default=None, help="seed of the clients' choices")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=main)


async def check(plan: CheckPlan, runner: Runner | None = None,
                fault_windows: Callable[[], Sequence[tuple[float, float]]] = lambda: (),
                progress: Callable[[Runner, bool], None] | None = None) -> Report:
    """Run `plan` (on `runner`, so a caller can note nemesis events on it) and analyse the history."""
    runner = runner or Runner(plan)
    ticker: asyncio.Task[None] | None = None
    if progress is not None:
        async def tick() -> None:
            while True:
                progress(runner, False)
                await asyncio.sleep(1.0)

        ticker = asyncio.create_task(tick())
    try:
        history = await runner.run()
        runner.counters.phase = "comparing replicas"
        keys = sorted({op.key for op in history.ops if op.kind.value == "add"})
        keys += random.Random(plan.seed).sample(runner.register_keys, min(SAMPLE_REGISTER_KEYS,
                                                                        len(runner.register_keys)))
        creds = Credentials.from_env()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=plan.timeout_s),
                                         headers=creds.headers(),
                                         connector=aiohttp.TCPConnector(ssl=creds.aiohttp_ssl())) as session:
            async def fetch(base: str, path: str, query: dict[str, str]) -> tuple[int, Any]:
                try:
                    async with session.get(base + path, params=query) as response:
                        return response.status, await response.json(content_type=None)
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    return 0, None

            differing = await replicas.disagreeing(fetch, plan.urls, keys, runner.now, runner.now() + 10.0)
    finally:
        if ticker is not None:
            ticker.cancel()
        if progress is not None:
            progress(runner, True)
    return analysis.analyse(history, fault_windows() or None, differing)


def _progress(stream: TextIO, duration_s: float) -> Callable[[Runner, bool], None]:
    tty = stream.isatty()

    def show(runner: Runner, final: bool) -> None:
        c = runner.counters
        fraction = min(1.0, runner.now() / duration_s) if duration_s else 1.0
        filled = int(24 * fraction)
        line = (f"check {c.phase:<18} [{'#' * filled}{'.' * (24 - filled)}] {runner.now():6.1f}s  ok {c.ok:,}  "
                f"failed {c.fail:,}  indeterminate {c.info:,}")
        if tty:
            stream.write("\r\033[K" + line + ("\n" if final else ""))
        elif final or int(runner.now()) % 5 == 0:
            stream.write(line + "\n")
        stream.flush()

    return show


def main(args: argparse.Namespace) -> int:
    urls = tuple(u.strip().rstrip("/") for u in args.url.split(",") if u.strip())
    workloads = tuple(w.strip() for w in args.workload.split(",") if w.strip())
    if not urls or not workloads or any(w not in ("set", "register") for w in workloads):
        print("ringkv check: --url needs at least one URL; --workload is set, register or both", file=sys.stderr)
        return 2
    plan = CheckPlan(urls=urls, duration_s=args.duration, workloads=workloads, clients=args.clients, w=args.w,
                     r=args.r, timeout_s=args.timeout, settle_s=args.settle, seed=args.seed)
    result = asyncio.run(check(plan, progress=_progress(sys.stderr, plan.duration_s)))
    if args.json:
        print(json.dumps(report.to_json(result), indent=2))
    else:
        print(report.table(result))
    return 0 if result.ok else 1
