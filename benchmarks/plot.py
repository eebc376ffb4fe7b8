"""The sweep as a PNG: viewers' p50 and p99 latency against updates a second (`make bench`).

    python benchmarks/plot.py benchmarks/results/fanout.json benchmarks/results/fanout.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TARGET_RATE = 4000
BUDGET_MS = 50


def plot(results: dict[str, Any], out: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        print("plot: matplotlib is not installed (make bench installs requirements-bench.txt); no PNG")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("one process", results.get("sweep") or [], "tab:blue")]
    if results.get("redis"):
        series.append(("two processes + Redis", results["redis"].get("steps") or [], "tab:orange"))
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for name, steps, colour in series:
        steps = [s for s in steps if s.get("p99_ms") is not None]
        if not steps:
            continue
        x = [s["target_rate"] for s in steps]
        ax.plot(x, [s["p99_ms"] for s in steps], "o-", color=colour, label=f"{name}: p99")
        ax.plot(x, [s["p50_ms"] for s in steps], "o--", color=colour, alpha=0.6, label=f"{name}: p50")
        failed = [s for s in steps if not s.get("pass")]
        ax.plot([s["target_rate"] for s in failed], [s["p99_ms"] for s in failed], "x", color="black", markersize=9,
                label="step failed" if name == "one process" else None)
        for s in steps:
            if s.get("lost"):
                ax.annotate(f"{s['loss_ratio']:.0%} lost", (s["target_rate"], s["p99_ms"]), fontsize=7,
                            textcoords="offset points", xytext=(4, 4), color=colour)
    rates = [s["target_rate"] for _, steps, _ in series for s in steps if s.get("target_rate")]
    ax.set_xlim(0, max([TARGET_RATE * 1.15, *(r * 1.08 for r in rates)]))
    ax.axhline(BUDGET_MS, color="tab:red", linewidth=1, label=f"{BUDGET_MS} ms")
    ax.axvline(TARGET_RATE, color="grey", linewidth=1, linestyle=":", label=f"target {TARGET_RATE:,}/s")
    ax.set_yscale("log")
    ax.set_xlabel("location updates a second (1,000 parcels, each to its driver and 2 viewers)")
    ax.set_ylabel("driver → viewer latency (ms, log scale)")
    meta = results.get("meta", {})
    ax.set_title(f"Fan-out, one process with auth, validation and sampling on\n"
                 f"{meta.get('cores', '?')} cores, commit {meta.get('commit', '?')}, {meta.get('when', '')}",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


if __name__ == "__main__":
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    print(plot(json.loads(source.read_text()), target))
