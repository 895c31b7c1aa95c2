"""PNG charts for the benchmark docs (matplotlib, Agg backend: no display needed).

    latency_percentiles({"put": {"ringkv": {"p50": 1.2, ...}, "etcd": {...}}, ...}, "docs/img/x.png", "title")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

COLORS = {"ringkv": "#1f77b4", "etcd": "#ff7f0e", "redis": "#2ca02c"}


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def latency_percentiles(data: Mapping[str, Mapping[str, Mapping[str, float]]], path: str, title: str,
                        labels: Sequence[str] = ("p50", "p95", "p99", "p99.9")) -> None:
    """One panel per workload; in each, one line per system: latency (ms, log scale) at each percentile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    workloads = list(data)
    fig, axes = plt.subplots(1, len(workloads), figsize=(4.2 * len(workloads), 3.8), squeeze=False, sharey=True)
    for ax, workload in zip(axes[0], workloads, strict=True):
        for system, values in data[workload].items():
            ys = [values[label] for label in labels]
            name, _, driver = system.partition(" (")  # "ringkv (wrk)": colour by system, dashed for ringkv bench
            ax.plot(range(len(labels)), ys, marker="o", label=system, color=COLORS.get(name),
                    linestyle="--" if "bench" in driver else "-")
            ax.annotate(f"{ys[-1]:.1f}", (len(labels) - 1, ys[-1]), textcoords="offset points", xytext=(4, 0),
                        fontsize=7, va="center")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(workload)
        ax.grid(True, which="both", axis="y", alpha=0.3)
        ax.set_xlabel("percentile")
    axes[0][0].set_ylabel("latency (ms, log scale)")
    axes[0][-1].legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
