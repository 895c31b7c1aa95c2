"""The final table of a check run, and its JSON document."""

from __future__ import annotations

from typing import Any

from ringkv.check.analysis import Anomaly, Report


def _anomaly(a: Anomaly) -> dict[str, Any]:
    doc: dict[str, Any] = {"kind": a.kind, "workload": a.workload, "key": a.key, "element": a.element}
    if a.op is not None:
        doc.update({"node": a.op.node, "start_s": round(a.op.start_s, 3), "end_s": round(a.op.end_s, 3),
                    "status": a.op.status, "outcome": a.op.outcome.value})
    doc["events"] = [{"at_s": round(t, 3), "event": e} for t, e in a.events]
    return doc


def to_json(report: Report) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "workloads": [{
            "workload": v.workload, "attempted": v.attempted, "acknowledged": v.acknowledged, "failed": v.failed,
            "indeterminate": v.indeterminate, "indeterminate_landed": v.indeterminate_landed,
            "lost": len(v.lost), "phantoms": len(v.phantoms), "unverified": v.unverified,
            "anomalies": [_anomaly(a) for a in (*v.lost, *v.phantoms)][:100],
        } for v in report.verdicts],
        "availability": round(report.availability.ratio, 5),
        "requests": report.availability.requests,
        "availability_during_faults": None if report.during_faults is None else round(report.during_faults.ratio, 5),
        "latency_ms": {"p50": round(report.latency.p50_ms, 2), "p99": round(report.latency.p99_ms, 2),
                       "max": round(report.latency.max_ms, 2)},
        "siblings": {"max": report.max_siblings, "mean": round(report.mean_siblings, 3)},
        "disagreeing_keys": list(report.disagreeing_keys)[:100],
        "disagreeing": len(report.disagreeing_keys),
        "per_second": [[s, a.requests, a.succeeded] for s, a in report.per_second],
    }


def table(report: Report) -> str:
    lines = [f"{'workload':<10}{'attempted':>10}{'acked':>10}{'failed':>8}{'indeterm.':>11}{'(landed)':>10}"
             f"{'lost':>7}{'phantom':>9}{'unverif.':>10}"]
    for v in report.verdicts:
        lines.append(f"{v.workload:<10}{v.attempted:>10,}{v.acknowledged:>10,}{v.failed:>8,}{v.indeterminate:>11,}"
                     f"{v.indeterminate_landed:>10,}{len(v.lost):>7,}{len(v.phantoms):>9,}{v.unverified:>10,}")
    worst = min((a for _, a in report.per_second), key=lambda a: a.ratio, default=None)
    lines.append("")
    lines.append(f"availability {report.availability.ratio:.2%} of {report.availability.requests:,} requests"
                 + (f", {report.during_faults.ratio:.2%} during faults" if report.during_faults else "")
                 + (f"; worst second {worst.ratio:.0%}" if worst else ""))
    lines.append(f"latency of successful requests: p50 {report.latency.p50_ms:.1f} ms, p99 "
                 f"{report.latency.p99_ms:.1f} ms, max {report.latency.max_ms:.0f} ms")
    lines.append(f"siblings seen by reads: max {report.max_siblings}, mean {report.mean_siblings:.2f}")
    lines.append(f"keys whose replicas still disagree after settling: {len(report.disagreeing_keys)}")
    for v in report.verdicts:
        for a in (*v.lost, *v.phantoms)[:10]:
            at = "" if a.op is None else f" (sent to {a.op.node} at {a.op.start_s:.2f}s, answered {a.op.status})"
            lines.append(f"  {a.kind.upper()} {a.workload} {a.key} {a.element}{at}")
            lines.extend(f"      {t:8.2f}s  {e}" for t, e in a.events)
    lines.append("")
    lines.append("PASS: nothing acknowledged was lost, no phantom appeared" if report.ok else
                 "FAIL: acknowledged writes lost, phantoms, or keys that could not be verified")
    return "\n".join(lines)
