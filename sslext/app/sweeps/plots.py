"""The plots of a sweep's report, from its records and per-row aggregates (see :mod:`.report`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .columns import CURVES, HEADLINE, METRICS


def write_plots(sweep: Any, records, agg, out: Path) -> None:
    """plot_final.png, plot_curves.png, plot_spectrum.png of ``sweep`` into ``out``."""
    # matplotlib costs a second of import time: loaded when a report is drawn, not with the CLI.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in sweep.rows]
    colors = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    done = {
        n: [records[c.name] for c in sweep.cells if c.row == n and records.get(c.name, {}).get("status") == "done"]
        for n in names
    }

    fig, axes = plt.subplots(1, len(HEADLINE), figsize=(4.5 * len(HEADLINE), 4))
    for ax, k in zip(axes, HEADLINE):
        for i, n in enumerate(names):
            m = agg[n]["metrics"].get(k)
            if not m:
                if agg[n].get("n_diverged"):  # an empty slot would read as "not run"
                    ax.annotate(
                        "diverged",
                        (i, 0.03),
                        xycoords=("data", "axes fraction"),
                        rotation=90,
                        ha="center",
                        va="bottom",
                        fontsize=8,
                        color=colors[n],
                    )
                continue
            ax.scatter([i] * m["n"], list(m["values"].values()), color=colors[n], s=12, alpha=0.6)
            ax.errorbar(
                [i], [m["mean"]], yerr=[0 if m["n"] < 2 else m["std"]], fmt="o", color=colors[n], capsize=4, ms=7
            )
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([agg[n]["label"] for n in names], rotation=45, ha="right", fontsize=8)
        ax.set_title(METRICS[k], fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "plot_final.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.5 * len(CURVES), 4))
    for ax, (k, title) in zip(axes, CURVES.items()):
        for n in names:
            series = [{e["epoch"] + 1: e[k] for e in r.get("epochs", []) if e.get(k) is not None} for r in done[n]]
            series = [s for s in series if s]
            if not series:
                continue
            xs = sorted(set().union(*series))
            vals = [[s[x] for s in series if x in s] for x in xs]
            mean = [sum(v) / len(v) for v in vals]
            ax.plot(xs, mean, color=colors[n], label=agg[n]["label"], marker="o", ms=3)
            ax.fill_between(xs, [min(v) for v in vals], [max(v) for v in vals], color=colors[n], alpha=0.15)
        ax.set_xlabel("epoch")
        ax.set_title(title + " (mean, band = min..max over seeds)", fontsize=9)
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:  # nothing finished yet: no legend
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "plot_curves.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, k in zip(axes, ("backbone_spectrum", "projector_spectrum")):
        for n in names:
            specs = [r["final_eval"][k] for r in done[n] if r.get("final_eval", {}).get(k)]
            if not specs:
                continue
            d = min(len(s) for s in specs)
            # Mean of log singular values over seeds: a geometric mean, the scale the plot is read in.
            mean = [math.exp(sum(math.log(max(s[i], 1e-30)) for s in specs) / len(specs)) for i in range(d)]
            ax.plot(range(1, d + 1), mean, color=colors[n], label=agg[n]["label"])
        ax.set_yscale("log")
        ax.set_xlabel("singular value index")
        ax.set_ylabel("singular value / largest")
        ax.set_title(
            ("backbone features" if k.startswith("backbone") else "projector embeddings")
            + " (test of dimensional collapse)",
            fontsize=9,
        )
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:  # nothing finished yet: no legend
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "plot_spectrum.png", dpi=110)
    plt.close(fig)
