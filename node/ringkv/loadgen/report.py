"""A run's result as text (a markdown table, like the other benchmarks) or as a JSON document (pure)."""

from __future__ import annotations

from typing import Any

from ringkv.loadgen.plan import BenchPlan
from ringkv.loadgen.stats import PERCENTILES, RunResult, percentile_label


def describe(plan: BenchPlan) -> str:
    bound = f"{plan.duration_s:g} s" if plan.duration_s is not None else f"{plan.ops:,} ops"
    return (f"{plan.target} at {', '.join(plan.urls)}: {plan.connections} connections, {plan.workers} worker(s), "
            f"{plan.value_size}-byte values, reads {plan.mix:.0%}, {plan.keys:,} keys {plan.distribution}"
            f"{' (preloaded)' if plan.preload else ''}; warm-up {plan.warmup_s:g} s, measured {bound}")


def document(plan: BenchPlan, result: RunResult) -> dict[str, Any]:
    return {"plan": plan.to_dict(), **result.summary()}


def table(result: RunResult) -> str:
    heads = ["op", "ok", "ops/s", *(f"{percentile_label(q)} ms" for q in PERCENTILES), "max ms", "errors", "misses"]
    lines = ["| " + " | ".join(heads) + " |", "|---" + "|---:" * (len(heads) - 1) + "|"]
    summary = result.summary()
    rows = [*summary["ops"].items(), ("all", summary["all"])]
    for name, s in rows:
        lat = s["latency_ms"]
        cells = [name, f"{s['ok']:,}", f"{s['ops_per_s']:,.0f}",
                 *(f"{lat[percentile_label(q)]:.2f}" for q in PERCENTILES), f"{lat['max']:.2f}",
                 f"{sum(s['errors'].values()):,}", f"{s['misses']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def errors(result: RunResult) -> str:
    """One line per (operation, kind) of error, most frequent first; empty when there were none."""
    found = [(n, op, kind) for op, s in result.ops.items() for kind, n in s.errors.items()]
    return "\n".join(f"  {n:>8,}  {op} {kind}" for n, op, kind in sorted(found, reverse=True))


def text(plan: BenchPlan, result: RunResult) -> str:
    out = [describe(plan), f"measured {result.elapsed_s:.2f} s: {result.ops_per_s:,.0f} ops/s", "", table(result)]
    errs = errors(result)
    if errs:
        out += ["", "errors:", errs]
    return "\n".join(out)
